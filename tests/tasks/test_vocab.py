"""SpeechVocabulary id layout, text/audio round trips, decode skipping, SentencePiece."""

import ml_collections
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import flagsaver

from gpa_jax.tasks import spm
from gpa_jax.tasks import vocab as vocab_lib
from gpa_jax.tasks.vocab import SpeechVocabulary

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog",
    "speech tokens and text tokens",
    "one model for speech recognition and synthesis",
    "it's a fine day",
]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("spm") / "tiny.model")
    pieces = spm.train_sentencepiece(SENTENCES, path, vocab_size=48)
    assert 3 < pieces <= 48
    return path


def test_id_layout_and_sizes():
    v = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=8, codebook_size=1024)
    assert (v.pad_id, v.eos_id, v.unk_id, v.bos_id) == (0, 1, 2, 3)
    assert [v.task_tag_id(t) for t in ("tts", "asr", "vc")] == [4, 5, 6]
    assert [v.delimiter_id(d) for d in ("text", "ref_audio", "src_audio", "tgt_audio")] == [
        16,
        17,
        18,
        19,
    ]
    assert v.token_id("<|vc|>") == 6 and v.token_id("<eos>") == 1
    assert v.text_size == 259 and v.audio_offset == 64 + 259
    ranges = [(0, 64), (64, 64 + 259)] + [v.audio_range(k) for k in range(8)]
    for (a0, a1), (b0, _) in zip(ranges, ranges[1:], strict=False):
        assert a1 == b0 and a0 < a1  # Contiguous, disjoint, increasing.
    assert v.audio_range(7)[1] == v.used_size == 64 + 259 + 8 * 1024
    assert v.vocab_size % 128 == 0 and v.used_size <= v.vocab_size < v.used_size + 128
    with pytest.raises(ValueError, match="not in this vocabulary"):
        v.audio_range(8)
    assert v.task_tag_id("se") == 7 and v.token_id("<|se|>") == 7  # the first reserved tag
    with pytest.raises(KeyError):
        v.task_tag_id("s2tt")


def test_byte_text_size_is_seqios():
    """ids.BYTE_TEXT_SIZE (read by configs without importing seqio) is the byte range's."""
    from gpa_jax.tasks.ids import BYTE_TEXT_SIZE, TEXT_OFFSET

    assert BYTE_TEXT_SIZE == seqio.ByteVocabulary().vocab_size
    assert vocab_lib.make_text_vocabulary("byte").vocab_size == BYTE_TEXT_SIZE
    speech = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=1, codebook_size=256)
    assert speech.audio_offset == TEXT_OFFSET + BYTE_TEXT_SIZE


def test_text_round_trip_and_decode_skips_control_and_audio():
    v = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=2, codebook_size=16)
    text = "hello world it's me"
    ids = v.encode(text)
    assert all(64 <= i < 64 + 259 for i in ids)
    assert v.decode(ids) == text
    mixed = (
        [v.task_tag_id("asr"), v.delimiter_id("src_audio")]
        + list(v.audio_to_ids([1, 2, 3], 0))
        + [v.delimiter_id("text")]
        + ids
        + [v.eos_id]
        + v.encode("after eos")
    )
    assert v.decode(mixed) == text
    assert v.decode_tf(tf.constant(mixed)).numpy().decode() == text
    assert v.decode([v.vocab_size + 5] + ids) == text  # Out-of-range -> unk, skipped.
    np.testing.assert_array_equal(v.encode_tf(tf.constant(text)).numpy(), ids)
    assert v.describe([4, 16, ids[0], v.audio_to_ids([5], 1)[0], 1]) == [
        "<|tts|>",
        "<|text|>",
        "'h'",
        "a1:5",
        "<eos>",
    ]


def test_audio_round_trip_per_stream():
    v = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=3, codebook_size=16)
    codes = np.random.default_rng(0).integers(0, 16, size=50)
    for k in range(3):
        ids = v.audio_to_ids(codes, k)
        start, end = v.audio_range(k)
        assert ids.dtype == np.int32 and ids.min() >= start and ids.max() < end
        assert v.is_audio(ids).all() and not v.is_text(ids).any()
        np.testing.assert_array_equal(v.ids_to_audio(ids, k), codes)
    with pytest.raises(ValueError, match="outside"):
        v.audio_to_ids([16], 0)
    ids = v.audio_to_ids([1, 2], 1)
    with pytest.raises(ValueError, match="not audio stream 0"):
        v.ids_to_audio(ids, 0)
    mixed = [v.eos_id, *v.audio_to_ids([7, 8], 0), v.delimiter_id("text")]
    np.testing.assert_array_equal(v.ids_to_audio(mixed, 0, strict=False), [7, 8])


def test_equality_and_hash():
    a = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=1, codebook_size=16)
    b = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=1, codebook_size=16)
    c = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=2, codebook_size=16)
    assert a == b and hash(a) == hash(b) and a != c


def test_sentencepiece_vocabulary_end_to_end(spm_model):
    config = ml_collections.ConfigDict(dict(text="spm", spm_model=spm_model, audio_streams=1))
    v = vocab_lib.make_vocabulary(config, codebook_size=1024)
    assert isinstance(v.text_vocab, seqio.SentencePieceVocabulary)
    assert v.text_size == v.text_vocab.vocab_size <= 48
    assert v.audio_range(0) == (64 + v.text_size, 64 + v.text_size + 1024)
    assert v.vocab_size % 128 == 0
    for sentence in SENTENCES:
        ids = v.encode(sentence)
        assert all(64 + 3 <= i < 64 + v.text_size for i in ids)  # No PAD/EOS/UNK pieces.
        assert v.decode([v.task_tag_id("tts"), *ids, v.eos_id]) == sentence
    assert "SentencePiece(" in str(v)
    with pytest.raises(ValueError, match="train one with"):
        vocab_lib.make_text_vocabulary("spm", "")


def test_sentencepiece_model_on_gs(fake_gcs):
    """Backend: in-memory fake gs:// (tests/fake_gcs.py). The model is written to the
    bucket and loaded through the per-host cache (seqio reads local files here)."""
    from gpa_jax import paths

    path = f"{fake_gcs}/run/spm/tiny_48.model"
    spm.train_sentencepiece(SENTENCES, path, vocab_size=48)
    assert paths.isfile(path)
    config = ml_collections.ConfigDict(dict(text="spm", spm_model=path, audio_streams=1))
    v = vocab_lib.make_vocabulary(config, codebook_size=1024)
    assert v.decode([*v.encode(SENTENCES[0]), v.eos_id]) == SENTENCES[0]
    with pytest.raises(FileNotFoundError, match="gs://fake-bucket/run/spm/none.model"):
        vocab_lib.make_text_vocabulary("spm", f"{fake_gcs}/run/spm/none.model")


def test_train_spm_launch_reads_tfds_transcripts(tmp_path):
    from launch import train_spm

    output = str(tmp_path / "spm" / "libri.model")
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    with (
        tfds.testing.mock_data(num_examples=12),
        flagsaver.flagsaver(
            corpus="librispeech",
            split="dev_clean",
            vocab_size=40,
            output=output,
            tfds_data_dir=str(tmp_path),
        ),
    ):
        train_spm.main(["train_spm"])
    text_vocab = vocab_lib.make_text_vocabulary("spm", output)
    assert 3 < text_vocab.vocab_size <= 40
    assert train_spm.default_spm_model("W", "synthetic_speech/default", 1024) == (
        "W/spm/synthetic_speech_default_1024.model"
    )
