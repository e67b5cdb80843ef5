"""Guided attention on the tiny recipe: does a diagonal prior make the LM read its input?

    python -m launch.sweep --sweep=configs/sweeps/guided_attention.py --workdir=runs/demo

`model.guide_weight` 0 is the plain recipe. Besides the eval losses, each run's
`launch.lm_report --workdir=<run dir> --conditioning_steps=400` gives the gain of the own
over another example's input per task, the figure this sweep is about (a single 400-step
trial on the default corpus: ASR gain 0.07 -> 0.17 nats/token, TTS 0.0002 -> 0.008).
Runs on the token shards and SentencePiece model the demo made under the same work dir.
"""


def get_sweep():
    return dict(
        name="guided_attention",
        entry="launch.train",
        config="configs/gpa_tiny.py",
        fixed={
            "tasks.token_dir": "{workdir}/tokens/synthetic_speech/default",
            "tasks.vocab.spm_model": "{workdir}/spm/synthetic_speech_default_1024.model",
        },
        grid={"model.guide_weight": [0.0, 0.3, 1.0]},
        metrics=["eval/loss", "eval/tts/loss", "eval/asr/loss", "eval/vc/loss", "eval/guide"],
        args=["--noprogress"],
    )
