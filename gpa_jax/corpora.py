"""One example schema for every speech corpus the project reads through TFDS.

Every corpus (the embedded synthetic one, LibriSpeech, LibriTTS, VCTK) is read into

    {"audio": float32 [samples] mono at `sample_rate`, "text": normalised transcript,
     "speaker": str, "id": str}

so later stages (codec training, tokenization, evaluation) never see a corpus's own
field names, sample rate or transcript style. Transcripts go through
`gpa_jax.text.normalize_transcript`; audio is resampled (soxr) to the requested rate.

Bad records (an undecodable record, empty / non-finite / too long / near-silent audio, a
cut TFRecord shard) raise `AudioError` naming the corpus, split, example id and shard
file, or, with `on_error="skip"`, are logged, counted and listed in `LoadStats`; a pass
stops with `CorpusError` only when the faults exceed `max_bad_fraction` of the split.

The synthetic corpus' TFDS builder is a dataset definition of the repository
(`data/synthetic_speech`, not part of the installed library); its adapter names that
module, imported when the corpus is read, so reading it needs the repository root on
the path. Public corpora need nothing outside the library.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import tensorflow_datasets as tfds

from gpa_jax.audio import io as audio_io
from gpa_jax.errors import UserError
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


# Skip reasons that are choices of the caller (length limits), not faults of the corpus:
# they never count towards max_bad_fraction.
FILTERED_KINDS = ("too_long", "too_short")
# Default failure fraction of a pass: past it the corpus itself is suspect and the job
# stops (CorpusError) instead of training or tokenizing on what is left.
MAX_BAD_FRACTION = 0.05


class CorpusError(UserError, ValueError):
    """A corpus pass found more bad records than its max_bad_fraction allows."""


@dataclasses.dataclass
class LoadStats:
    """What a pass over a corpus read, and what it skipped and why.

    `bad_records` has one entry per skipped record (or per cut shard): {"corpus", "split",
    "id" (None when the record itself could not be parsed), "file" (the TFRecord shard, when
    known), "kind" (AudioError kinds plus "undecodable" and "truncated_shard"), "reason",
    "count" (records lost: 1, or the unread rest of a cut shard)}.
    """

    read: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    skipped_ids: list[str] = dataclasses.field(default_factory=list)
    bad_records: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> int:
        """Skipped records that are faults (not length filters)."""
        return sum(n for kind, n in self.skipped.items() if kind not in FILTERED_KINDS)


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


def _split_shards(builder: tfds.core.DatasetBuilder, split: str) -> list[Any] | None:
    """The split's TFDS file instructions (shard path, skip, take); None when the builder
    has no split metadata (TFDS mock data), which is then read through `as_dataset`."""
    try:
        return list(builder.info.splits[split].file_instructions)
    except KeyError:
        return None


def _records(shards, whole_split) -> Iterator[tuple[str | None, int, Any]]:
    """(shard path or None, index in the shard, serialized record or decoded example).

    Records are read shard by shard, so a cut shard (TFRecord DataLossError) is reported
    by its path and the next shard is still read; the caller decodes each record itself,
    so one undecodable record costs only that record. Without shard metadata the split's
    decoded `whole_split` dataset is read instead.
    """
    import tensorflow as tf

    if shards is None:
        for index, example in enumerate(tfds.as_numpy(whole_split)):
            yield None, index, example
        return
    for shard in shards:
        ds = tf.data.TFRecordDataset(shard.filename).skip(shard.skip).take(shard.take)
        index = 0
        try:
            for record in ds.as_numpy_iterator():
                yield shard.filename, index, record
                index += 1
        except tf.errors.OpError as error:
            yield shard.filename, index, _CutShard(shard.take - index, error)


@dataclasses.dataclass
class _CutShard:
    lost: int
    error: Exception


def _op_message(error: Exception) -> str:
    """A TF op error's message without its function-node prefix and op suffix."""
    text = re.sub(r"\{\{.*?\}\}\s*", "", getattr(error, "message", str(error)))
    return f"{type(error).__name__}: {text.split(' [Op:')[0].strip()}"


def _record_id(record: bytes) -> str | None:
    """The "id" field of a serialized tf.train.Example that failed to decode, if readable."""
    import tensorflow as tf

    try:
        values = tf.train.Example.FromString(record).features.feature["id"].bytes_list.value
        return _to_str(values[0]) if values else None
    except Exception:  # noqa: BLE001 - a record that does not even parse has no id
        return None


def speech_examples(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    sample_rate: int = 16_000,
    max_seconds: float = 600.0,
    silence_rms: float | None = audio_io.SILENCE_RMS,
    on_error: Literal["raise", "skip"] = "raise",
    stats: LoadStats | None = None,
    max_bad_fraction: float = MAX_BAD_FRACTION,
    download: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yields examples of `name` (a TFDS name, optionally "/config") in the common schema.

    `download=False` by default: nothing is fetched at run time; the dataset must
    already be prepared in `data_dir` (or be the synthetic corpus built by launch).

    Bad records (undecodable, bad audio, near-silent below `silence_rms`, a cut shard)
    raise with on_error="raise"; with "skip" each is logged and listed in `stats` by
    corpus, split, example id and shard file, and the pass goes on until the faults
    (length filters excluded) exceed `max_bad_fraction` of the split's records: then
    CorpusError, naming the count and the first bad records.
    """
    from absl import logging

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    adapter = adapter_for(name)
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    features = builder.info.features
    audio_feature = features[adapter.audio_key]
    native_rate = audio_feature.sample_rate
    if native_rate is None:
        raise ValueError(f"{name}: feature {adapter.audio_key!r} declares no sample rate")
    shards = _split_shards(builder, split)
    whole_split = None
    if shards is None:
        try:
            whole_split = builder.as_dataset(split=split)
        except AssertionError as error:  # TFDS's "not prepared" signal.
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in data_dir={builder.data_dir!r}; build "
                "it first (python -m launch.build_corpus for the synthetic corpus, `tfds build` "
                f"for public corpora) - nothing is downloaded at run time. ({error})"
            ) from None
    total = sum(s.take for s in shards) if shards is not None else None
    stats = stats if stats is not None else LoadStats()

    def bad(kind: str, reason: str, example_id: str | None, path: str | None, count: int = 1):
        where = f"{name}/{split}/{example_id or '?'}" + (f" in {path}" if path else "")
        if on_error == "raise":
            raise audio_io.AudioError(where, reason, kind)
        logging.warning("skipped %s: %s", where, reason)
        stats.skipped[kind] += count
        if example_id is not None:
            stats.skipped_ids.append(example_id)
        stats.bad_records.append({"corpus": name, "split": split, "id": example_id,
                                  "file": path, "kind": kind, "reason": reason,
                                  "count": count})  # fmt: skip
        # With the split's size known, stop as soon as the fraction is certainly exceeded;
        # otherwise (no shard metadata) only at the end of the pass.
        if total is not None and kind not in FILTERED_KINDS:
            if stats.failed > max_bad_fraction * total:
                _too_many_bad(name, split, stats, total, max_bad_fraction)

    for path, index, raw in _records(shards, whole_split):
        if isinstance(raw, _CutShard):
            bad("truncated_shard", f"shard cut after record {index}: {raw.lost} of its "
                f"records unreadable ({_op_message(raw.error)})",
                None, path, count=raw.lost)  # fmt: skip
            continue
        if path is not None:
            try:
                raw = features.deserialize_example_np(raw)
            except Exception as error:  # noqa: BLE001 - any decode failure costs one record
                bad("undecodable", f"record {index} does not decode "
                    f"({type(error).__name__}: {error})", _record_id(raw), path)  # fmt: skip
                continue
        example_id = _to_str(raw["id"])
        where = f"{name}/{split}/{example_id}"
        try:
            audio = _audio_to_float(np.asarray(raw[adapter.audio_key]), audio_feature.np_dtype)
            audio = audio_io.to_mono(audio)
            audio = audio_io.check_waveform(
                audio, native_rate, name=where, max_seconds=max_seconds, silence_rms=silence_rms
            )
            audio = audio_io.resample(audio, native_rate, sample_rate)
        except audio_io.AudioError as error:
            bad(error.kind, error.reason, example_id, path)
            continue
        stats.read += 1
        yield {
            "audio": audio,
            "text": normalize_transcript(_to_str(raw[adapter.text_key])),
            "speaker": _speaker_name(features, adapter.speaker_key, raw[adapter.speaker_key]),
            "id": example_id,
        }
    seen = stats.read + sum(stats.skipped.values())
    if stats.failed > max_bad_fraction * seen:
        _too_many_bad(name, split, stats, seen, max_bad_fraction)


def _too_many_bad(name: str, split: str, stats: LoadStats, seen: int, fraction: float) -> None:
    first = "; ".join(
        f"{r['id'] or '?'} ({r['kind']}{', ' + r['file'] if r['file'] else ''})"
        for r in stats.bad_records[:3]
    )
    raise CorpusError(
        f"{name}/{split}: {stats.failed} of {seen} records are bad, more than "
        f"max_bad_fraction={fraction:g}; stopping (first: {first}). Repair or rebuild the "
        "corpus, or raise the fraction if these losses are acceptable."
    )
