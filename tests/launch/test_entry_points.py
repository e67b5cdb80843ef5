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


def test_launch_modules_that_tests_import_in_process_define_distinct_flags():
    """absl flags are global: two launch modules defining the same flag name cannot both
    be imported by one pytest process (DuplicateFlagError in whichever test comes second,
    so only the full suite's order shows it). Every launch module a test imports in-process
    is imported here together, in one fresh interpreter; the other CLIs are tested as
    subprocesses."""
    import re

    tests_dir = os.path.join(REPO, "tests")
    pattern = re.compile(r"^\s*(?:from launch import (\w+)|from launch\.(\w+) import)", re.M)
    modules = set()
    for root, _, files in os.walk(tests_dir):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as f:
                    modules.update(a or b for a, b in pattern.findall(f.read()))
    assert "demo" in modules  # the scan sees the imports it guards
    code = "import importlib\n" + "".join(
        f"importlib.import_module('launch.{m}')\n" for m in sorted(modules)
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
