"""The text half of the vocabulary: a SentencePiece model trained on corpus transcripts.

Transcripts are read straight from a TFDS speech corpus' text feature (audio is left
encoded, never decoded or resampled) and normalised with `normalize_transcript`, so the
model sees exactly the text the ASR targets and TTS inputs will carry.

Training settings, and why:
- pad=0, eos=1, unk=2, no bos: the T5/seqio convention, which `SpeechVocabulary`
  relies on (its <pad>/<eos>/<unk> sit at the same ids).
- normalization "identity": transcripts are already normalised; a second NFKC pass could
  make decode(encode(text)) differ from text.
- character_coverage 1.0: the normalised alphabet is tiny (a-z, 0-9, ', space).
- hard_vocab_limit False: a small corpus may support fewer pieces than asked for; the
  model then has fewer (the size actually reached is logged and returned).
- Sentences are de-duplicated and sorted (the synthetic corpus repeats each sentence in
  several voices), which also makes training independent of corpus order.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable

import sentencepiece as spm
import tensorflow as tf
from absl import logging

from gpa_jax import paths
from gpa_jax.text import normalize_transcript


def corpus_transcripts(name: str, split: str = "train", data_dir: str | None = None) -> list[str]:
    """Normalised transcripts of a TFDS speech corpus split, without decoding audio."""
    import tensorflow_datasets as tfds

    from gpa_jax.corpora import adapter_for

    adapter = adapter_for(name)
    builder = tfds.builder(name, data_dir=data_dir)
    try:
        ds = builder.as_dataset(
            split=split, decoders={adapter.audio_key: tfds.decode.SkipDecoding()}
        )
    except AssertionError as error:  # TFDS's "not prepared" signal.
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in data_dir={builder.data_dir!r} ({error})"
        ) from None
    ds = ds.map(lambda ex: ex[adapter.text_key], num_parallel_calls=tf.data.AUTOTUNE)
    return [normalize_transcript(t.decode("utf-8")) for t in tfds.as_numpy(ds)]


def train_sentencepiece(
    sentences: Iterable[str],
    output_path: str,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    num_threads: int = 2,
) -> int:
    """Trains a SentencePiece model on `sentences`, writes it to `output_path` (.model).

    Returns the number of pieces of the written model (<= vocab_size, see module doc).
    """
    unique = sorted({s for s in (normalize_transcript(x) for x in sentences) if s})
    if not unique:
        raise ValueError("no non-empty sentences to train a SentencePiece model on")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(unique),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        num_threads=num_threads,
        minloglevel=2,
    )
    paths.makedirs(os.path.dirname(output_path))
    # Whole or not at all: the demo's spm stage skips when this file exists.
    paths.atomic_write_text(output_path, model.getvalue())
    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    logging.info(
        "SentencePiece %s model: %d pieces (asked %d) from %d unique sentences -> %s",
        model_type,
        pieces,
        vocab_size,
        len(unique),
        output_path,
    )
    return pieces
