"""Where generated artefacts go: a work directory, never the repository.

Datasets, token shards, checkpoints, samples and TensorBoard logs all live under one
work directory given by `--workdir`, else `$GPA_JAX_WORKDIR`, else `./runs/demo`.

Files a later stage trusts (manifests, results JSON, completion markers) are written with
`atomic_write_text` / `atomic_write_json`: a temporary name in the same folder, then a
rename, so a killed writer leaves the old file or none, never half of one. The temporary
(`<name>.tmp-<host>-<pid>`) of a writer killed with SIGKILL stays behind; readers never
look at it and the next write of the same file on that host removes it. A full disk
raises `gpa_jax.errors.DiskFullError` naming the file (a user error, exit status 2).

Every artefact path is a string that may be local or a URL (`gs://bucket/...`; paths
are built with `os.path.join`, which keeps the scheme). The helpers below go through
`etils.epath`, which serves `gs://` with `tf.io.gfile` when TensorFlow is installed and
otherwise with fsspec (`gcsfs` must then be installed; `EPATH_USE_TF=false` forces fsspec).
Orbax checkpoints take `gs://` directly (tensorstore).

Readers that open only local files (ArrayRecord, soundfile, SentencePiece's loader) call
`local_path(p)`:
- a local `p` is returned as is;
- with `$GPA_JAX_GCSFUSE_ROOT` set (a gcsfuse mount of the buckets, MaxText's way),
  `gs://bucket/x` becomes `$GPA_JAX_GCSFUSE_ROOT/bucket/x`, read in place;
- otherwise the object is copied once into a per-host cache, `$GPA_JAX_CACHE_DIR`
  (`~` expanded), default `$XDG_CACHE_HOME/gpa_jax/remote` (`~/.cache/gpa_jax/remote`),
  mirrored as `<cache>/<scheme>/<bucket>/<object>`. A cached copy is reused while its size
  and modification time match the object's; the copy is written to a temporary name and
  renamed, so processes sharing a host never read a half copy. Delete the folder to free it.
Writers that produce only local files (ArrayRecord) write into a local staging folder
and `upload` the finished file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

from gpa_jax.errors import DiskFullError, is_disk_full

WORKDIR_ENV = "GPA_JAX_WORKDIR"
DEFAULT_WORKDIR = os.path.join("runs", "demo")
GCSFUSE_ROOT_ENV = "GPA_JAX_GCSFUSE_ROOT"
CACHE_DIR_ENV = "GPA_JAX_CACHE_DIR"


def default_workdir() -> str:
    return os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR


def tfds_dir(workdir: str) -> str:
    """TFDS data_dir for corpora built by this project."""
    return os.path.join(workdir, "tfds")


def acoustic_eval_dir(workdir: str, split: str = "test") -> str:
    """Where the acoustic stages' evaluation of `split` goes (launch.eval_acoustic, the demo)."""
    return os.path.join(workdir, "eval", "acoustic", split)


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


# --- the path layer: local paths and URLs (gs://) alike ------------------------------


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL such as gs://bucket/x (anything with a scheme)."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """os.path.abspath for local paths; URLs are already absolute (and abspath would
    mangle them)."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def join(directory: str | os.PathLike, name: str) -> str:
    """`directory`/`name`: os.path.join for local folders, one '/' for URLs."""
    directory = os.fspath(directory)
    if is_remote(directory):
        return f"{directory.rstrip('/')}/{name}"
    return os.path.join(directory, name)


def as_path(path: str | os.PathLike) -> epath.Path:
    return epath.Path(os.fspath(path))


def exists(path: str | os.PathLike) -> bool:
    return as_path(path).exists()


def isdir(path: str | os.PathLike) -> bool:
    return as_path(path).is_dir()


def isfile(path: str | os.PathLike) -> bool:
    p = as_path(path)
    return p.exists() and not p.is_dir()


def makedirs(path: str | os.PathLike) -> None:
    """mkdir -p (object stores have implicit folders: at most a marker object there)."""
    if path:
        as_path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """Sorted entry names of a folder; [] when it does not exist."""
    p = as_path(path)
    if not p.is_dir():
        return []
    return sorted(child.name for child in p.iterdir())


def glob(folder: str | os.PathLike, pattern: str) -> list[str]:
    """Sorted paths under `folder` matching the shell pattern (no '**')."""
    p = as_path(folder)
    if not p.is_dir():
        return []
    return sorted(os.path.join(os.fspath(folder), child.name) for child in p.glob(pattern))


def find_files(folder: str | os.PathLike, pattern: str) -> list[str]:
    """Sorted paths of the files anywhere under `folder` whose name matches the shell
    pattern; [] when the folder does not exist."""
    folder = os.fspath(folder)
    if not isdir(folder):
        return []
    scheme = folder.partition("://")[0] + "://" if is_remote(folder) else ""
    found = []
    for root, _, files in as_path(folder).walk():
        root = os.fspath(root)
        if scheme and not is_remote(root):  # fsspec hands back roots without the scheme
            root = scheme + root.lstrip("/")
        found += [os.path.join(root, name) for name in fnmatch.filter(files, pattern)]
    return sorted(found)


def open_file(path: str | os.PathLike, mode: str = "r") -> IO[Any]:
    """open() for local paths and URLs alike; a missing file raises FileNotFoundError
    naming the whole path (fsspec's own message drops the scheme)."""
    if not is_remote(path):
        return open(path, mode)  # noqa: SIM115 - the caller closes it
    try:
        return as_path(path).open(mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"{os.fspath(path)}: no such object") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    with open_file(path, "r") as f:
        return f.read()


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(read_text(path))


def remove(path: str | os.PathLike) -> None:
    """Removes a file; a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        as_path(path).unlink()


def rmtree(path: str | os.PathLike) -> None:
    """Removes a folder and everything under it; a missing one is fine."""
    p = as_path(path)
    if p.exists():
        p.rmtree()


def upload(local: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copies a finished local file to `target` (any path; overwrites). Local targets
    get a rename-into-place copy, object stores a single object write."""
    local, target = os.fspath(local), os.fspath(target)
    if not is_remote(target):
        makedirs(os.path.dirname(target))
        tmp = f"{target}{_temp_suffix(os.getpid())}"
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        return
    with open(local, "rb") as src, as_path(target).open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def cache_dir() -> str:
    """The per-host cache of remote files (see the module docstring)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return os.path.expanduser(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(os.path.expanduser(base), "gpa_jax", "remote")


def _split_url(path: str) -> tuple[str, str]:
    scheme, _, rest = path.partition("://")
    rest = rest.lstrip("/")
    if not scheme or not rest or ".." in rest.split("/"):
        raise ValueError(f"{path!r} is not a usable URL (expected scheme://bucket/object)")
    return scheme, rest


def cache_path(path: str | os.PathLike) -> str:
    """Where the per-host cache mirrors `path` (`path` itself when it is local); for local
    data derived from remote artefacts, e.g. memory-mapped stores."""
    path = os.fspath(path)
    if not is_remote(path):
        return path
    scheme, rest = _split_url(path)
    return os.path.join(cache_dir(), scheme, rest)


def local_path(path: str | os.PathLike) -> str:
    """A local file with the content of `path`, for readers that open only local files.

    Local paths come back unchanged. `gs://bucket/x` maps to `$GPA_JAX_GCSFUSE_ROOT/bucket/x`
    when that is set (a gcsfuse mount), else to a copy in the per-host cache (module
    docstring). A missing object raises FileNotFoundError naming it.
    """
    path = os.fspath(path)
    if not is_remote(path):
        return path
    scheme, rest = _split_url(path)
    fuse_root = os.environ.get(GCSFUSE_ROOT_ENV)
    if fuse_root and scheme == "gs":
        mounted = os.path.join(os.path.expanduser(fuse_root), rest)
        if not os.path.isfile(mounted):
            raise FileNotFoundError(
                f"{path}: not found at {mounted} under ${GCSFUSE_ROOT_ENV}={fuse_root} "
                "(is the bucket mounted there with gcsfuse --implicit-dirs?)"
            )
        return mounted
    remote = as_path(path)
    try:
        info = remote.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such object") from None
    if info.is_directory:
        raise IsADirectoryError(f"{path}: is a folder, expected a file")
    cached = cache_path(path)
    if _cache_matches(cached, info.length, info.mtime):
        return cached
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(cached), prefix=".download-")
    try:
        with os.fdopen(handle, "wb") as dst, remote.open("rb") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
        if info.mtime:
            os.utime(tmp, (info.mtime, info.mtime))
        os.replace(tmp, cached)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(error, OSError) and is_disk_full(error):
            raise DiskFullError(
                f"no space left on device caching {path} in {cache_dir()} "
                f"(set ${CACHE_DIR_ENV} or ${GCSFUSE_ROOT_ENV})"
            ) from error
        raise
    return cached


def _cache_matches(cached: str, length: int, mtime: int) -> bool:
    try:
        st = os.stat(cached)
    except FileNotFoundError:
        return False
    # Without a remote modification time only the size can tell a rewrite apart.
    return st.st_size == length and (not mtime or int(st.st_mtime) == int(mtime))


@contextlib.contextmanager
def staging_dir(target_dir: str | os.PathLike) -> Iterator[str]:
    """A local folder to write files destined for `target_dir` (then `upload` them):
    the folder itself when it is local, else a temporary one removed afterwards."""
    target_dir = os.fspath(target_dir)
    if not is_remote(target_dir):
        os.makedirs(target_dir, exist_ok=True)
        yield target_dir
        return
    with tempfile.TemporaryDirectory(prefix="gpa_jax-stage-") as tmp:
        yield tmp


@contextlib.contextmanager
def local_output(path: str | os.PathLike) -> Iterator[str]:
    """A local file name for a writer that writes only local files (a plot, a log); for
    a URL it is a temporary file uploaded to `path` when the block ends without error."""
    path = os.fspath(path)
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="gpa_jax-out-") as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        yield local
        upload(local, path)
