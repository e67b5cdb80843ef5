import json
import os

import numpy as np
import pytest
import soundfile as sf

from gpa_jax.evaluation.results import SampleStore, markdown_table, read_manifest, write_results


def test_sample_store_writes_wavs_and_manifest(tmp_path):
    store = SampleStore(str(tmp_path), "tts", 16000)
    wav = 0.1 * np.sin(np.linspace(0, 100, 1600)).astype(np.float32)
    path = store.add("utt1", wav, text="hello", ref_wav="/refs/a.wav", speaker="s1")
    store.add("utt2", wav, text="world", speaker="s2")
    audio, sr = sf.read(path)
    assert sr == 16000 and audio.shape == (1600,)
    rows = read_manifest(store.manifest_path)
    assert [r["text"] for r in rows] == ["hello", "world"]
    assert rows[0]["wav"] == os.path.abspath(path) and rows[0]["ref_wav"] == "/refs/a.wav"
    with pytest.raises(ValueError, match="repeated"):
        store.add("utt1", wav)
    # A new run of the task starts from an empty folder.
    SampleStore(str(tmp_path), "tts", 16000)
    assert os.listdir(tmp_path / "samples" / "tts") == []


def test_results_files(tmp_path):
    table = markdown_table([{"task": "asr", "wer": 0.1234}, {"task": "tts"}], ["task", "wer"])
    assert "| asr | 0.123 |" in table and "| tts |  |" in table
    json_path, md_path = write_results(str(tmp_path), {"asr": {"wer": 0.1234}}, {"ASR": table})
    assert json.load(open(json_path)) == {"asr": {"wer": 0.1234}}
    assert "## ASR" in open(md_path).read()


def test_tensorboard_gets_the_figures_audio_and_transcripts(tmp_path):
    from gpa_jax.evaluation.results import scalar_figures, write_tensorboard
    from gpa_jax.training.metrics import read_scalars

    store = SampleStore(str(tmp_path), "tts", 16000)
    store.add("ref", np.zeros(800, np.float32), role="reference")
    store.add("gen", 0.1 * np.ones(1600, np.float32), role="generated", text="a cat",
              judge_hypothesis="a hat")  # fmt: skip
    results = {
        "split": "test",
        "asr": {"wer": 0.25, "cer": 0.1, "num_utterances": 4, "ok": True},
        "tts": {"judge_wer": 0.5, "sim": {"reference": 0.3}, "note": "x", "nan": float("nan")},
    }
    assert scalar_figures(results) == {
        "asr/wer": 0.25, "asr/cer": 0.1, "asr/num_utterances": 4.0, "tts/judge_wer": 0.5,
        "tts/sim/reference": 0.3,
    }  # fmt: skip
    logdir = write_tensorboard(str(tmp_path), 7, results, tasks=("asr", "tts"))
    scalars = read_scalars(logdir)
    assert scalars["eval/asr/wer"] == [(7, 0.25)]  # float32 in TensorBoard
    assert scalars["eval/tts/sim/reference"] == [(7, pytest.approx(0.3))]
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    assert "eval/tts/0" in acc.Tags()["audio"]  # the wav
    assert "eval/tts/0/text_summary" in acc.Tags()["tensors"]  # its transcript (text plugin)
