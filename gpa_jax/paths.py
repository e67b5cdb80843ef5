"""Where generated artefacts go: a work directory, never the repository.

Datasets, token shards, checkpoints, samples and TensorBoard logs all live under one
work directory given by `--workdir`, else `$GPA_JAX_WORKDIR`, else `./runs/demo`.
"""

from __future__ import annotations

import os

WORKDIR_ENV = "GPA_JAX_WORKDIR"
DEFAULT_WORKDIR = os.path.join("runs", "demo")


def default_workdir() -> str:
    return os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR


def tfds_dir(workdir: str) -> str:
    """TFDS data_dir for corpora built by this project."""
    return os.path.join(workdir, "tfds")
