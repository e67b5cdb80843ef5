"""Builds the embedded synthetic speech corpus (TFDS) and prints its summary.

    python -m launch.build_corpus --config=configs/corpus.py:tiny --workdir=runs/demo

The corpus lands in <workdir>/tfds and is read with
`tfds.load("synthetic_speech/<size>", data_dir=<workdir>/tfds)` after
`import data.synthetic_speech`, or through `gpa_jax.corpora.speech_examples`.
"""

from __future__ import annotations

import time

import ml_collections
from absl import app, logging

from gpa_jax import config_utils, paths, preemption
from launch import common

config_utils.define_config_flag("configs/corpus.py")


def build_corpus(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Builds (or reuses) the corpus named by `config.corpus`; returns its summary."""
    from data import synthetic_speech  # Imported here: registers the TFDS builder.

    if config.corpus.name != "synthetic_speech":
        raise ValueError(
            f"config.corpus.name={config.corpus.name!r}: only the embedded synthetic corpus "
            "is built here; prepare public corpora with `tfds build <name>` on a machine "
            "with network access and point --data_dir at them"
        )
    start = time.time()
    builder = synthetic_speech.build(
        config.corpus.builder_config,
        paths.tfds_dir(workdir),
        num_workers=config.corpus.num_workers or None,
    )
    summary = synthetic_speech.summarize(builder)
    print(synthetic_speech.format_summary(summary))
    logging.info("corpus ready in %.1f s at %s", time.time() - start, builder.data_dir)
    return summary


@preemption.job(
    "corpus build",
    note="TFDS keeps only finished builds; rerun the same command to build it",
)
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    build_corpus(config_utils.config_from_flags(), common.workdir())


if __name__ == "__main__":
    common.run(main)
