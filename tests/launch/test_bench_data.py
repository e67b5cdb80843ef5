"""launch.bench_data and launch.cache_batches as commands (behaviour, not timing)."""

import json
import subprocess
import sys

import pytest

from tests.launch.test_bench_train import REPO
from tests.launch.test_bench_train import TINY_CONFIG as _TINY


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO, check=False)  # fmt: skip


@pytest.mark.slow
def test_bench_data_reads_the_cache_and_times_the_trainer():
    result = _run("launch.bench_data", *_TINY, "--batches=6", "--steps=1", "--rounds=2")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["batch"] == [8, 32] and summary["workers"] == 0
    assert summary["loader_batches_per_s"] > 0 and summary["trainer_steps_per_s"] > 0
    assert summary["ratio"] > 0
    assert 0 < summary["state_bytes"] <= 1024
    bad = _run("launch.bench_data", *_TINY, "--rounds=0")
    assert bad.returncode == 2 and "rounds" in bad.stderr and "Traceback" not in bad.stderr


def test_cache_batches_names_what_is_missing(tmp_path):
    missing = _run("launch.cache_batches", f"--workdir={tmp_path / 'nowhere'}")
    assert missing.returncode == 2
    assert "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    empty = _run("launch.cache_batches", f"--workdir={tmp_path}")  # a work dir without tokens
    assert empty.returncode == 2 and "no token shards" in empty.stderr
    assert "Traceback" not in empty.stderr
