"""Packed, mixed LM batches cached once to ArrayRecord, read back with Grain.

The SeqIO tasks and mixture stay the definition of the examples (gpa_jax.tasks); the
cache job (`launch.cache_batches`, on a host with TensorFlow) runs that pipeline once and
writes every batch a run will read, in order:

    <cache>/batch_cache.json                   manifest (below)
    <cache>/<split>-<k>-of-<n>.array_record    one record per ROW of a global batch

`train` holds `train.num_steps` global batches, `eval` the `train.eval_steps` batches the
trainer re-reads at every evaluation. A record is a msgpack map {key: [dtype, shape,
bytes]} of one row of every batch array. The manifest holds the format version, the
fingerprint of what defined the batches (`fingerprint`: config.tasks, seed, lengths,
batch size, audio input, and the token shards' manifest), per split the batch count,
global batch size and files, and the eval split's unigram reference losses.

Training (`config.data.source = "cache"`) reads it with `CachedBatches`: a Grain
`MapDataset` over the records; batch k of host p is the rows [k * B + p * n, k * B +
(p + 1) * n) of the global batch (n = B / process_count), so hosts read disjoint rows
and the same global batches the single-host run reads. Grain prefetches with threads,
or worker processes (`config.data.cache_workers`). The resume state is Grain's iterator
state (a few integers: the next batch index), not a pipeline checkpoint; a config whose
fingerprint differs from the cache's is an error naming both, never a silent change.
Nothing here imports TensorFlow or seqio.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
import numpy as np

from gpa_jax import config_utils, paths
from gpa_jax.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "batch_cache.json"
ROWS_PER_SHARD = 4096
_WRITER_OPTIONS = "group_size:1"  # random access to single rows
# config.data fields that say how batches are read, not what they hold.
_READ_OPTIONS = ("source", "cache_dir", "cache_workers")
# Model fields that change the rows: the LM's audio input (feature rows), an acoustic
# stage's variant and RVQ depth (stage draws).
_ROW_SHAPING = ("audio_input", "variant", "n_q")


class CacheError(UserError, ValueError):
    """A batch cache that is missing, incomplete or made for another config (user error)."""


def default_dir(workdir: str) -> str:
    return paths.join(workdir, "batch_cache")


def fingerprint(config: Any, token_manifest: bytes) -> str:
    """sha256 of what defines the cached batches (module docstring): the LM's tasks or an
    acoustic stage's data section, seed, lengths, batch size, the model fields that shape
    rows, and the token shards' manifest."""

    def plain(section):
        return section.to_dict() if hasattr(section, "to_dict") else section

    data = {k: v for k, v in plain(config.data).items() if k not in _READ_OPTIONS}
    what = {
        "tasks": plain(config.get("tasks")),
        "data": data,
        "seed": int(config.seed),
        "seq_len": int(config.train.seq_len),
        "batch_size": int(config.train.batch_size),
        "model": {k: plain(config.model.get(k)) for k in _ROW_SHAPING},
        "token_manifest": hashlib.sha256(token_manifest).hexdigest(),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _encode_row(batch: Mapping[str, np.ndarray], i: int) -> bytes:
    return msgpack.packb(
        {
            k: [str(v.dtype), list(v.shape[1:]), np.ascontiguousarray(v[i]).tobytes()]
            for k, v in batch.items()
        }  # fmt: skip
    )


def _decode_row(record: bytes) -> dict[str, np.ndarray]:
    return {
        k: np.frombuffer(data, dtype=dtype).reshape(shape)
        for k, (dtype, shape, data) in msgpack.unpackb(record).items()
    }


def write_split(
    directory: str, split: str, batches: Iterable[Mapping[str, np.ndarray]], num_batches: int
) -> dict[str, Any]:
    """Writes the first `num_batches` global batches of `batches`; returns the split's
    manifest entry. Files appear under their final names only when complete (a gs://
    `directory` gets them uploaded from a local staging folder)."""
    with paths.staging_dir(directory) as stage:
        entry = _write_split_files(stage, split, batches, num_batches)
        if stage != os.fspath(directory):
            for name in entry["files"]:
                paths.upload(os.path.join(stage, name), paths.join(directory, name))
    return entry


def _write_split_files(directory, split, batches, num_batches) -> dict[str, Any]:
    from array_record.python import array_record_module

    tmp_paths: list[str] = []
    writer, rows, batch_size, keys = None, 0, None, None
    try:
        for k, batch in zip(range(num_batches), batches, strict=False):
            batch = {key: np.asarray(v) for key, v in batch.items()}
            size = len(next(iter(batch.values())))
            if batch_size is None:
                batch_size = size
                keys = {key: [str(v.dtype), list(v.shape[1:])] for key, v in batch.items()}
            if size != batch_size:
                raise ValueError(f"batch {k} has {size} rows, the first had {batch_size}")
            for i in range(size):
                if rows % ROWS_PER_SHARD == 0:
                    if writer is not None:
                        writer.close()
                    tmp_paths.append(os.path.join(directory, f".{split}-{len(tmp_paths):05d}.tmp"))
                    writer = array_record_module.ArrayRecordWriter(tmp_paths[-1], _WRITER_OPTIONS)
                writer.write(_encode_row(batch, i))
                rows += 1
        if writer is not None:
            writer.close()
            writer = None
        written = rows // batch_size if batch_size else 0
        if written != num_batches:
            raise ValueError(f"the {split} pipeline ended after {written} of {num_batches} batches")
        files = []
        for j, tmp in enumerate(tmp_paths):
            name = f"{split}-{j:05d}-of-{len(tmp_paths):05d}.array_record"
            os.replace(tmp, os.path.join(directory, name))
            files.append(name)
    except BaseException:
        if writer is not None:
            writer.close()
        for tmp in tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    return {"batches": num_batches, "batch_size": batch_size, "keys": keys, "files": files}


def write_manifest(directory: str, value: Mapping[str, Any]) -> None:
    paths.atomic_write_json(
        paths.join(directory, MANIFEST), {"format_version": FORMAT_VERSION, **value}
    )


def read_manifest(directory: str) -> dict[str, Any]:
    path = paths.join(directory, MANIFEST)
    if not paths.isfile(path):
        raise CacheError(
            f"no batch cache at {directory} ({MANIFEST} missing): write it with "
            "python -m launch.cache_batches --config=... --workdir=..."
        )
    manifest = paths.read_json(path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path}: format version {manifest.get('format_version')}, "
                         f"this code reads {FORMAT_VERSION}: re-cache")  # fmt: skip
    return manifest


def check_fingerprint(directory: str, expected: str) -> dict[str, Any]:
    """The manifest, after checking that the cache was made for this config."""
    manifest = read_manifest(directory)
    if manifest["fingerprint"] != expected:
        raise CacheError(
            f"the batch cache at {directory} was made for another mixture, seed, lengths, "
            f"batch size or token shards (fingerprint {manifest['fingerprint'][:12]}, this "
            f"config's {expected[:12]}): re-cache with python -m launch.cache_batches"
        )
    return manifest


class _ReadBatch:
    """Batch index -> this host's rows of that global batch (a picklable Grain map)."""

    def __init__(self, files: list[str], batch_size: int, first: int, rows: int):
        self.files, self.batch_size, self.first, self.rows = files, batch_size, first, rows
        self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}  # worker processes open their own

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        import grain

        if self._source is None:
            self._source = grain.sources.ArrayRecordDataSource(self.files)
        start = int(k) * self.batch_size + self.first
        rows = [_decode_row(self._source[i]) for i in range(start, start + self.rows)]
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


class CachedBatches:
    """This host's rows of a cached split's global batches, in order (the trainer's
    iterator contract; state = Grain's iterator state)."""

    def __init__(
        self,
        directory: str,
        split: str,
        *,
        fingerprint_value: str,
        process_index: int = 0,
        process_count: int = 1,
        workers: int = 0,
        prefetch: int = 8,
    ):
        import grain

        manifest = check_fingerprint(directory, fingerprint_value)
        if split not in manifest["splits"]:
            raise CacheError(f"the batch cache at {directory} has no {split!r} batches")
        entry = manifest["splits"][split]
        batch_size = int(entry["batch_size"])
        if batch_size % process_count:
            raise CacheError(f"cached batches of {batch_size} rows do not split over "
                             f"{process_count} hosts")  # fmt: skip
        rows = batch_size // process_count
        self.directory, self.split = directory, split
        self.num_batches = int(entry["batches"])
        self.reference_losses = (
            dict(manifest.get("reference_losses") or {}) if split == "eval" else {}
        )
        # ArrayRecord reads local files: gs:// shards via a gcsfuse mount or the host cache.
        files = [paths.local_path(paths.join(directory, f)) for f in entry["files"]]
        read = _ReadBatch(files, batch_size, process_index * rows, rows)
        dataset = (
            grain.MapDataset.range(self.num_batches)
            .map(read)
            .to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch))
        )
        if workers:
            config_utils.ensure_flags_parsed()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
        self._iterator = iter(dataset)

    def __iter__(self) -> CachedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            return next(self._iterator)
        except StopIteration:
            raise CacheError(
                f"the batch cache at {self.directory} holds {self.num_batches} {self.split} "
                "batches and the run asked for more (more train.num_steps or eval_steps than "
                "it was made for): re-cache with python -m launch.cache_batches"
            ) from None

    def get_state(self) -> dict[str, Any]:
        return self._iterator.get_state()

    def set_state(self, state: dict[str, Any] | bytes) -> None:
        if not isinstance(state, dict):
            raise CacheError(
                "the checkpoint's data position was saved by another data source (a tf.data "
                "state): resume with the source it was trained with, or start a new work dir"
            )
        self._iterator.set_state(state)
