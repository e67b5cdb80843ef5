"""A writer killed (SIGKILL) in the middle of `gpa_jax.paths.atomic_write_*` never leaves
its final path with part of the new content; the temporary it leaves is never read and the
next write of that file removes it."""

import glob
import os
import signal
import socket
import subprocess
import sys
import time

from gpa_jax import paths
from tests.faults.conftest import REPO, subprocess_env

WRITER = """
import sys
from gpa_jax import paths
paths.atomic_write_text(sys.argv[1], b"n" * int(sys.argv[2]))
"""
OLD = b"old content\n"


def _kill_while_writing(path, size, timeout=60):
    """Starts a writer of `size` bytes to `path`, SIGKILLs it as soon as its temporary has
    data; returns the temporaries left (empty if the write finished first)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(size)], cwd=REPO,
                            env=subprocess_env(""))  # fmt: skip
    pattern = glob.escape(str(path)) + ".tmp-*"
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            temps = glob.glob(pattern)
            if temps and os.path.getsize(temps[0]) > 0:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        proc.kill()
        proc.wait()
    return glob.glob(pattern)


def test_kill_mid_write_leaves_the_old_content_and_the_next_write_cleans_up(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_bytes(OLD)
    size = 256 << 20  # long enough (write + fsync) to be caught in the middle
    for _ in range(3):  # the rare run whose write ends before the kill lands: try again
        temps = _kill_while_writing(path, size)
        if temps:
            break
        assert path.read_bytes() == b"n" * size  # finished: whole, never partial
        path.write_bytes(OLD)
    assert temps, "the writer was never caught in the middle of its write"
    assert path.read_bytes() == OLD  # the final name never held part of the new content
    assert os.path.getsize(temps[0]) <= size

    # A temporary of a process that still runs (ours, under the parent's pid) is not
    # touched; the dead writer's is removed by the next write.
    live = f"{path}.tmp-{socket.gethostname()}-{os.getppid()}"
    with open(live, "w") as f:
        f.write("in flight")
    paths.atomic_write_json(path, {"next": 1})
    assert path.read_text() == '{"next": 1}'
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, os.path.basename(live)])


def test_killed_writer_of_an_absent_file_leaves_no_file(tmp_path):
    path = tmp_path / "results.json"
    for _ in range(3):
        temps = _kill_while_writing(path, 256 << 20)
        if temps:
            break
        path.unlink()
    assert temps and not path.exists()
