"""Each artefact type written to and read back from a gs:// work dir.

Backend of every test here: the in-memory fake gs:// (tests/fake_gcs.py, fsspec through
etils.epath). Covered: generated samples (wavs + manifest.jsonl), evaluation results
(results.json / .md), codec and LM curves (json / md / png), audio files read by
load_audio (through the host cache) and by the gcsfuse mapping. Token shards and
manifests: tests/tasks/test_token_shards.py; the SentencePiece model:
tests/tasks/test_vocab.py; sweep status, markers, TensorBoard scalars and tables:
tests/test_sweep.py; Orbax checkpoints (tensorstore through the fake's JSON API server):
tests/training/test_gs_data.py. Not covered: TensorBoard event files and TFDS written by
TensorFlow, whose GCS client talks to the real service.
"""

import os

import numpy as np
import pytest

from gpa_jax import paths
from gpa_jax.audio import io as audio_io
from gpa_jax.codec import curves
from gpa_jax.evaluation.results import SampleStore, read_manifest, write_results


def _tone(seconds=0.5, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_samples_and_manifest_round_trip(fake_gcs):
    workdir = f"{fake_gcs}/run"
    paths.atomic_write_text(f"{workdir}/samples/tts/stale.wav", b"old")
    store = SampleStore(workdir, "tts", 16000)
    assert not paths.exists(f"{workdir}/samples/tts/stale.wav")  # a new run replaces
    store.add("u1", _tone(), text="hello")
    store.add("u2", _tone(0.25), text="world", ref_wav="u1.wav")
    rows = read_manifest(store.manifest_path)
    assert [r["text"] for r in rows] == ["hello", "world"]
    assert rows[0]["wav"] == f"{workdir}/samples/tts/u1.wav"
    assert rows[1]["ref_wav"] == f"{workdir}/samples/tts/u1.wav"
    wav = audio_io.load_audio(rows[1]["wav"], 16000)
    assert wav.shape == (4000,) and np.max(np.abs(wav - _tone(0.25))) < 1e-3


def test_results_round_trip(fake_gcs):
    json_path, md_path = write_results(f"{fake_gcs}/run", {"asr": {"wer": 0.25}},
                                       {"ASR": "| wer |\n|---|\n| 0.25 |"})  # fmt: skip
    assert json_path == f"{fake_gcs}/run/eval/results.json"
    assert paths.read_json(json_path) == {"asr": {"wer": 0.25}}
    assert "## ASR" in paths.read_text(md_path)


def test_curves_round_trip_with_the_plot(fake_gcs):
    json_path = f"{fake_gcs}/run/eval/curves.json"
    assert curves.load_points(json_path) == []

    def plot(png):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([1, 2], [3, 4])
        fig.savefig(png)
        plt.close(fig)

    points = [{"step": 100, "loss": 2.0}]
    curves.write_points(json_path, {"judge": "x"}, points, "# curves\n", plot)
    assert curves.load_points(json_path) == points
    assert paths.read_text(f"{fake_gcs}/run/eval/curves.md") == "# curves\n"
    assert paths.read_bytes(f"{fake_gcs}/run/eval/curves.png")[:4] == b"\x89PNG"


def test_audio_errors_name_the_url(fake_gcs):
    with pytest.raises(audio_io.AudioError, match="gs://fake-bucket/none.wav.*not found"):
        audio_io.load_audio(f"{fake_gcs}/none.wav", 16000)
    paths.atomic_write_text(f"{fake_gcs}/empty.wav", b"")
    with pytest.raises(audio_io.AudioError, match="gs://fake-bucket/empty.wav.*empty"):
        audio_io.load_audio(f"{fake_gcs}/empty.wav", 16000)


def test_audio_through_a_gcsfuse_mount(monkeypatch, tmp_path):
    """Backend: a local folder standing in for the gcsfuse mount (no bucket at all)."""
    (tmp_path / "bucket" / "clips").mkdir(parents=True)
    audio_io.save_wav(tmp_path / "bucket" / "clips" / "a.wav", _tone(), 16000)
    monkeypatch.setenv(paths.GCSFUSE_ROOT_ENV, str(tmp_path))
    assert audio_io.load_audio("gs://bucket/clips/a.wav", 16000).shape == (8000,)
    with pytest.raises(audio_io.AudioError, match="gs://bucket/clips/b.wav"):
        audio_io.load_audio("gs://bucket/clips/b.wav", 16000)
    assert os.path.exists(tmp_path / "bucket" / "clips" / "a.wav")
