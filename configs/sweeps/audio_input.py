"""Audio inputs (model.audio_input): GPA's tokens vs LauraGPT's continuous log-mel encoder
vs WHISPER-GPT's hybrid (mel fused with the token embedding), on identical data and steps.

    python -m launch.tokenize --config=configs/codec_tiny.py --workdir=runs/demo \\
        --corpus=synthetic_speech/default --token_features=log_mel
    python -m launch.sweep --sweep=configs/sweeps/audio_input.py --workdir=runs/demo

The three runs read the same token shards, under the work dir where the demo wrote them;
the continuous / hybrid variants read their log-mel rows, which the demo's `tokens` LM
leaves out (the first command adds them to the shards, re-encoding the splits with the
same codec: the codes stay the same). The sweep checks the rows are there before the first
run starts. Every run is configs/gpa_tiny.py with only model.audio_input changed (the
config's `:continuous` / `:hybrid` variants), the same seed, batches and steps: the
token variant trains on the same packed examples and ignores the rows.

After each run `launch.lm_report` (the sweep's evaluate step) writes <run dir>/report.json,
which the table reads: per task the last eval's loss and perplexity (the trainer's eval on
the validation split; teacher-forced, nats per output token: WHISPER-GPT's own measure)
and conditioning gain on the test split (loss given another row's input minus the own:
does the variant read its input?), the greedy ASR WER / CER of 40 test rows
(`conditioning.asr_rows_error_rates`, as `launch.lm_report --conditioning_split=test
--asr_rows=40`), the median seconds per training step on this machine and the parameter
count. TTS / VC
judge-WER needs a codec, acoustic stage and judge per run: `launch.evaluate --workdir=<run
dir>` after copying them in (not part of this sweep). Three runs of the tiny recipe's length
(~40 min each for `tokens` on 2 CPU cores; the others cost more per step).
"""

TASKS = ("asr", "tts", "vc")
REPORT = "report.json"


def get_sweep():
    metrics = ["eval/loss"]
    metrics += [f"{REPORT}:{t}/{k}" for k in ("loss", "ppl", "gain") for t in TASKS]
    metrics += [f"{REPORT}:asr/wer", f"{REPORT}:asr/cer", f"{REPORT}:step_seconds", f"{REPORT}:params"]
    return dict(
        name="audio_input",
        entry="launch.train",
        config="configs/gpa_tiny.py",
        fixed={"tasks.token_dir": "{workdir}/tokens/synthetic_speech/default"},
        grid={"model.audio_input": ["tokens", "continuous", "hybrid"]},
        metrics=metrics,
        args=["--noprogress"],
        evaluate=["launch.lm_report", "--conditioning_split=test", "--asr_rows=40",
                  f"--json_out={{run_dir}}/{REPORT}"],
    )
