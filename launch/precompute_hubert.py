"""Precomputes HuBERT (any local HF audio encoder) features for codec distillation.

    pip install -e ".[hubert]" -c constraints.txt
    python -m launch.precompute_hubert --config=configs/codec_paper.py --workdir=W \
        --model_dir=/models/hubert-base-ls960 [--layer=avg] [--out_dir=...]
    python -m launch.train_codec --config=configs/codec_paper.py --workdir=W \
        --config.teacher.path=W/codec/hubert_features/<corpus>/<split>

Reads the training split of config.data.corpus (the clip store the codec trainer uses,
built under <workdir>/codec/clips on first use), runs the encoder of --model_dir (a
local directory: nothing is downloaded) over every utterance, and writes a feature
store (`gpa_jax.codec.data.FeatureStore`). The codec trainer slices it frame-aligned
with its random crops when teacher.kind=hubert_features and teacher.path points here.
"""

from __future__ import annotations

import os

from absl import app, flags

from gpa_jax import config_utils, paths
from launch import common

config_utils.define_config_flag("configs/codec_paper.py")
flags.DEFINE_string("data_dir", None, "TFDS data_dir of the corpus (default <workdir>/tfds).")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Local HF model directory.", required=True)
_LAYER = flags.DEFINE_string("layer", None, "avg | last | <k> (default config.teacher.layer).")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Feature store (default <workdir>/codec/hubert_features/<corpus>/<split>)."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_utils.config_from_flags()
    import math

    from gpa_jax.codec import data as codec_data
    from gpa_jax.codec import hubert

    workdir = common.existing_workdir()
    data_dir = flags.FLAGS.data_dir or paths.tfds_dir(workdir)
    store = codec_data.train_clips(config, data_dir, workdir)
    out_dir = _OUT_DIR.value or os.path.join(
        workdir, "codec", "hubert_features", *config.data.corpus.split("/"), config.data.split
    )
    features = hubert.precompute(
        _MODEL_DIR.value,
        ((store.ids[i], store.view(i)) for i in range(len(store))),
        out_dir,
        layer=_LAYER.value or str(config.teacher.layer),
        expected_hop=math.prod(config.codec.strides),
        total=len(store),
    )
    print(
        f"{len(features.index['ids'])} utterances, dim {features.dim}, hop {features.frame_hop}: "
        f"{out_dir}\ntrain with --config.teacher.kind=hubert_features "
        f"--config.teacher.path={out_dir} --config.teacher.dim={features.dim}"
    )


if __name__ == "__main__":
    common.run(main)
