"""Audio inputs (model.audio_input): GPA's tokens vs LauraGPT's continuous log-mel encoder
vs WHISPER-GPT's hybrid (mel fused with the token embedding), on identical data and steps,
each trained on TTS, ASR, VC and speech enhancement (configs/gpa_tiny.py:se).

    python -m launch.demo --workdir=runs/demo --to_stage=tokens
    python -m launch.tokenize --config=configs/codec_tiny.py --workdir=runs/demo \\
        --corpus=synthetic_speech/default --token_features=log_mel --noisy_inputs
    python -m launch.train --workdir=runs/demo/acoustic/nar \\
        --config=configs/acoustic_nar_tiny.py:runs/demo/tokens/synthetic_speech/default
    python -m launch.sweep --sweep=configs/sweeps/audio_input.py --workdir=runs/demo

The runs read the token shards under the work dir where the demo wrote them; the
continuous / hybrid variants read their log-mel rows, which the demo's `tokens` LM leaves
out, and SE reads the noisy inputs (the second command adds both to the shards,
re-encoding the splits with the same codec: the codes stay the same); the third trains the
NAR acoustic stage the judged evaluation renders with. The sweep checks the rows are there
before the first run starts. Every run is configs/gpa_tiny.py:se with only
model.audio_input changed (the config's `:continuous` / `:hybrid` variants), the same
seed, batches and steps: the token variant trains on the same packed examples and ignores
the rows.

After each run two evaluate steps fill its row of the table:
- `launch.lm_report` writes <run dir>/report.json: per task the last eval's loss and
  perplexity (the trainer's eval on the validation split; teacher-forced, nats per output
  token: WHISPER-GPT's own measure), the conditioning gain on the test split (loss given
  another row's input minus the own: does the variant read its input?), the greedy ASR
  WER / CER of 40 test rows (`conditioning.asr_rows_error_rates`), the median seconds per
  training step on this machine and the parameter count.
- `launch.evaluate --stages_workdir=<work dir>` runs the evaluation table on 40 test
  examples per task with the demo's codec, NAR acoustic stage and judges (the run dir
  holds only its LM) into <run dir>/eval/results.json: ASR WER by the config's decoding
  (the joint CTC/attention search), TTS / VC judge-WER and similarity to the reference
  voice, SE judge-WER and STOI (each next to the noisy input's).
Three runs of the tiny recipe's length (~110 min each for `tokens` on 2 CPU cores; the
others cost more per step) plus ~15 min of evaluation each.
"""

TASKS = ("asr", "tts", "vc")
REPORT = "report.json"
RESULTS = "eval/results.json"  # launch.evaluate's, in the run dir


def get_sweep():
    metrics = ["eval/loss"]
    metrics += [f"{REPORT}:{t}/{k}" for k in ("loss", "ppl", "gain") for t in TASKS]
    metrics += [f"{REPORT}:asr/wer", f"{REPORT}:asr/cer", f"{RESULTS}:asr/wer"]
    metrics += [f"{RESULTS}:{t}/{k}" for t in ("tts", "vc") for k in ("judge_wer", "sim_reference")]
    metrics += [f"{RESULTS}:se/{k}" for k in ("judge_wer", "judge_wer_noisy", "stoi", "stoi_noisy")]
    metrics += [f"{REPORT}:step_seconds", f"{REPORT}:params"]
    return dict(
        name="audio_input",
        entry="launch.train",
        config="configs/gpa_tiny.py:se",
        fixed={"tasks.token_dir": "{workdir}/tokens/synthetic_speech/default"},
        grid={"model.audio_input": ["tokens", "continuous", "hybrid"]},
        metrics=metrics,
        args=["--noprogress"],
        evaluate=[
            ["launch.lm_report", "--conditioning_split=test", "--asr_rows=40",
             f"--json_out={{run_dir}}/{REPORT}"],
            ["launch.evaluate", "--stages_workdir={workdir}", "--splits=test", "--max_per_task=40"],
        ],
    )
