"""Shared set-up of the fault-injection tests: tiny configs and a shared XLA cache.

Every fault here is real: checkpoints are damaged by truncating or removing the files a
real run wrote, signals are sent to real processes with os.kill. A full disk is injected
at the lowest write the code under test goes through (`fill_disk`: Python's `open`, which
`gpa_jax.paths` and Orbax's file writes via etils.epath use), since a small tmpfs needs root.
"""

import builtins
import errno
import os
import re
import subprocess
import sys
import threading

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

# The tiny synthetic corpus and a codec trained for one step (the tokenization and
# evaluation signal tests run on them).
from tests.codec.conftest import tiny_workdir  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A 1-layer LM that compiles in seconds (the sweep test's config).
TINY_LM = """
from gpa_jax.models.config import lm_model_config, mesh_config
from gpa_jax.training.config import lm_config, optimizer_config

def get_config(arg=None):
    model = lm_model_config(vocab_size=64, num_layers=1, embed_dim=32, num_heads=2,
                            num_kv_heads=1, head_dim=16, mlp_dim=64, max_len=32)
    config = lm_config(model=model, mesh=mesh_config(shape=(-1, 1, 1)))
    config.optimizer = optimizer_config(learning_rate=1e-3, warmup_steps=1, total_steps=100)
    config.train.batch_size = 8
    config.train.seq_len = 32
    config.train.eval_every = 0
    config.train.log_every = 1
    config.train.async_checkpointing = False
    return config
"""


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """Path of the tiny LM config file."""
    path = tmp_path_factory.mktemp("configs") / "tiny_lm.py"
    path.write_text(TINY_LM)
    return str(path)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache for the session, shared with subprocesses via `env`."""
    path = str(tmp_path_factory.getbasetemp() / "faults_jax_cache")
    old_dir = jax.config.jax_compilation_cache_dir
    old_min = jax.config.jax_persistent_cache_min_compile_time_secs
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield path
    jax.config.update("jax_compilation_cache_dir", old_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
    compilation_cache.reset_cache()


def subprocess_env(cache: str) -> dict[str, str]:
    return dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def run_until(cmd, env, pattern, sig, *, watch_file=None, timeout=300):
    """Starts `cmd`, sends `sig` once `pattern` appears in its output (or in `watch_file`),
    waits for it to end; returns (returncode, output)."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines: list[str] = []
    sent = threading.Event()

    def poll_file():
        while not sent.is_set() and proc.poll() is None:
            if os.path.exists(watch_file) and re.search(pattern, open(watch_file).read()):
                proc.send_signal(sig)
                sent.set()
                return
            sent.wait(0.05)

    poller = threading.Thread(target=poll_file) if watch_file else None
    if poller:
        poller.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if not watch_file and not sent.is_set() and re.search(pattern, line):
                proc.send_signal(sig)
                sent.set()
        proc.wait()
    finally:
        sent.set()
        watchdog.cancel()
        if poller:
            poller.join()
    return proc.returncode, "".join(lines)


PYTHON = sys.executable


class _FillingFile:
    """A file whose writes fail with ENOSPC once the shared `room` is used up (the bytes
    that fit are written first, as a filling disk does)."""

    def __init__(self, file, room: list[int]):
        self._file, self._room = file, room

    def write(self, data):
        fits = data[: max(self._room[0], 0)]
        if fits:
            self._file.write(fits)
            self._room[0] -= len(fits)
        if len(fits) < len(data):
            self._file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def __iter__(self):
        return iter(self._file)

    def __getattr__(self, name):
        return getattr(self._file, name)


def fill_disk(directory, room: int = 0, *, siblings: bool = False):
    """From now on, files opened for writing under `directory` take `room` more bytes in
    all, then every write fails with OSError(ENOSPC) (no file name: write(2) gives none).
    `siblings`: also under folders whose name starts with its name (Orbax writes
    `<dir>.orbax-checkpoint-tmp-*` first). Returns the function that gives the space back."""
    under = os.path.abspath(directory) + ("" if siblings else os.sep)
    real_open, left = builtins.open, [room]

    def filling_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writes = any(c in mode for c in "wax+")
        if writes and isinstance(file, (str, os.PathLike)):
            if os.path.abspath(os.fspath(file)).startswith(under):
                return _FillingFile(handle, left)
        return handle

    builtins.open = filling_open

    def undo():
        builtins.open = real_open

    return undo
