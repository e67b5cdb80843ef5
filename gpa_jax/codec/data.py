"""Codec training data: seeded random fixed-length crops of a TFDS speech corpus (grain).

The waveforms are read once (through `data.corpora.speech_examples`, bad audio skipped and
counted) into memory: the codec only needs audio, and the synthetic corpora (and a few
hours of a public one) fit. The pipeline is then pure index arithmetic on a grain
`MapDataset`, so every batch is a function of (config seed, step):

    source(clips) -> shuffle(seed) -> repeat (reshuffled per epoch) -> random crop(seed)
      -> batch(batch_size, drop_remainder) -> IterDataset [-> mp_prefetch(num_workers)]

A crop is `crop_seconds` long; a shorter clip is zero-padded at the end and its `mask`
marks the real samples (`lengths` counts them), so the loss and the encoder BiLSTM can
ignore the padding. The iterator's `get_state()` / `set_state()` (a small dict) is saved
with the model checkpoint, so a resumed run sees exactly the batches a straight run would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import grain
import ml_collections
import numpy as np


@dataclasses.dataclass
class Clips:
    """Waveforms of one corpus split (float32 mono at the codec rate) and what was skipped."""

    audio: list[np.ndarray]
    ids: list[str]
    skipped: dict[str, int]
    skipped_ids: list[str]


def load_clips(
    corpus: str,
    split: str,
    *,
    data_dir: str | None,
    sample_rate: int,
    max_seconds: float = 600.0,
    limit: int | None = None,
) -> Clips:
    """Reads a split into memory; bad audio is skipped and counted (never fatal)."""
    from data import corpora  # Imported here: pulls in TFDS and registers builders.

    stats = corpora.LoadStats()
    audio, ids = [], []
    for example in corpora.speech_examples(
        corpus,
        split,
        data_dir=data_dir,
        sample_rate=sample_rate,
        max_seconds=max_seconds,
        on_error="skip",
        stats=stats,
    ):
        audio.append(np.asarray(example["audio"], np.float32))
        ids.append(example["id"])
        if limit is not None and len(audio) >= limit:
            break
    if not audio:
        raise ValueError(
            f"{corpus}/{split}: no usable audio (skipped: {dict(stats.skipped)}) in {data_dir}"
        )
    return Clips(audio, ids, dict(stats.skipped), list(stats.skipped_ids))


def random_crop(
    clip: np.ndarray, rng: np.random.Generator, *, crop_samples: int
) -> dict[str, np.ndarray]:
    """A uniformly placed crop of `crop_samples`; short clips are end-padded with zeros."""
    n = len(clip)
    if n >= crop_samples:
        start = int(rng.integers(0, n - crop_samples + 1))
        audio = clip[start : start + crop_samples]
        length = crop_samples
    else:
        audio = np.zeros(crop_samples, np.float32)
        audio[:n] = clip
        length = n
    mask = np.zeros(crop_samples, np.float32)
    mask[:length] = 1.0
    return {
        "audio": np.asarray(audio, np.float32),
        "mask": mask,
        "lengths": np.asarray(length, np.int32),
    }


def crop_dataset(
    clips: Sequence[np.ndarray],
    *,
    crop_samples: int,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
) -> grain.IterDataset:
    """The infinite batched crop pipeline (see the module docstring)."""
    if not clips:
        raise ValueError("no clips to crop")
    if batch_size < 1 or crop_samples < 1:
        raise ValueError(f"batch_size {batch_size} and crop_samples {crop_samples} must be >= 1")
    ds = (
        grain.MapDataset.source(list(clips))
        .shuffle(seed=seed)
        .repeat(None)
        .random_map(partial(random_crop, crop_samples=crop_samples), seed=seed + 1)
        .batch(batch_size, drop_remainder=True)
    )
    # Crops of in-memory clips are cheap: no read threads in-process, a couple per worker.
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if num_workers == 0 else 2))
    if num_workers > 0:
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter_ds


def train_clips(config: ml_collections.ConfigDict, data_dir: str | None) -> Clips:
    """The training split of `config.data.corpus` at the codec rate (bad audio skipped)."""
    d = config.data
    return load_clips(
        d.corpus,
        d.split,
        data_dir=data_dir,
        sample_rate=config.codec.sample_rate,
        max_seconds=d.max_seconds,
    )


# --- the tokenization job ----------------------------------------------------------------


def corpus_splits(corpus: str, data_dir: str | None) -> dict[str, int]:
    """{split: number of examples} of a prepared TFDS speech corpus."""
    import tensorflow_datasets as tfds

    from data import corpora

    corpora.adapter_for(corpus)  # Registers builders defined in this repo.
    builder = tfds.builder(corpus, data_dir=data_dir)
    return {name: int(info.num_examples) for name, info in builder.info.splits.items()}


def split_is_complete(out_dir: str, split: str) -> bool:
    """True when the manifest lists `split` as finished and its shards match their sha256."""
    import hashlib
    import os

    from gpa_jax.tasks import token_shards

    try:
        manifest = token_shards.read_manifest(out_dir)
    except (FileNotFoundError, token_shards.ShardError):
        return False
    entry = manifest["splits"].get(split)
    if entry is None or "bad_audio" not in entry:  # bad_audio is written last.
        return False
    for shard in entry["shards"]:
        path = os.path.join(out_dir, shard["file"])
        if not os.path.isfile(path):
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != shard["sha256"]:
            return False
    return True


def tokenize_split(
    codec: Any,
    corpus: str,
    split: str,
    out_dir: str,
    *,
    data_dir: str | None,
    batch_size: int = 16,
    bucket_frames: int = 25,
    max_seconds: float = 600.0,
    records_per_shard: int = 4096,
    metadata: dict[str, Any] | None = None,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encodes one split into ArrayRecord token shards; bad audio is counted, not fatal.

    Returns the split's manifest entry, with `bad_audio` {count, by_kind, ids} added (its
    presence marks the split complete for `split_is_complete`).
    """
    from tqdm import tqdm

    from data import corpora
    from gpa_jax.codec import api
    from gpa_jax.tasks import token_shards

    stats = corpora.LoadStats()
    frame_rate = codec.sample_rate / codec.hop_length
    bar = tqdm(total=total, desc=f"tokenize {split}", unit="utt", disable=not progress)
    pending: list[dict[str, Any]] = []

    def flush(writer: token_shards.ShardWriter) -> None:
        if not pending:
            return
        wavs = [p["audio"] for p in pending]
        # A short final batch is filled with 1-sample clips: one compile per batch size.
        wavs += [np.zeros(1, np.float32)] * (batch_size - len(wavs))
        codes = api.encode_batch(codec, wavs, codec.sample_rate, bucket_frames=bucket_frames)
        for example, c in zip(pending, codes, strict=False):
            writer.write(example["id"], example["speaker"], example["text"], c)
        pending.clear()
        bar.update(stats.read + sum(stats.skipped.values()) - bar.n)  # skipped ones count too

    with token_shards.ShardWriter(
        out_dir,
        split,
        n_q=codec.n_q,
        codebook_size=codec.codebook_size,
        frame_rate=frame_rate,
        records_per_shard=records_per_shard,
        metadata=metadata,
    ) as writer:
        for example in corpora.speech_examples(
            corpus,
            split,
            data_dir=data_dir,
            sample_rate=codec.sample_rate,
            max_seconds=max_seconds,
            on_error="skip",
            stats=stats,
        ):
            pending.append(example)
            if len(pending) == batch_size:
                flush(writer)
        flush(writer)
    bar.update(stats.read + sum(stats.skipped.values()) - bar.n)
    bar.close()
    manifest = token_shards.read_manifest(out_dir)
    entry = manifest["splits"][split]
    entry["bad_audio"] = {
        "count": int(sum(stats.skipped.values())),
        "by_kind": dict(stats.skipped),
        "ids": list(stats.skipped_ids),
    }
    token_shards.write_manifest(out_dir, manifest)
    return entry


def tokenize_corpus(
    codec: Any,
    corpus: str,
    out_dir: str,
    *,
    data_dir: str | None,
    splits: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Tokenizes every (or the named) split of `corpus`; finished splits are skipped.

    Returns {split: {"status": "written" | "skipped", **manifest entry}}. Tokens of one
    directory must come from one codec: a manifest naming another codec checkpoint or
    step (in `metadata`) is an error rather than a silent mix.
    """
    from gpa_jax.tasks import token_shards

    available = corpus_splits(corpus, data_dir)
    wanted = list(splits) if splits else list(available)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ValueError(f"{corpus} has no split(s) {unknown}; it has {sorted(available)}")
    metadata = dict(metadata or {})
    try:
        existing = token_shards.read_manifest(out_dir).get("metadata", {})
    except FileNotFoundError:
        existing = {}
    for key in ("codec_checkpoint", "codec_step", "corpus"):
        if key in existing and key in metadata and existing[key] != metadata[key]:
            raise ValueError(
                f"{out_dir} holds tokens made with {key}={existing[key]!r}, not "
                f"{metadata[key]!r}: tokenize into another directory or delete it"
            )
    results: dict[str, dict[str, Any]] = {}
    for split in wanted:
        if split_is_complete(out_dir, split):
            entry = token_shards.read_manifest(out_dir)["splits"][split]
            results[split] = {"status": "skipped", **entry}
            continue
        entry = tokenize_split(
            codec,
            corpus,
            split,
            out_dir,
            data_dir=data_dir,
            metadata=metadata,
            total=available[split],
            **kwargs,
        )
        results[split] = {"status": "written", **entry}
    return results


def tokens_dir(workdir: str, corpus: str) -> str:
    """<workdir>/tokens/<corpus>, e.g. runs/demo/tokens/synthetic_speech/tiny."""
    import os

    return os.path.join(workdir, "tokens", *corpus.split("/"))


def tokenize_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    checkpoint_dir: str | None = None,
    corpus: str | None = None,
    splits: Sequence[str] | None = None,
    data_dir: str | None = None,
    max_seconds: float | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """The tokenization job (`launch.tokenize`): restores the latest codec checkpoint of
    `workdir` (or `checkpoint_dir`) and tokenizes `corpus` (default config.data.corpus) from
    `data_dir` (default <workdir>/tfds) into `tokens_dir(workdir, corpus)`."""
    import os

    from absl import logging

    from gpa_jax import paths
    from gpa_jax.codec import train

    checkpoint_dir = os.path.abspath(checkpoint_dir or train.checkpoint_dir(workdir))
    corpus = corpus or config.data.corpus
    codec, step = train.restore_codec(config, checkpoint_dir)
    logging.info("tokenize: codec step %d from %s", step, checkpoint_dir)
    return tokenize_corpus(
        codec,
        corpus,
        tokens_dir(workdir, corpus),
        data_dir=data_dir or paths.tfds_dir(workdir),
        splits=splits,
        metadata={"codec_checkpoint": checkpoint_dir, "codec_step": step, "corpus": corpus},
        max_seconds=config.data.max_seconds if max_seconds is None else max_seconds,
        **kwargs,
    )
