"""One example schema for every speech corpus the project reads through TFDS.

Every corpus (the embedded synthetic one, LibriSpeech, LibriTTS, VCTK) is read into

    {"audio": float32 [samples] mono at `sample_rate`, "text": normalised transcript,
     "speaker": str, "id": str}

so later stages (codec training, tokenization, evaluation) never see a corpus's own
field names, sample rate or transcript style. Transcripts go through
`gpa_jax.text.normalize_transcript`; audio is resampled (soxr) to the requested rate.

Bad audio (empty, non-finite, too long) raises `AudioError` naming the corpus, split
and example id, or, with `on_error="skip"`, is counted and listed in `LoadStats`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import tensorflow_datasets as tfds

from gpa_jax.audio import io as audio_io
from gpa_jax.text import normalize_transcript


@dataclasses.dataclass(frozen=True)
class CorpusAdapter:
    """Where a TFDS dataset keeps the fields of the common schema."""

    tfds_name: str
    audio_key: str
    text_key: str
    speaker_key: str
    needs_import: str | None = None  # Module that registers a builder defined in this repo.


ADAPTERS: dict[str, CorpusAdapter] = {
    "synthetic_speech": CorpusAdapter(
        "synthetic_speech", "audio", "text", "speaker", needs_import="data.synthetic_speech"
    ),
    "librispeech": CorpusAdapter("librispeech", "speech", "text", "speaker_id"),
    # LibriTTS ships a normalised transcript; ours is applied on top of it.
    "libritts": CorpusAdapter("libritts", "speech", "text_normalized", "speaker_id"),
    "vctk": CorpusAdapter("vctk", "speech", "text", "speaker"),
}


@dataclasses.dataclass
class LoadStats:
    """What a pass over a corpus read, and what it skipped and why."""

    read: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    skipped_ids: list[str] = dataclasses.field(default_factory=list)


def adapter_for(name: str) -> CorpusAdapter:
    """The adapter for `name` ("librispeech" or "librispeech/<builder config>")."""
    base = name.split("/")[0].split(":")[0]
    if base not in ADAPTERS:
        raise ValueError(f"unknown speech corpus {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    adapter = ADAPTERS[base]
    if adapter.needs_import:
        __import__(adapter.needs_import)
    return adapter


def _to_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _speaker_name(features: tfds.features.FeaturesDict, key: str, value: Any) -> str:
    feature = features[key]
    if isinstance(feature, tfds.features.ClassLabel):
        return feature.int2str(int(value))
    return _to_str(value)


def _audio_to_float(audio: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """TFDS stores PCM as integers; scale them to [-1, 1]."""
    if np.issubdtype(dtype, np.floating):
        return audio.astype(np.float32)
    if np.dtype(dtype) == np.int16:
        return audio_io.int16_to_float(audio)
    # int32/int64 PCM (LibriTTS declares int64 but holds 16-bit values).
    return (audio.astype(np.float64) / 32768.0).astype(np.float32)


def speech_examples(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    sample_rate: int = 16_000,
    max_seconds: float = 600.0,
    on_error: Literal["raise", "skip"] = "raise",
    stats: LoadStats | None = None,
    shuffle_files: bool = False,
    download: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yields examples of `name` (a TFDS name, optionally "/config") in the common schema.

    `download=False` by default: nothing is fetched at run time; the dataset must
    already be prepared in `data_dir` (or be the synthetic corpus built by launch).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    adapter = adapter_for(name)
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    features = builder.info.features
    audio_feature = features[adapter.audio_key]
    native_rate = audio_feature.sample_rate
    if native_rate is None:
        raise ValueError(f"{name}: feature {adapter.audio_key!r} declares no sample rate")
    try:
        ds = builder.as_dataset(split=split, shuffle_files=shuffle_files)
    except AssertionError as error:  # TFDS's "not prepared" signal.
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in data_dir={builder.data_dir!r}; build "
            "it first (python -m launch.build_corpus for the synthetic corpus, `tfds build` "
            f"for public corpora) - nothing is downloaded at run time. ({error})"
        ) from None
    stats = stats if stats is not None else LoadStats()
    for raw in tfds.as_numpy(ds):
        example_id = _to_str(raw["id"])
        where = f"{name}/{split}/{example_id}"
        try:
            audio = _audio_to_float(np.asarray(raw[adapter.audio_key]), audio_feature.np_dtype)
            audio = audio_io.to_mono(audio)
            audio = audio_io.check_waveform(
                audio, native_rate, name=where, max_seconds=max_seconds
            )
            audio = audio_io.resample(audio, native_rate, sample_rate)
        except audio_io.AudioError as error:
            if on_error == "raise":
                raise
            stats.skipped[error.kind] += 1
            stats.skipped_ids.append(example_id)
            continue
        stats.read += 1
        yield {
            "audio": audio,
            "text": normalize_transcript(_to_str(raw[adapter.text_key])),
            "speaker": _speaker_name(features, adapter.speaker_key, raw[adapter.speaker_key]),
            "id": example_id,
        }
