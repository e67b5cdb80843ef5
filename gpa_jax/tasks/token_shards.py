"""Token shards: the on-disk hand-off from the codec tokenization job to the SeqIO tasks.

Layout of one token directory (one corpus tokenized by one codec):

    <dir>/manifest.json                         what is here (below)
    <dir>/<split>-<k>-of-<n>.array_record       k = 00000..n-1, one record per utterance

A record is one utterance, {id, speaker, text, codes[, features][, noisy]}, serialized
with msgpack as a map

    {"v": 2, "id": str, "speaker": str, "text": str (normalised transcript),
     "shape": [n_q, T], "dtype": "<i2" | "<i4", "codes": raw little-endian bytes, C order,
     optional: "features": raw bytes, "features_shape": [T, F], "features_dtype": "<f2",
     optional: "noisy": {"codes": raw bytes (shape and dtype of "codes"),
                         "snr_db": float, "kind": str,
                         "features": raw bytes (shape and dtype of "features"), when the
                         record has features}}

Version 2 added the optional per-frame features (one float16 row per codec frame, e.g.
`gpa_jax.audio.features.token_aligned_log_mel`: the continuous LM input at audio
positions); a v1 record is a v2 record without them and still reads. "noisy" is the
speech-enhancement input (`gpa_jax.audio.noise`): the same codec's codes of a noisy
version of the clip, frame for frame with the clean codes, its features when the record
has features, and the SNR and noise kind it was mixed with. It is an optional key (a
reader that does not know it ignores it), so it left the version at 2.

Why msgpack with raw code bytes (and not tf.train.Example): a record decodes with one
`np.frombuffer` (no per-value Python objects), costs 2 bytes per code plus ~40 bytes of
keys, stays self-describing (new keys can be added; readers ignore unknown ones), and
reading it needs neither TensorFlow nor protobuf, so codec workers and grain pipelines
import nothing heavy. tf.train.Example would store codes as int64 varints (or need the
same raw-bytes trick) and would drag a TensorFlow import into every reader process.
Codes are int16 when `codebook_size` <= 32768, else int32.

ArrayRecord files are written with `group_size:1` (each record its own chunk), the
setting grain recommends for random access; sequential reads stay fast.

manifest.json:

    {"format": "gpa_jax.token_shards", "version": 1,
     "n_q": 8, "codebook_size": 1024, "frame_rate": 50, "codes_dtype": "int16",
     "metadata": {...free-form: codec checkpoint, corpus name, ...},
     "splits": {"train": {"num_utterances": N, "num_frames": F, "num_speakers": S,
                          "features": {"kind": "log_mel", "dim": 160, "dtype": "float16"}
                                      | null,
                          "noisy": {"seed": 0, "snr_db": [0, 15], "kinds": [...],
                                    "babble_talkers": 3, "babble_ids": [...]} | null,
                          "shards": [{"file": "train-00000-of-00002.array_record",
                                      "num_records": n, "sha256": "..."}, ...]}, ...}}

A split's "features" says what every one of its records carries (null or absent: none),
and "noisy" whether every record carries a noisy input and how they were made
(`gpa_jax.audio.noise.NoiseSettings` plus the ids of the utterances babble is made of);
both are per split because a tokenization resumes split by split.

Writing a split (ShardWriter) replaces that split's shards and its manifest entry and keeps
the other splits; one writer per split at a time (the manifest update is atomic via
rename, but two processes updating different splits at the same instant could lose one
entry: write splits one after another or merge manifests afterwards).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
from array_record.python import array_record_module

from gpa_jax import paths
from gpa_jax.text import normalize_transcript

FORMAT = "gpa_jax.token_shards"
VERSION = 2
FEATURES_DTYPE = np.dtype("<f2")
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".array_record"
DEFAULT_RECORDS_PER_SHARD = 4096
WRITER_OPTIONS = "group_size:1"
# Sequential scans (bank loading, iter_utterances) vs. one-record look-ups.
_SEQUENTIAL_OPTIONS = ""
_RANDOM_ACCESS_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
_READ_CHUNK = 256  # Records per sequential read (bounds memory on big shards).


class ShardError(ValueError):
    """A bad token shard, record or manifest; the message names the file (and record)."""


@dataclasses.dataclass(frozen=True)
class NoisyInput:
    """An utterance's speech-enhancement input: the codes of a noisy version of its clip
    (same shape as its codes), their features when it has features, and how it was made."""

    codes: np.ndarray
    snr_db: float
    kind: str
    features: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One tokenized utterance: RVQ codes [n_q, T] with its transcript and speaker.

    `features`: optional float16 [T, F], one row per codec frame (see the module docstring);
    `noisy`: optional SE input (`NoisyInput`).
    """

    id: str
    speaker: str
    text: str
    codes: np.ndarray
    features: np.ndarray | None = None
    noisy: NoisyInput | None = None

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])


def codes_dtype(codebook_size: int) -> np.dtype:
    """Smallest signed dtype that holds every code (int16 for codebooks up to 32768)."""
    return np.dtype("<i2") if codebook_size <= 32768 else np.dtype("<i4")


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def encode_record(utt: Utterance, dtype: np.dtype) -> bytes:
    """Serializes one utterance (see the module docstring for the record schema)."""
    codes = np.ascontiguousarray(utt.codes, dtype=dtype)
    record = {
        "v": VERSION,
        "id": utt.id,
        "speaker": utt.speaker,
        "text": utt.text,
        "shape": list(codes.shape),
        "dtype": codes.dtype.str,
        "codes": codes.tobytes(),
    }
    if utt.features is not None:
        features = np.ascontiguousarray(utt.features, dtype=FEATURES_DTYPE)
        record["features"] = features.tobytes()
        record["features_shape"] = list(features.shape)
        record["features_dtype"] = features.dtype.str
    if utt.noisy is not None:
        noisy = {
            "codes": np.ascontiguousarray(utt.noisy.codes, dtype=dtype).tobytes(),
            "snr_db": float(utt.noisy.snr_db),
            "kind": str(utt.noisy.kind),
        }
        if utt.noisy.features is not None:
            noisy["features"] = np.ascontiguousarray(
                utt.noisy.features, dtype=FEATURES_DTYPE
            ).tobytes()
        record["noisy"] = noisy
    return msgpack.packb(record, use_bin_type=True)


def decode_record(data: bytes, where: str = "record") -> Utterance:
    """Parses one record; any malformation raises ShardError naming `where`."""
    try:
        obj = msgpack.unpackb(data, raw=False)
    except Exception as error:  # msgpack raises several unrelated types.
        raise ShardError(f"{where}: not a msgpack token record ({error})") from None
    if not isinstance(obj, dict):
        raise ShardError(f"{where}: record is a {type(obj).__name__}, expected a map")
    missing = [k for k in ("id", "speaker", "text", "shape", "dtype", "codes") if k not in obj]
    if missing:
        raise ShardError(f"{where}: record lacks {', '.join(missing)}")
    if obj.get("v", VERSION) > VERSION:
        raise ShardError(f"{where}: record version {obj['v']} is newer than this reader")
    try:
        shape = tuple(int(s) for s in obj["shape"])
        dtype = np.dtype(obj["dtype"])
        codes = np.frombuffer(obj["codes"], dtype=dtype)
        if len(shape) != 2 or codes.size != shape[0] * shape[1]:
            raise ValueError(f"{codes.size} codes do not fill shape {shape}")
        codes = codes.reshape(shape)
    except (TypeError, ValueError) as error:
        raise ShardError(f"{where}: bad codes ({error})") from None
    features = None
    if "features" in obj:
        try:
            shape = tuple(int(s) for s in obj["features_shape"])
            features = np.frombuffer(obj["features"], dtype=np.dtype(obj["features_dtype"]))
            if len(shape) != 2 or features.size != shape[0] * shape[1]:
                raise ValueError(f"{features.size} values do not fill shape {shape}")
            features = features.reshape(shape)
        except (KeyError, TypeError, ValueError) as error:
            raise ShardError(f"{where}: bad features ({error})") from None
    noisy = None
    if "noisy" in obj:
        noisy = _decode_noisy(obj["noisy"], codes, features, where)
    return Utterance(str(obj["id"]), str(obj["speaker"]), str(obj["text"]), codes, features, noisy)


def _decode_noisy(
    obj: Any, codes: np.ndarray, features: np.ndarray | None, where: str
) -> NoisyInput:
    """A record's "noisy" map, shaped like the record's clean codes and features."""
    try:
        noisy_codes = np.frombuffer(obj["codes"], dtype=codes.dtype)
        if noisy_codes.size != codes.size:
            raise ValueError(f"{noisy_codes.size} noisy codes for clean codes {codes.shape}")
        noisy_features = None
        if (features is None) != ("features" not in obj):
            raise ValueError("noisy features present exactly when the record has features")
        if features is not None:
            noisy_features = np.frombuffer(obj["features"], dtype=features.dtype)
            if noisy_features.size != features.size:
                raise ValueError(f"{noisy_features.size} noisy feature values for {features.shape}")
            noisy_features = noisy_features.reshape(features.shape)
        return NoisyInput(
            noisy_codes.reshape(codes.shape), float(obj["snr_db"]), str(obj["kind"]), noisy_features
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ShardError(f"{where}: bad noisy input ({error})") from None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with paths.open_file(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- manifest ------------------------------------------------------------------------


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> str:
    """Writes manifest.json atomically (temp file + rename); returns its path."""
    paths.makedirs(directory)
    path = os.path.join(directory, MANIFEST_NAME)
    # gpa_jax.paths: fsync before the rename, the temporary removed on any failure (a
    # signal, a full disk) and a killed writer's one cleaned up by the next write.
    paths.atomic_write_json(path, manifest, indent=1, sort_keys=True)
    return path


def read_manifest(directory: str, verify: bool = False) -> dict[str, Any]:
    """Reads manifest.json; `verify` also checks that every shard exists with its sha256."""
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        manifest = paths.read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {directory!r}: not a token directory (run the codec "
            "tokenization job first)"
        ) from None
    except json.JSONDecodeError as error:
        raise ShardError(f"{path}: not valid JSON ({error})") from None
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version", 0) > VERSION:
        raise ShardError(f"{path}: version {manifest['version']} is newer than this reader")
    for key in ("n_q", "codebook_size", "frame_rate", "splits"):
        if key not in manifest:
            raise ShardError(f"{path}: missing {key!r}")
    if verify:
        for split in manifest["splits"]:
            for shard in manifest["splits"][split]["shards"]:
                shard_path = os.path.join(directory, shard["file"])
                if not paths.isfile(shard_path):
                    raise ShardError(f"{shard_path}: listed in {path} but missing")
                actual = _sha256(shard_path)
                if actual != shard["sha256"]:
                    raise ShardError(
                        f"{shard_path}: sha256 {actual[:12]}... does not match the "
                        f"manifest's {shard['sha256'][:12]}... (corrupt or rewritten shard)"
                    )
    return manifest


def split_shard_paths(
    directory: str, split: str, manifest: Mapping[str, Any] | None = None
) -> list[str]:
    manifest = manifest or read_manifest(directory)
    if split not in manifest["splits"]:
        raise KeyError(
            f"split {split!r} not in {directory}/{MANIFEST_NAME}; has {sorted(manifest['splits'])}"
        )
    return [os.path.join(directory, s["file"]) for s in manifest["splits"][split]["shards"]]


def split_features(manifest: Mapping[str, Any], split: str) -> dict[str, Any] | None:
    """What a split's records carry besides codes ({"kind", "dim", "dtype"}), None = nothing."""
    features = manifest["splits"][split].get("features")
    return dict(features) if features else None


def split_noisy(manifest: Mapping[str, Any], split: str) -> dict[str, Any] | None:
    """How a split's noisy SE inputs were made (module docstring), None = it has none."""
    noisy = manifest["splits"][split].get("noisy")
    return dict(noisy) if noisy else None


# --- writing -------------------------------------------------------------------------


class ShardWriter:
    """Writes one split's utterances into rolling ArrayRecord shards + the manifest entry.

        with ShardWriter(dir, "train", n_q=8, codebook_size=1024, frame_rate=50) as w:
            for utt in ...:
                w.write(utt.id, utt.speaker, utt.text, codes)   # codes [n_q, T]

    Shards roll every `records_per_shard` records. Because the shard count is known only
    at the end, shards are written under temporary names and renamed to
    `<split>-<k>-of-<n>.array_record` on a clean exit, which also writes the manifest.
    On an exception the temporary files are removed and the manifest is left as it was.
    Ids must be unique within the split; text must already be normalised
    (`gpa_jax.text.normalize_transcript`) so that parallel utterances match by text.

    `features` = {"kind": name, "dim": F} makes every `write` take per-frame features
    [T, F] (stored float16) and records it as the split's "features" in the manifest;
    None (the default) writes codes only. Likewise `noisy` (how the noisy inputs were
    made: {"snr_db": [low, high], ...}, the split's "noisy" entry) makes every `write`
    take a `NoisyInput` whose SNR lies in that range.
    """

    def __init__(
        self,
        directory: str,
        split: str,
        *,
        n_q: int,
        codebook_size: int,
        frame_rate: float,
        records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
        metadata: Mapping[str, Any] | None = None,
        options: str = WRITER_OPTIONS,
        features: Mapping[str, Any] | None = None,
        noisy: Mapping[str, Any] | None = None,
    ):
        if not split or "-" in split or os.sep in split:
            raise ValueError(f"split name {split!r} must be non-empty without '-' or '/'")
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        self.directory = directory
        self.split = split
        self.n_q = int(n_q)
        self.codebook_size = int(codebook_size)
        self.frame_rate = frame_rate
        self.records_per_shard = records_per_shard
        self.metadata = dict(metadata or {})
        self._options = options
        self.features = None
        if features is not None:
            if not features.get("kind") or int(features.get("dim", 0)) < 1:
                raise ValueError(f"features={dict(features)} needs a 'kind' and a 'dim' >= 1")
            self.features = {
                "kind": str(features["kind"]),
                "dim": int(features["dim"]),
                "dtype": FEATURES_DTYPE.name,
            }
        self.noisy = None
        if noisy is not None:
            low, high = (float(x) for x in noisy.get("snr_db", (1.0, 0.0)))
            if not low <= high:
                raise ValueError(f"noisy={dict(noisy)} needs an 'snr_db' range [low, high]")
            self.noisy = {**dict(noisy), "snr_db": [low, high]}
        self._dtype = codes_dtype(self.codebook_size)
        self._tmp_paths: list[str] = []
        self._counts: list[int] = []
        self._writer: Any = None
        self._ids: set[str] = set()
        self._speakers: set[str] = set()
        self._frames = 0
        self._closed = False
        paths.makedirs(directory)
        # ArrayRecord writes local files only: shards for a gs:// directory are written
        # in a local folder and uploaded by close().
        self._stage = (
            tempfile.mkdtemp(prefix=f"gpa_jax-{split}-") if paths.is_remote(directory)
            else directory
        )

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def num_written(self) -> int:
        return sum(self._counts)

    def write(
        self,
        utt_id: str,
        speaker: str,
        text: str,
        codes: np.ndarray,
        features: np.ndarray | None = None,
        noisy: NoisyInput | None = None,
    ) -> None:
        """Appends one utterance (codes: integer [n_q, T], values in [0, codebook_size);
        features: float [T, F] exactly when the writer was made with `features`; noisy:
        its SE input exactly when the writer was made with `noisy`)."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        codes = np.asarray(codes)
        where = f"{self.split}/{utt_id}"
        if not utt_id:
            raise ValueError(f"{self.split}: empty utterance id")
        if utt_id in self._ids:
            raise ValueError(f"{where}: duplicate utterance id in split {self.split!r}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"{where}: codes must be integers, got {codes.dtype}")
        if codes.ndim != 2 or codes.shape[0] != self.n_q or codes.shape[1] < 1:
            raise ValueError(f"{where}: codes shape {codes.shape}, expected [{self.n_q}, T>=1]")
        self._check_codes(codes, where)
        if text != normalize_transcript(text):
            raise ValueError(
                f"{where}: text {text!r} is not normalised; pass "
                "gpa_jax.text.normalize_transcript(text)"
            )
        if (features is None) != (self.features is None):
            raise ValueError(
                f"{where}: features {'missing' if features is None else 'given'} but the "
                f"writer was made with features={self.features}"
            )
        if features is not None:
            self._check_features(np.asarray(features), codes.shape[1], where)
        if (noisy is None) != (self.noisy is None):
            raise ValueError(
                f"{where}: noisy input {'missing' if noisy is None else 'given'} but the "
                f"writer was made with noisy={self.noisy}"
            )
        if noisy is not None:
            self._check_noisy(noisy, codes, features, f"{where} (noisy input)")
        if self._writer is None or self._counts[-1] >= self.records_per_shard:
            self._roll()
        utt = Utterance(utt_id, speaker, text, codes, features, noisy)
        self._writer.write(encode_record(utt, self._dtype))
        self._counts[-1] += 1
        self._ids.add(utt_id)
        self._speakers.add(speaker)
        self._frames += int(codes.shape[1])

    def _check_codes(self, codes: np.ndarray, where: str) -> None:
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(
                f"{where}: codes span [{codes.min()}, {codes.max()}], outside "
                f"[0, {self.codebook_size})"
            )

    def _check_features(self, features: np.ndarray, frames: int, where: str) -> None:
        if not np.issubdtype(features.dtype, np.floating):
            raise ValueError(f"{where}: features must be floats, got {features.dtype}")
        if features.shape != (frames, self.features["dim"]):
            raise ValueError(
                f"{where}: features shape {features.shape}, expected "
                f"[{frames} frames, {self.features['dim']}]"
            )
        with np.errstate(over="ignore"):  # overflow is what is checked here
            finite = np.all(np.isfinite(features.astype(FEATURES_DTYPE)))
        if not finite:
            raise ValueError(f"{where}: features are not finite in float16")

    def _check_noisy(
        self, noisy: NoisyInput, codes: np.ndarray, features: np.ndarray | None, where: str
    ) -> None:
        """The noisy input is frame for frame with the clean one, its SNR in the range."""
        noisy_codes = np.asarray(noisy.codes)
        if not np.issubdtype(noisy_codes.dtype, np.integer) or noisy_codes.shape != codes.shape:
            raise ValueError(
                f"{where}: codes {noisy_codes.dtype} {noisy_codes.shape}, expected integers "
                f"shaped like the clean codes {codes.shape}"
            )
        self._check_codes(noisy_codes, where)
        if (noisy.features is None) != (features is None):
            raise ValueError(f"{where}: features must be given exactly when the clean ones are")
        if noisy.features is not None:
            self._check_features(np.asarray(noisy.features), codes.shape[1], where)
        low, high = self.noisy["snr_db"]
        if not low - 1e-6 <= float(noisy.snr_db) <= high + 1e-6:
            raise ValueError(f"{where}: SNR {noisy.snr_db} dB outside the split's [{low}, {high}]")
        if not noisy.kind:
            raise ValueError(f"{where}: no noise kind")

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = os.path.join(
            self._stage, f".{self.split}-{len(self._tmp_paths):05d}.{os.getpid()}.tmp"
        )
        self._writer = array_record_module.ArrayRecordWriter(path, self._options)
        self._tmp_paths.append(path)
        self._counts.append(0)

    def abort(self) -> None:
        """Closes and deletes what was written; the manifest is untouched."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for path in self._tmp_paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self._remove_stage()
        self._closed = True

    def _remove_stage(self) -> None:
        if self._stage != self.directory:
            shutil.rmtree(self._stage, ignore_errors=True)

    def close(self) -> dict[str, Any]:
        """Finalizes shard names and the manifest; returns this split's manifest entry."""
        if self._closed:
            raise RuntimeError("ShardWriter is already closed")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._closed = True
        manifest = self._base_manifest()
        # Replace this split: drop shards of an earlier write of the same split.
        for old in paths.glob(self.directory, f"{self.split}-*-of-*{SHARD_SUFFIX}"):
            paths.remove(old)
        shards = []
        n = len(self._tmp_paths)
        try:
            for k, (tmp, count) in enumerate(zip(self._tmp_paths, self._counts, strict=True)):
                name = shard_name(self.split, k, n)
                final = os.path.join(self.directory, name)
                digest = _sha256(tmp)
                if self._stage == self.directory:
                    os.replace(tmp, final)
                else:
                    paths.upload(tmp, final)
                shards.append({"file": name, "num_records": count, "sha256": digest})
        finally:
            self._remove_stage()
        entry = {
            "num_utterances": self.num_written,
            "num_frames": self._frames,
            "num_speakers": len(self._speakers),
            "features": self.features,
            "noisy": self.noisy,
            "shards": shards,
        }
        manifest["splits"][self.split] = entry
        write_manifest(self.directory, manifest)
        return entry

    def _base_manifest(self) -> dict[str, Any]:
        header = {
            "format": FORMAT,
            "version": VERSION,
            "n_q": self.n_q,
            "codebook_size": self.codebook_size,
            "frame_rate": self.frame_rate,
            "codes_dtype": self._dtype.name,
        }
        if not paths.isfile(os.path.join(self.directory, MANIFEST_NAME)):
            return {**header, "metadata": self.metadata, "splits": {}}
        manifest = read_manifest(self.directory)
        for key in ("n_q", "codebook_size", "frame_rate"):
            if manifest[key] != header[key]:
                raise ShardError(
                    f"{self.directory}/{MANIFEST_NAME}: {key}={manifest[key]} but this "
                    f"writer has {key}={header[key]}; one directory holds one codec's tokens"
                )
        manifest.update(header)
        manifest.setdefault("metadata", {}).update(self.metadata)
        return manifest


# --- reading -------------------------------------------------------------------------


def _local_shard(path: str) -> str:
    """The shard as a local file for ArrayRecord (a gs:// one: gcsfuse or the host cache,
    `gpa_jax.paths.local_path`)."""
    try:
        local = paths.local_path(path)
    except FileNotFoundError:
        raise ShardError(f"{path}: listed in the manifest but missing") from None
    if not os.path.isfile(local):
        raise ShardError(f"{path}: listed in the manifest but missing")
    return local


def _check_utterance(
    utt: Utterance,
    manifest: Mapping[str, Any],
    where: str,
    features: Mapping[str, Any] | None = None,
    noisy: Mapping[str, Any] | None = None,
) -> Utterance:
    """The record against the manifest: n_q, features as the split lists them
    (`features` = `split_features`), one row per codec frame, and a noisy input exactly
    when the split lists one (`noisy` = `split_noisy`)."""
    if utt.codes.shape[0] != manifest["n_q"] or utt.codes.shape[1] < 1:
        raise ShardError(
            f"{where}: codes shape {utt.codes.shape}, manifest says n_q={manifest['n_q']}"
        )
    if (utt.features is None) != (features is None):
        raise ShardError(
            f"{where}: record {'lacks' if utt.features is None else 'carries'} features but "
            f"the manifest's split lists features={features}"
        )
    if utt.features is not None and utt.features.shape != (utt.num_frames, features["dim"]):
        raise ShardError(
            f"{where}: features shape {utt.features.shape}, expected [{utt.num_frames} "
            f"codec frames, dim {features['dim']}]"
        )
    if (utt.noisy is None) != (noisy is None):
        raise ShardError(
            f"{where}: record {'lacks' if utt.noisy is None else 'carries'} a noisy input but "
            f"the manifest's split lists noisy={noisy}"
        )
    return utt


def iter_utterances(directory: str, split: str, verify: bool = False) -> Iterator[Utterance]:
    """Yields a split's utterances in shard order; bad records raise ShardError (file, index)."""
    manifest = read_manifest(directory, verify=verify)
    shard_paths = split_shard_paths(directory, split, manifest)
    features = split_features(manifest, split)
    noisy = split_noisy(manifest, split)
    for shard, path in zip(manifest["splits"][split]["shards"], shard_paths, strict=True):
        reader = array_record_module.ArrayRecordReader(_local_shard(path), _SEQUENTIAL_OPTIONS)
        try:
            count = reader.num_records()
            if count != shard["num_records"]:
                raise ShardError(f"{path}: {count} records, manifest says {shard['num_records']}")
            for start in range(0, count, _READ_CHUNK):
                chunk = reader.read(start, min(start + _READ_CHUNK, count))
                for offset, data in enumerate(chunk):
                    where = f"{path}: record {start + offset}"
                    utt = decode_record(data, where)
                    yield _check_utterance(utt, manifest, where, features, noisy)
        finally:
            reader.close()


class UtteranceSource:
    """Random access to a split's utterances (grain's RandomAccessDataSource protocol).

    `len(source)` and `source[i]` over the split's shards in manifest order; each shard
    is opened lazily with ArrayRecord's random-access options.
    """

    def __init__(self, directory: str, split: str):
        self.directory = directory
        self.split = split
        self.manifest = read_manifest(directory)
        self._paths = split_shard_paths(directory, split, self.manifest)
        self._features = split_features(self.manifest, split)
        self._noisy = split_noisy(self.manifest, split)
        counts = [s["num_records"] for s in self.manifest["splits"][split]["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
        self._readers: dict[int, Any] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} utterances")
        index %= len(self)
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def _reader(self, shard: int) -> Any:
        if shard not in self._readers:
            self._readers[shard] = array_record_module.ArrayRecordReader(
                _local_shard(self._paths[shard]), _RANDOM_ACCESS_OPTIONS
            )
        return self._readers[shard]

    def __getitem__(self, index: int) -> Utterance:
        shard, local = self._locate(int(index))
        where = f"{self._paths[shard]}: record {local}"
        try:
            data = self._reader(shard).read([local])[0]
        except Exception as error:
            raise ShardError(f"{where}: unreadable ({error})") from None
        return _check_utterance(
            decode_record(data, where), self.manifest, where, self._features, self._noisy
        )

    def __getitems__(self, indices: Sequence[int]) -> list[Utterance]:
        return [self[i] for i in indices]

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def __repr__(self) -> str:
        return f"UtteranceSource({self.directory!r}, {self.split!r}, {len(self)} utterances)"
