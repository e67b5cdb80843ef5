"""Where generated artefacts go: a work directory, never the repository.

Datasets, token shards, checkpoints, samples and TensorBoard logs all live under one
work directory given by `--workdir`, else `$GPA_JAX_WORKDIR`, else `./runs/demo`.

Files a later stage trusts (manifests, results JSON, completion markers) are written with
`atomic_write_text` / `atomic_write_json`: a temporary name in the same folder, then a
rename, so a killed writer leaves the old file or none, never half of one. The temporary
(`<name>.tmp-<host>-<pid>`) of a writer killed with SIGKILL stays behind; readers never
look at it and the next write of the same file on that host removes it. A full disk
raises `gpa_jax.errors.DiskFullError` naming the file (a user error, exit status 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any

from etils import epath

from gpa_jax.errors import DiskFullError, is_disk_full

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
    _remove_stale_temps(path)
    tmp = f"{path}{_temp_suffix(os.getpid())}"
    try:
        with open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(error, OSError) and is_disk_full(error):
            kept = "its previous content is kept" if os.path.exists(path) else "nothing was written"
            raise DiskFullError(f"no space left on device writing {path} ({kept})") from error
        raise


def _temp_suffix(pid: int) -> str:
    # The host is part of the name: a pid says whether a writer is alive only on its host.
    return f".tmp-{socket.gethostname()}-{pid}"


def _remove_stale_temps(path: str) -> None:
    """Removes temporaries of `path` left on this host by writers that no longer run."""
    folder, name = os.path.split(path)
    prefix = name + _temp_suffix(0)[:-1]
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return  # a missing folder fails in the write itself, with its own message
    for entry in entries:
        pid = entry[len(prefix) :] if entry.startswith(prefix) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, entry))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def atomic_write_json(path: str | os.PathLike, value: Any, **dump_kwargs: Any) -> None:
    """`json.dumps(value, **dump_kwargs)` written with `atomic_write_text`."""
    atomic_write_text(path, json.dumps(value, **dump_kwargs))
