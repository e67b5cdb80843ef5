"""What the trainer reads batches from: the iterator contract and a synthetic source.

Contract (grain's `DatasetIterator` protocol, so grain and SeqIO pipelines plug in as is):

    batch = next(it)          # dict of numpy arrays, this host's rows of the global batch
    state = it.get_state()    # dict (JSON-serialisable) or bytes
    it.set_state(state)       # the next `next(it)` returns what it returned after `state`

The trainer checkpoints `get_state()` next to the model, so a resumed run sees exactly
the batches it would have seen. Batches carry the train_step.py layout (int32
[rows, length]: decoder_input_tokens, decoder_target_tokens, decoder_segment_ids,
decoder_positions, decoder_loss_weights, optional decoder_prefix_mask) plus

    decoder_task_ids   int32 [rows, length]  task of each token's segment: id i + 1 is
                       config.data.task_names[i]; 0 = padding / unknown task

from which the trainer reports loss and accuracy per task. Multi-host: each host's
iterator yields its own `batch_size // process_count` rows (host p gets rows
[p * n, (p + 1) * n) of the global batch), which `jax.make_array_from_process_local_data`
assembles.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import ml_collections
import numpy as np

TASK_IDS_KEY = "decoder_task_ids"
# Stream tags that keep the train and eval batches of one seed disjoint.
_STREAMS = {"train": 0, "eval": 1}


@runtime_checkable
class CheckpointableIterator(Protocol):
    """An iterator of batch dicts whose position can be saved and restored."""

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict[str, Any] | bytes: ...

    def set_state(self, state: dict[str, Any] | bytes) -> None: ...


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
        self.num_tasks = len(config.data.task_names)
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


def make_iterators(
    config: ml_collections.ConfigDict, *, process_index: int = 0, process_count: int = 1
) -> tuple[CheckpointableIterator, CheckpointableIterator | None]:
    """(train, eval) iterators for `config.data.source`; eval is None when evals are off."""
    source = config.data.source
    if source == "synthetic":
        kw = dict(process_index=process_index, process_count=process_count)
        train = SyntheticLMBatches(config, split="train", **kw)
        evals = SyntheticLMBatches(config, split="eval", **kw) if config.train.eval_every else None
        return train, evals
    raise ValueError(
        f"config.data.source={source!r}; supported: 'synthetic' (the SeqIO task mixture "
        "plugs in here through the same get_state/set_state iterator contract)"
    )
