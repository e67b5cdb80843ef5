"""What the trainer reads batches from: the iterator contract and the batch sources.

Sources (`config.data.source`):

    "tasks"      the SeqIO task mixture over token shards (gpa_jax.tasks): train
                 iterator on config.tasks.train_split, eval on config.tasks.eval_split,
                 rows of length config.train.seq_len (`TaskData`)
    "cache"      the same mixture's batches, written once to ArrayRecord by
                 `launch.cache_batches` and read with Grain (gpa_jax.data.batch_cache;
                 no TensorFlow on the training host)
    "synthetic"  deterministic random packed batches (`SyntheticLMBatches`; tests,
                 benchmarks, smoke runs without data)

Contract (grain's `DatasetIterator` protocol, so grain and SeqIO pipelines plug in as is):

    batch = next(it)          # dict of numpy arrays, this host's rows of the global batch
    state = it.get_state()    # dict (JSON-serialisable) or bytes
    it.set_state(state)       # the next `next(it)` returns what it returned after `state`

The trainer checkpoints `get_state()` next to the model, so a resumed run sees exactly
the batches it would have seen. Batches carry the train_step.py layout (int32
[rows, length]: decoder_input_tokens, decoder_target_tokens, decoder_segment_ids,
decoder_positions, decoder_loss_weights, optional decoder_prefix_mask) plus

    decoder_task_ids   int32 [rows, length]  task of each token's segment: id i + 1 is
                       task_names(config)[i]; 0 = padding / unknown task

from which the trainer reports loss and accuracy per task. With the continuous audio
input (`config.model.audio_input` other than "tokens"; the tasks and cache sources) batches
also carry

    decoder_audio_features  float32 [rows, length, F]  the per-frame features (the token
                            shards' data.token_features, e.g. the 160-d token-aligned
                            log-mel) of the audio frame decoder_input_tokens holds at
                            each audio INPUT position (reference crops and sources),
                            zeros elsewhere
    decoder_audio_mask      int32 [rows, length]  1 where decoder_audio_features is set

gathered on the host from the split's bank (`gather_audio_features`; the tf.data
pipeline carries only frame indices, so its state and checkpoints do not grow with F).
An eval iterator may carry
`reference_losses: dict[str, float]`, per-task losses of a reference model on the eval
split (the tasks source sets the unigram baseline, `gpa_jax.tasks.baseline`); the trainer
reports them next to the eval losses as eval/<task>/unigram_loss.

Multi-host: each host's iterator yields its own `batch_size // process_count` rows of
every global batch, which `jax.make_array_from_process_local_data` assembles. (The
synthetic source slices one global batch: host p gets rows [p * n, (p + 1) * n). The
tasks source gives each host every process_count-th planned example instead, so hosts
read disjoint examples without building the global batch.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import ml_collections
import numpy as np
from absl import logging

from gpa_jax import paths
from gpa_jax.tasks.config import OPT_IN_TASKS, TASK_NAMES, registered_tasks, resolve_paths

TASK_IDS_KEY = "decoder_task_ids"
AUDIO_FEATURES_KEY = "decoder_audio_features"
AUDIO_MASK_KEY = "decoder_audio_mask"
# What the tasks pipeline emits (gpa_jax.tasks.feature_converter.AUDIO_FRAMES); replaced
# by the two keys above before a batch leaves `AudioFeatureBatches`.
AUDIO_FRAMES_KEY = "decoder_audio_frames"
SOURCES = ("tasks", "cache", "synthetic")
# Stream tags that keep the train and eval batches of one seed disjoint.
_STREAMS = {"train": 0, "eval": 1}


@runtime_checkable
class CheckpointableIterator(Protocol):
    """An iterator of batch dicts whose position can be saved and restored."""

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict[str, Any] | bytes: ...

    def set_state(self, state: dict[str, Any] | bytes) -> None: ...


def task_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Names of task ids 1, 2, ... in `decoder_task_ids` for this config.

    LM configs: the task table `gpa_jax.tasks.config.TASK_NAMES` (the same table fixes
    the tasks' tag tokens, so there is nothing to configure) up to the last task the
    config trains: an opt-in task at rate 0 at its end (SE) adds no id, so an LM without
    it keeps the metrics, shapes and synthetic batches it had before SE existed. A model
    kind whose data section defines its own `task_names` (e.g. the acoustic stage) uses
    that.
    """
    data = config.get("data")
    if data is not None and "task_names" in data:
        return tuple(data.task_names)
    tasks = config.get("tasks")
    trained = (
        registered_tasks(tasks)
        if tasks is not None
        else tuple(t for t in TASK_NAMES if t not in OPT_IN_TASKS)
    )
    return TASK_NAMES[: 1 + max(TASK_NAMES.index(t) for t in trained)]


def task_names_in(task_ids: np.ndarray, task_names: tuple[str, ...] | list[str]) -> list[str]:
    """Sorted names of the tasks present in a `decoder_task_ids` array ('unknown' for bad ids)."""
    names = set()
    for tid in np.unique(np.asarray(task_ids)):
        if tid == 0:
            continue
        names.add(task_names[tid - 1] if 0 < tid <= len(task_names) else f"unknown({tid})")
    return sorted(names)


class SyntheticLMBatches:
    """Deterministic packed batches of a noisy, learnable token process.

    Batch i depends only on (seed, split, i), so the state is the step counter and any
    position can be reached without replaying. Each row packs 1..max_segments segments
    (then padding); a segment has a task (id 1..len(task_names)), a bidirectional prefix
    (prefix mask on, loss weight off) and an output part (loss weight on). Targets follow
    t[j+1] = (5 * t[j] + task_id - 1) mod (V - 1) + 1 with probability 0.8, else a uniform
    draw from 1..V-1, so a model can learn it (the loss falls) while it stays
    non-trivial. Inputs are the targets shifted right within each segment, 0 at each
    segment start (T5X packing). Rows are drawn with a Python loop (layout) and a loop
    over positions vectorised over rows: ~0.2 s for a 256 x 2048 batch.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        seed: int | None = None,
        *,
        split: str = "train",
        process_index: int = 0,
        process_count: int = 1,
        max_segments: int = 3,
    ):
        if split not in _STREAMS:
            raise ValueError(f"split={split!r}; expected one of {sorted(_STREAMS)}")
        self.batch_size = int(config.train.batch_size)
        self.seq_len = int(config.train.seq_len)
        self.vocab_size = int(config.model.vocab_size)
        self.num_tasks = len(task_names(config))
        if self.batch_size % process_count:
            raise ValueError(
                f"train.batch_size={self.batch_size} does not split over {process_count} hosts"
            )
        if self.seq_len < 8 or self.vocab_size < 8:
            raise ValueError("synthetic batches need seq_len >= 8 and vocab_size >= 8")
        self.seed = int(config.seed if seed is None else seed)
        self.split = split
        self.rows = slice(
            process_index * self.batch_size // process_count,
            (process_index + 1) * self.batch_size // process_count,
        )
        self.max_segments = max_segments
        self._step = 0

    def __iter__(self) -> SyntheticLMBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self._step)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step}

    def set_state(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This host's rows of global batch `step` (the global batch is drawn, then sliced)."""
        rng = np.random.default_rng([self.seed, _STREAMS[self.split], step])
        shape = (self.batch_size, self.seq_len)
        segment_ids = np.zeros(shape, np.int32)
        positions = np.zeros(shape, np.int32)
        prefix = np.zeros(shape, np.int32)
        task_ids = np.zeros(shape, np.int32)
        for row in range(self.batch_size):
            self._layout_row(rng, segment_ids[row], positions[row], prefix[row], task_ids[row])
        # The token process, one column at a time over all rows (vectorised over the batch).
        v = self.vocab_size - 1  # targets are 1..V-1; 0 is the shift-in token
        draws = rng.integers(1, self.vocab_size, shape)
        fresh = (rng.random(shape) < 0.2) | (positions == 0)
        targets = np.empty(shape, np.int64)
        targets[:, 0] = draws[:, 0]
        for j in range(1, self.seq_len):
            follow = (5 * targets[:, j - 1] + task_ids[:, j] - 1) % v + 1
            targets[:, j] = np.where(fresh[:, j], draws[:, j], follow)
        real = segment_ids > 0
        targets = np.where(real, targets, 0).astype(np.int32)
        inputs = np.where(positions > 0, np.roll(targets, 1, axis=1), 0).astype(np.int32)
        out = {
            "decoder_input_tokens": inputs,
            "decoder_target_tokens": targets,
            "decoder_segment_ids": segment_ids,
            "decoder_positions": positions,
            "decoder_loss_weights": (real & (prefix == 0)).astype(np.int32),
            "decoder_prefix_mask": prefix,
            TASK_IDS_KEY: task_ids,
        }
        return {k: x[self.rows] for k, x in out.items()}

    def _layout_row(
        self,
        rng: np.random.Generator,
        segment_ids: np.ndarray,
        positions: np.ndarray,
        prefix: np.ndarray,
        task_ids: np.ndarray,
    ) -> None:
        """Fills one row's packing layout in place: segments, positions, prefixes, tasks."""
        length = self.seq_len
        used = int(rng.integers(length * 3 // 4, length + 1))
        min_len = 4
        num = min(int(rng.integers(1, self.max_segments + 1)), used // min_len)
        # num - 1 cut points that keep every segment at least min_len long.
        spare = used - num * min_len
        cuts = np.sort(rng.integers(0, spare + 1, num - 1))
        lengths = np.diff(np.concatenate([[0], cuts, [spare]])) + min_len
        start = 0
        for seg, seg_len in enumerate(lengths.tolist(), start=1):
            span = slice(start, start + seg_len)
            segment_ids[span] = seg
            positions[span] = np.arange(seg_len)
            prefix[start : start + int(rng.integers(1, seg_len // 2 + 1))] = 1
            task_ids[span] = int(rng.integers(1, self.num_tasks + 1))
            start += seg_len


def uses_audio_features(config: ml_collections.ConfigDict) -> bool:
    """Whether the LM reads per-frame audio features: config.model.audio_input != "tokens"
    (configs without the key read tokens)."""
    model = config.get("model")
    return model is not None and str(model.get("audio_input", "tokens")) != "tokens"


def check_feature_rows(config: ml_collections.ConfigDict, token_dir: str, splits) -> None:
    """The shards' feature rows fit config.model.audio_feature_dim (else one clear error
    before any batch is built, rather than a shape error deep inside the model)."""
    from gpa_jax.models.config import LMConfig
    from gpa_jax.tasks import token_shards

    manifest = token_shards.read_manifest(token_dir)
    want = int(config.model.get("audio_feature_dim", LMConfig.audio_feature_dim))
    for split in splits:
        spec = token_shards.split_features(manifest, split)
        if spec is None:
            raise ValueError(
                f"split {split!r} of {token_dir} has no feature rows, but model.audio_input="
                f"{config.model.audio_input!r} reads them: tokenize with data.token_features=log_mel "
                "(or ctc_teacher)"
            )
        if int(spec["dim"]) != want:
            raise ValueError(
                f"split {split!r} of {token_dir} carries {spec['kind']} rows of {spec['dim']} "
                f"values, but model.audio_feature_dim={want}: set model.audio_feature_dim="
                f"{spec['dim']}"
            )


def gather_audio_features(bank: Any, audio_frames: np.ndarray) -> dict[str, np.ndarray]:
    """{decoder_audio_features: float32 [..., F], decoder_audio_mask: int32 [...]} of a
    `decoder_audio_frames` array (1 + the bank's global frame index, 0 = none).

    `bank`: the `gpa_jax.tasks.planning.Bank` the frame indices came from, loaded with
    features=True. Positions without a frame get zeros.
    """
    features = getattr(bank, "features", None)
    if features is None:
        raise ValueError(
            "the bank holds no per-frame audio features: load it with features=True "
            "(planning.load_bank) from shards tokenized with data.token_features=log_mel"
        )
    frames = np.asarray(audio_frames)
    mask = frames > 0
    rows = frames[mask].astype(np.int64) - 1
    if rows.size and rows.max() >= len(features):
        raise ValueError(
            f"decoder_audio_frames points at frame {rows.max()} but the bank has "
            f"{len(features)} frames: the batch comes from another split's bank"
        )
    out = np.zeros(frames.shape + features.shape[1:], np.float32)
    out[mask] = features[rows]
    return {AUDIO_FEATURES_KEY: out, AUDIO_MASK_KEY: mask.astype(np.int32)}


class AudioFeatureBatches:
    """A task iterator whose batches get the audio features of their frame indices.

    Replaces decoder_audio_frames by decoder_audio_features / decoder_audio_mask
    (`gather_audio_features` on `bank`, the iterator's own split). The state is the
    wrapped iterator's, unchanged, so it saves and restores exactly as without features;
    other attributes (save / restore, reference_losses set later) live on the wrapper or
    are the wrapped iterator's.
    """

    def __init__(self, iterator: Any, bank: Any):
        self.iterator = iterator
        self.bank = bank

    def __iter__(self) -> AudioFeatureBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self.iterator))
        if AUDIO_FRAMES_KEY not in batch:
            raise ValueError(
                f"batch has no {AUDIO_FRAMES_KEY}: register the tasks with audio_features=True"
            )
        batch.update(gather_audio_features(self.bank, batch.pop(AUDIO_FRAMES_KEY)))
        return batch

    def get_state(self) -> dict[str, Any] | bytes:
        return self.iterator.get_state()

    def set_state(self, state: dict[str, Any] | bytes) -> None:
        self.iterator.set_state(state)

    def __getattr__(self, name: str) -> Any:
        if name in ("iterator", "bank"):  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.iterator, name)


def task_vocabulary(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None
) -> Any:
    """The SpeechVocabulary of `config.tasks` (text vocabulary + the shards' codebook size).

    Shared by the trainer's task data and everything that reads its checkpoints (sampler,
    evaluation), so both sides always build the same id layout.
    """
    from gpa_jax.tasks import token_shards
    from gpa_jax.tasks.vocab import SpeechVocabulary, make_text_vocabulary

    tc = config.tasks
    token_dir, spm_model = resolve_paths(tc, None if workdir is None else os.fspath(workdir))
    try:
        manifest = token_shards.read_manifest(token_dir, verify=False)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"no token shards for config.tasks.corpus={tc.corpus!r} ({error}); write "
            "them with `python -m launch.tokenize --workdir=W --corpus=...` or set "
            "config.tasks.token_dir"
        ) from None
    if tc.vocab.text == "spm" and not paths.exists(spm_model):
        raise FileNotFoundError(
            f"SentencePiece model {spm_model!r} (config.tasks.vocab.spm_model) does "
            f"not exist; train it with `python -m launch.train_spm --corpus={tc.corpus} "
            f"--vocab_size={tc.vocab.spm_vocab_size} --workdir=W`"
        )
    vocab = SpeechVocabulary(
        make_text_vocabulary(tc.vocab.text, spm_model),
        num_audio_streams=tc.vocab.audio_streams,
        codebook_size=int(manifest["codebook_size"]),
    )
    if vocab.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"the data's vocabulary has {vocab.vocab_size} ids ({vocab}) but "
            f"model.vocab_size={config.model.vocab_size}: raise model.vocab_size"
        )
    ctc_classes = int(config.model.get("ctc_classes", 0))
    if config.model.get("ctc_weight", 0.0) > 0 and 0 < ctc_classes < vocab.audio_offset:
        raise ValueError(
            f"model.ctc_classes={ctc_classes} leaves out text ids: the data's text ids end at "
            f"{vocab.audio_offset} ({vocab}); set it to {vocab.audio_offset} (or 0 = all ids)"
        )
    return vocab


class TaskData:
    """The SeqIO task mixture of `config.tasks` over its token shards, for one host.

    Resolves the token directory and SentencePiece model (defaults under `workdir`,
    gpa_jax.tasks.config), builds the vocabulary (codebook size from the shards'
    manifest), registers the tasks with the length rule L = config.train.seq_len, and
    makes the train / eval iterators (`gpa_jax.tasks.pipeline.DataIterator`, a
    tf.data checkpoint as state: see that module for why tf.data and not grain) and the
    per-task unigram baselines. Registration plans every split (cached per process).
    With the continuous audio input (`uses_audio_features`) the tasks carry frame indices
    and each iterator is an `AudioFeatureBatches` over its split's bank.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str | os.PathLike | None = None,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ):
        from gpa_jax.tasks import register_tasks

        if "tasks" not in config:
            raise ValueError("config.data.source='tasks' needs a config.tasks section")
        tc, trc = config.tasks, config.train
        self.config = config
        self.token_dir, self.spm_model = resolve_paths(
            tc, None if workdir is None else os.fspath(workdir)
        )
        self.vocab = task_vocabulary(config, workdir)
        self.audio_features = uses_audio_features(config)
        self.handle = register_tasks(
            self.token_dir,
            self.vocab,
            tc,
            sequence_length=int(trc.seq_len),
            audio_features=self.audio_features,
        )
        for split in (tc.train_split, tc.eval_split):
            if split not in self.handle.splits:
                raise ValueError(
                    f"{self.token_dir} has no split {split!r} (config.tasks.train_split / "
                    f"eval_split); it has {list(self.handle.splits)}"
                )
        if self.audio_features:
            check_feature_rows(config, self.token_dir, (tc.train_split, tc.eval_split))
        if trc.batch_size % process_count:
            raise ValueError(
                f"train.batch_size={trc.batch_size} does not split over {process_count} hosts"
            )
        self.rows = int(trc.batch_size) // process_count
        self.seed = int(config.seed)
        self.process_index, self.process_count = process_index, process_count

    def iterator(self, split: str) -> Any:
        """A checkpointable iterator over `split`'s mixture, this host's rows, forever."""
        import seqio

        from gpa_jax.tasks import make_iterator

        shard = (
            seqio.ShardInfo(self.process_index, self.process_count)
            if self.process_count > 1
            else None
        )
        logging.info("task data %s:\n%s", split, self.handle.log_summary(split, self.seed))
        batches = make_iterator(
            self.handle.mixture,
            split,
            int(self.config.train.seq_len),
            self.rows,
            seed=self.seed,
            shuffle=True,
            vocab=self.vocab,
            pack=bool(self.config.tasks.pack),
            shard_info=shard,
        )
        if not self.audio_features:
            return batches
        return AudioFeatureBatches(batches, self.bank(split))

    def bank(self, split: str) -> Any:
        """The split's bank the tasks read (with features when the LM reads them)."""
        return next(iter(self.handle.sources.values())).bank(split)

    def unigram_baselines(self) -> dict[str, Any]:
        """Per task: the unigram baseline of the eval split (gpa_jax.tasks.baseline)."""
        from gpa_jax.tasks.baseline import unigram_baselines

        tc = self.config.tasks
        return unigram_baselines(
            self.handle,
            tc.train_split,
            tc.eval_split,
            seed=self.seed,
            vocab_size=int(self.config.model.vocab_size),
        )

    def iterators(self, with_eval: bool) -> tuple[Any, Any]:
        train = self.iterator(self.config.tasks.train_split)
        if not with_eval:
            return train, None
        evals = self.iterator(self.config.tasks.eval_split)
        evals.reference_losses = {
            task: b.eval_cross_entropy
            for task, b in self.unigram_baselines().items()
            if b.eval_tokens
        }
        return train, evals


def cache_dir(config: ml_collections.ConfigDict, workdir: str | os.PathLike | None) -> str:
    """config.data.cache_dir, else <workdir>/batch_cache."""
    from gpa_jax.data import batch_cache

    if config.data.get("cache_dir"):
        return str(config.data.cache_dir)
    if workdir is None:
        raise ValueError("config.data.cache_dir is empty and no work directory was given")
    return batch_cache.default_dir(os.fspath(workdir))


def cache_fingerprint(config: ml_collections.ConfigDict, workdir: str | os.PathLike | None) -> str:
    """The batch-cache fingerprint of `config` over its token shards' manifest."""
    from gpa_jax.data import batch_cache
    from gpa_jax.tasks.token_shards import MANIFEST_NAME

    if "tasks" in config:  # the LM
        token_dir = resolve_paths(config.tasks, None if workdir is None else os.fspath(workdir))[0]
    else:  # an acoustic stage names its shards itself
        token_dir = str(config.data.token_dir)
    path = paths.join(token_dir, MANIFEST_NAME)
    if not paths.isfile(path):
        raise FileNotFoundError(f"no token shards at {token_dir} ({MANIFEST_NAME} missing)")
    return batch_cache.fingerprint(config, paths.read_bytes(path))


def cached_iterators(config, workdir, with_eval: bool, *, process_index: int = 0,
                     process_count: int = 1):  # fmt: skip
    """(train, eval) `CachedBatches` of config.data.source='cache' (no TensorFlow)."""
    from gpa_jax.data.batch_cache import CachedBatches

    kw = dict(
        fingerprint_value=cache_fingerprint(config, workdir),
        process_index=process_index,
        process_count=process_count,
        workers=int(config.data.get("cache_workers", 0)),
    )
    directory = cache_dir(config, workdir)
    train = CachedBatches(directory, "train", **kw)
    return train, (CachedBatches(directory, "eval", **kw) if with_eval else None)


def make_iterators(
    config: ml_collections.ConfigDict,
    *,
    workdir: str | os.PathLike | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[CheckpointableIterator, CheckpointableIterator | None]:
    """(train, eval) iterators for `config.data.source`; eval is None when evals are off.

    `workdir` fills in the tasks source's default paths (gpa_jax.tasks.config).
    """
    source = config.data.source
    with_eval = bool(config.train.eval_every)
    if source == "synthetic":
        kw = dict(process_index=process_index, process_count=process_count)
        train = SyntheticLMBatches(config, split="train", **kw)
        evals = SyntheticLMBatches(config, split="eval", **kw) if with_eval else None
        return train, evals
    if source == "tasks":
        data = TaskData(config, workdir, process_index=process_index, process_count=process_count)
        return data.iterators(with_eval)
    if source == "cache":
        return cached_iterators(config, workdir, with_eval, process_index=process_index,
                                process_count=process_count)  # fmt: skip
    raise ValueError(f"config.data.source={source!r}; supported: {SOURCES}")
