"""Content probe of a trained codec: character error rate read out of each RVQ layer.

    python -m launch.probe_codec --config=configs/codec_tiny.py --workdir=runs/demo

Trains one small CTC recogniser per RVQ layer in config.probe.layers on that layer's
code vectors (training split) and scores it on held-out utterances of --split (default
config.probe.split); see `gpa_jax.codec.probe`. Writes <workdir>/codec/probe_<split>.json,
prints a table; the last stdout line is the result as one JSON object.
"""

from __future__ import annotations

import json

from absl import app, flags

from gpa_jax import config_utils, preemption
from launch import common

config_utils.define_config_flag("configs/codec_tiny.py")
flags.DEFINE_string("data_dir", None, "TFDS data_dir of the corpus (default <workdir>/tfds).")
_SPLIT = flags.DEFINE_string("split", None, "Held-out split (default config.probe.split).")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Codec checkpoints (default <workdir>/codec/checkpoints)."
)


@preemption.job("codec probe", note="no results were written; rerun the same command")
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_utils.config_from_flags()
    from gpa_jax.codec import probe  # Imported here: JAX starts only when the job runs.

    workdir = common.existing_workdir()
    result = probe.probe_workdir(
        config,
        workdir,
        split=_SPLIT.value,
        data_dir=flags.FLAGS.data_dir,
        checkpoint_dir=_CHECKPOINT_DIR.value,
    )
    print(f"{result['corpus']}/{result['split']}, codec step {result['codec_step']}")
    print(probe.format_table(result))
    print(f"written to {probe.probe_path(workdir, result['split'])}")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    common.run(main)
