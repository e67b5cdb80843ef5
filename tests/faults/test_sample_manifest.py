"""samples/<task>/manifest.jsonl grows one flushed line per finished sample: a killed
evaluation keeps a line (and a whole wav) for every sample it finished, and a reader skips
a torn last line with a warning."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf

from gpa_jax.evaluation.results import SampleStore, read_manifest
from tests.faults.conftest import REPO, subprocess_env

RATE = 16000
# The real SampleStore writing 1 s samples until it is killed.
WRITER = """
import sys
import numpy as np
from gpa_jax.evaluation.results import SampleStore
store = SampleStore(sys.argv[1], "tts", 16000)
wav = 0.1 * np.sin(np.arange(16000) / 5).astype(np.float32)
for i in range(100000):
    store.add(f"u{i:05d}", wav, text=f"sample {i}", role="generated")
"""


def test_killed_writer_keeps_a_line_and_a_whole_wav_per_finished_sample(tmp_path):
    manifest = tmp_path / "samples" / "tts" / "manifest.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO,
                            env=subprocess_env(""))  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    rows = read_manifest(str(manifest))
    assert len(rows) >= 5  # written as it went, not at the end
    assert [r["text"] for r in rows] == [f"sample {i}" for i in range(len(rows))]
    for row in rows:  # a line only ever follows its complete wav
        audio, rate = sf.read(row["wav"])
        assert (len(audio), rate) == (RATE, RATE)


def test_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    store = SampleStore(str(tmp_path), "asr", RATE)
    for i in range(3):
        store.add(f"u{i}", [0.0] * 160, text=f"t{i}")
    line = (tmp_path / "samples" / "asr" / "manifest.jsonl").read_text().splitlines()[0]
    with open(store.manifest_path, "a") as f:
        f.write(line[: len(line) // 2])  # killed in the middle of the 4th line
    caplog.set_level(logging.WARNING)
    rows = read_manifest(store.manifest_path)
    assert [r["text"] for r in rows] == ["t0", "t1", "t2"]
    warnings = [r.getMessage() for r in caplog.records if "torn last line" in r.getMessage()]
    assert len(warnings) == 1 and f"{store.manifest_path}:4" in warnings[0], warnings


def test_bad_line_before_the_end_is_an_error(tmp_path):
    """Only the last line can be torn by a killed writer; anything else is damage."""
    path = tmp_path / "manifest.jsonl"
    good = json.dumps({"wav": "a.wav", "text": "a"})
    path.write_text(f'{good}\n{{"wav": "b.w\n{good}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not a JSON line")):
        read_manifest(str(path))
    # A complete last line that only lacks its newline is kept.
    path.write_text(f"{good}\n{good}")
    assert len(read_manifest(str(path))) == 2
    assert os.path.basename(read_manifest(str(path))[0]["wav"]) == "a.wav"
