"""The README's main command path: launch.demo --quick builds the tiny corpus and reports it."""

import os
import subprocess
import sys

import tensorflow_datasets as tfds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_quick_demo_builds_and_summarizes_the_corpus(tmp_path):
    result = _run("launch.demo", "--quick", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    for split in ("train", "validation", "test", "test_unseen_voice"):
        assert f"\n{split} " in result.stdout
    assert "demo finished" in result.stdout
    import data.synthetic_speech  # noqa: F401  (registers the builder)

    ds = tfds.load("synthetic_speech/tiny", split="train", data_dir=str(tmp_path / "tfds"))
    assert len(list(ds)) > 0


def test_entry_point_rejects_unknown_config_key(tmp_path):
    result = _run(
        "launch.build_corpus",
        "--config=configs/corpus.py:tiny",
        "--config.corpus.workers=2",
        f"--workdir={tmp_path}",
    )
    assert result.returncode != 0
    assert "valid keys under corpus: builder_config, name, num_workers" in result.stderr
