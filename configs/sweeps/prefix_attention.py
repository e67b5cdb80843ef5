"""Causal vs bidirectional prompt (model.prefix_bidirectional) on the tiny recipe.

    python -m launch.sweep --sweep=configs/sweeps/prefix_attention.py --workdir=runs/demo

With a causal prompt an ASR source frame sees only the audio before it, so the CTC head on
the source positions (model.ctc_weight) and the transcript positions read a left-to-right
summary; a bidirectional prompt (seqio's PrefixLM attention: the inputs attend to each
other, the outputs stay causal) gives every source frame the whole utterance, as the
audio encoders of LauraGPT and Whisper have, and the TTS text its whole sentence. The
sampler prefills the prompt with the same mask. Both runs are configs/gpa_tiny.py on the
demo's token shards with a 600-step schedule (~45 min each on 2 CPU cores), the same seed
and batches; `launch.lm_report` writes each run's report.json (per-task loss and
perplexity, conditioning gain on the test split, greedy ASR WER / CER of 40 test rows).
"""

TASKS = ("asr", "tts", "vc")
REPORT = "report.json"
STEPS = 600


def get_sweep():
    metrics = ["eval/loss"]
    metrics += [f"{REPORT}:{t}/{k}" for k in ("loss", "gain") for t in TASKS]
    metrics += [f"{REPORT}:asr/wer", f"{REPORT}:asr/cer", f"{REPORT}:step_seconds"]
    return dict(
        name="prefix_attention",
        entry="launch.train",
        config="configs/gpa_tiny.py",
        fixed={
            "tasks.token_dir": "{workdir}/tokens/synthetic_speech/default",
            "train.num_steps": STEPS,
            "optimizer.total_steps": STEPS,
        },
        grid={"model.prefix_bidirectional": [False, True]},
        metrics=metrics,
        args=["--noprogress"],
        evaluate=["launch.lm_report", "--conditioning_split=test", "--asr_rows=40",
                  f"--json_out={{run_dir}}/{REPORT}"],
    )
