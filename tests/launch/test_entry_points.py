"""Entry points load configs through config_utils (the quick demo itself: test_demo.py)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_entry_point_rejects_unknown_config_key(tmp_path):
    result = _run(
        "launch.build_corpus",
        "--config=configs/corpus.py:tiny",
        "--config.corpus.workers=2",
        f"--workdir={tmp_path}",
    )
    assert result.returncode != 0
    assert "valid keys under corpus: builder_config, name, num_workers" in result.stderr
