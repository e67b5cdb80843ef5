"""Where generated artefacts go: a work directory, never the repository.

Datasets, token shards, checkpoints, samples and TensorBoard logs all live under one
work directory given by `--workdir`, else `$GPA_JAX_WORKDIR`, else `./runs/demo`.

Files a later stage trusts (manifests, results JSON, completion markers) are written with
`atomic_write_text` / `atomic_write_json`: a temporary name in the same folder, then a
rename, so a killed writer leaves the old file or none, never half of one.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

WORKDIR_ENV = "GPA_JAX_WORKDIR"
DEFAULT_WORKDIR = os.path.join("runs", "demo")


def default_workdir() -> str:
    return os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR


def tfds_dir(workdir: str) -> str:
    """TFDS data_dir for corpora built by this project."""
    return os.path.join(workdir, "tfds")


def atomic_write_text(path: str | os.PathLike, text: str | bytes) -> None:
    """Writes `text` (str or bytes) to `path` all at once: a temporary file in the same
    folder, then a rename.

    Local files: fsync + os.replace (atomic on POSIX). gs:// and other object stores:
    one object write is already all-or-nothing, so the data is written directly.
    """
    path = os.fspath(path)
    if "://" in path:
        target = epath.Path(path)
        target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, value: Any, **dump_kwargs: Any) -> None:
    """`json.dumps(value, **dump_kwargs)` written with `atomic_write_text`."""
    atomic_write_text(path, json.dumps(value, **dump_kwargs))
