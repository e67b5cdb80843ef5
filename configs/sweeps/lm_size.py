"""LM depth x width on the tiny recipe: how eval loss per task scales with size.

    python -m launch.sweep --sweep=configs/sweeps/lm_size.py --workdir=runs/demo

Runs on the token shards the demo made under the same work dir (config.tasks.token_dir is
derived from it); six runs of 1,000 steps each.
"""


def get_sweep():
    return dict(
        name="lm_size",
        entry="launch.train",
        config="configs/gpa_tiny.py",
        fixed={"train.num_steps": 1000},
        grid={"model.num_layers": [2, 4, 6], "model.embed_dim": [128, 256]},
        metrics=["eval/loss", "eval/tts/loss", "eval/asr/loss", "eval/vc/loss"],
        args=["--noprogress"],
    )
