"""The common speech schema over public TFDS corpora, on TFDS mock data (no download)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gpa_jax import corpora
from gpa_jax.audio import io as audio_io

NATIVE_RATES = {"librispeech": 16_000, "libritts": 24_000, "vctk": 48_000}


def _raw_examples(name, split, count):
    with tfds.testing.mock_data(num_examples=count):
        builder = tfds.builder(name)
        return builder, list(tfds.as_numpy(builder.as_dataset(split=split)))


@pytest.mark.parametrize(
    "name, split", [("librispeech", "dev_clean"), ("libritts", "dev_clean"), ("vctk", "train")]
)
def test_public_corpus_reads_into_common_schema(name, split, tmp_path):
    _, raw = _raw_examples(name, split, 4)
    with tfds.testing.mock_data(num_examples=4):
        examples = list(corpora.speech_examples(name, split, data_dir=str(tmp_path)))
    assert len(examples) == 4
    adapter = corpora.ADAPTERS[name]
    builder = tfds.builder(name)
    for ex, src in zip(examples, raw, strict=True):
        assert set(ex) == {"audio", "text", "speaker", "id"}
        assert ex["audio"].dtype == np.float32 and ex["audio"].ndim == 1
        assert np.all(np.abs(ex["audio"]) <= 1.0)
        # Resampled to 16 kHz: the length scales by the rate ratio.
        expected = len(src[adapter.audio_key]) * 16_000 / NATIVE_RATES[name]
        assert abs(len(ex["audio"]) - expected) <= 2
        assert ex["id"] == src["id"].decode()
        assert ex["text"] == ex["text"].lower().strip()
        assert isinstance(ex["speaker"], str) and ex["speaker"]
        speaker_feature = builder.info.features[adapter.speaker_key]
        if isinstance(speaker_feature, tfds.features.ClassLabel):  # VCTK: "p225", not 0.
            assert ex["speaker"] in speaker_feature.names
        else:
            assert ex["speaker"] == str(src[adapter.speaker_key])


def test_bad_audio_raises_naming_the_example_or_is_counted(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        with pytest.raises(audio_io.AudioError, match=r"librispeech/dev_clean/.*too long"):
            next(corpora.speech_examples("librispeech", "dev_clean", max_seconds=1e-6))
        stats = corpora.LoadStats()
        kept = list(
            corpora.speech_examples(
                "librispeech", "dev_clean", max_seconds=1e-6, on_error="skip", stats=stats
            )
        )
    assert kept == []
    assert stats.read == 0 and stats.skipped == {"too_long": 3}
    assert len(stats.skipped_ids) == 3


def test_unknown_corpus_and_unprepared_corpus(tmp_path):
    with pytest.raises(ValueError, match="unknown speech corpus 'nope'.*librispeech"):
        corpora.adapter_for("nope")
    with pytest.raises(FileNotFoundError, match="not prepared.*nothing is downloaded"):
        next(corpora.speech_examples("librispeech", "dev_clean", data_dir=str(tmp_path)))
