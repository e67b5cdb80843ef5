"""LM depth x width on the tiny recipe: how eval loss per task scales with size.

    python -m launch.sweep --sweep=configs/sweeps/lm_size.py --workdir=runs/demo

Runs on the token shards the demo made under the same work dir
(each run has its own work dir below it, so the paths are given explicitly); six runs of
the tiny recipe's length each (~40 min each on 2 CPU cores).
"""


def get_sweep():
    return dict(
        name="lm_size",
        entry="launch.train",
        config="configs/gpa_tiny.py",
        fixed={
            "tasks.token_dir": "{workdir}/tokens/synthetic_speech/default",
        },
        grid={"model.num_layers": [2, 4, 6], "model.embed_dim": [128, 256]},
        metrics=["eval/loss", "eval/tts/loss", "eval/asr/loss", "eval/vc/loss"],
        args=["--noprogress"],
    )
