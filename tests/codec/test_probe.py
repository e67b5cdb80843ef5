"""The RVQ content probe: code vectors per layer, and probes that learn from content."""

import json

import numpy as np
import pytest

from gpa_jax.codec import api, probe
from gpa_jax.codec.model import Codec
from gpa_jax.config_utils import load_config
from tests.codec.test_teacher import tone_corpus


def test_layer_vectors_are_codebook_rows():
    codec = Codec.from_config(load_config("configs/codec_tiny.py"))
    audio, _ = tone_corpus(2, seed=0)
    codes = probe.encode_all(codec, audio)
    assert [c.shape[1] for c in codes] == [-(-len(a) // 320) for a in audio]
    np.testing.assert_array_equal(codes[0], api.encode(codec, audio[0], 16000, bucket_frames=50))
    book = probe.codebooks(codec)
    vecs = probe.layer_vectors(book, codes, 2)
    np.testing.assert_array_equal(vecs[1], book[1][codes[1][1]])
    with pytest.raises(ValueError, match="outside 1..8"):
        probe.layer_vectors(book, codes, 9)


def _codes_for(texts, rng, k=256):
    """Layer 1 spells the text (8 frames per letter: 6 letter frames, 2 silence frames, with
    a little jitter); layer 2 is noise. A working probe reads layer 1 and not layer 2."""
    out = []
    for text in texts:
        first = []
        for c in text:
            first += [1 + "abcde".index(c)] * int(rng.integers(5, 8)) + [0] * 2
        first = np.asarray(first)
        out.append(np.stack([first, rng.integers(0, k, len(first))]))
    return out


def test_probe_tells_a_content_layer_from_a_noise_layer(tiny_workdir):
    rng = np.random.default_rng(0)
    books = np.random.default_rng(1).normal(size=(2, 256, 16)).astype(np.float32)
    _, train_texts = tone_corpus(96, seed=1)
    _, test_texts = tone_corpus(24, seed=2)
    result = probe.probe_codes(
        books,
        (_codes_for(train_texts, rng), train_texts),
        (_codes_for(test_texts, rng), test_texts),
        layers=[1, 2],
        hidden=32,
        num_layers=1,
        kernel_size=5,
        steps=150,
        batch_size=8,
        learning_rate=3e-3,
        seed=0,
        progress=False,
    )
    cer = {k: v["cer"] for k, v in result["layers"].items()}
    assert cer["rvq1"] < 0.2 and cer["rvq2"] > 0.6, cer
    assert "rvq1" in probe.format_table(result)
    # The job on a work directory (real codec, tiny corpus) writes its JSON.
    config, workdir = tiny_workdir
    config.unlock()
    config.probe.update(train_utterances=6, test_utterances=3, steps=3, hidden=16, batch_size=3)
    out = probe.probe_workdir(config, workdir, progress=False)
    with open(probe.probe_path(workdir, "test")) as f:
        assert json.load(f)["layers"].keys() == out["layers"].keys() == {"rvq1", "rvq2"}
