"""Trains the SpeechTokenizer-style codec on a TFDS speech corpus (resumes if interrupted).

    python -m launch.build_corpus --config=configs/corpus.py:tiny --workdir=runs/demo
    python -m launch.train_codec --config=configs/codec_tiny.py --workdir=runs/demo \
        --config.data.corpus=synthetic_speech/tiny --config.train.num_steps=200

Checkpoints, TensorBoard scalars and audio summaries go under <workdir>/codec/ (see
`gpa_jax.codec.train`); the corpus is read from --data_dir (default <workdir>/tfds).
"""

from __future__ import annotations

from absl import app, flags, logging

from gpa_jax import config_utils, paths, preemption
from launch import common

config_utils.define_config_flag("configs/codec_tiny.py")
flags.DEFINE_string("data_dir", None, "TFDS data_dir of the corpus (default <workdir>/tfds).")


@preemption.job("codec training", note="rerun the same command to resume from the last checkpoint")
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gpa_jax.codec import train  # Imported here: JAX starts only when the job runs.

    config = config_utils.config_from_flags()
    workdir = common.workdir()
    data_dir = flags.FLAGS.data_dir or paths.tfds_dir(workdir)
    result = train.train(config, workdir, data_dir=data_dir)
    logging.info("codec training done at step %d: %s", result.step, result.metrics)
    print(f"codec trained to step {result.step}; checkpoints in {train.checkpoint_dir(workdir)}")


if __name__ == "__main__":
    common.run(main)
