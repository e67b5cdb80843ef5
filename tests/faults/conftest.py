"""Shared set-up of the fault-injection tests: tiny configs and a shared XLA cache.

Every fault here is real: checkpoints are damaged by truncating or removing the files a
real run wrote, signals are sent to real processes with os.kill.
"""

import os
import re
import subprocess
import sys
import threading

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A 1-layer LM that compiles in seconds (the sweep test's config).
TINY_LM = """
from gpa_jax.models.config import lm_config, lm_model_config, mesh_config
from gpa_jax.training.train_step import optimizer_config

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
