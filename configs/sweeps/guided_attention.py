"""Guided attention on the tiny recipe: does a diagonal prior make the LM read its input?

    python -m launch.sweep --sweep=configs/sweeps/guided_attention.py --workdir=runs/demo

`model.guide_weight` 0 is the plain recipe. Besides the eval losses, each run's
`launch.lm_report --workdir=<run dir> --conditioning_steps=400` gives the gain of the own
over another example's input per task, the figure this sweep is about. A single 400-step
trial per weight on the default corpus, weight 0 / 0.3 / 1 (nats per output token):
gain ASR 0.040 / 0.161 / 0.173, TTS 0.0025 / 0.0068 / 0.0081, VC 0.0125 / 0.0136 /
0.0133; eval loss ASR 3.553 / 3.625 / 3.911, TTS 2.051 / 2.084 / 2.094, VC 2.076 /
2.098 / 2.110. (That trial used SentencePiece text.) The LM reads more of its input and learns the
outputs' prior more slowly; with the 1500-step schedule the prior is learned anyway, so
gpa_tiny now uses 0.3 (its docstring has the figures).
Runs on the token shards the demo made under the same work dir (byte text: no
SentencePiece model).
"""


def get_sweep():
    return dict(
        name="guided_attention",
        entry="launch.train",
        config="configs/gpa_tiny.py",
        fixed={
            "tasks.token_dir": "{workdir}/tokens/synthetic_speech/default",
        },
        grid={"model.guide_weight": [0.0, 0.3, 1.0]},
        metrics=["eval/loss", "eval/tts/loss", "eval/asr/loss", "eval/vc/loss", "eval/guide"],
        args=["--noprogress"],
    )
