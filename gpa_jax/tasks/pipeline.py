"""Task/mixture -> packed, batched numpy dicts in the LM trainer's layout, and their state.

    register_tasks(token_dir, vocab, config.tasks, sequence_length=L)   # once per process
    batches = make_batches("gpa_mix", "train", sequence_length=L, batch_size=8,
                           seed=config.seed, shuffle=True)
    batch = next(batches)   # int32 [8, L] arrays, keys below

(The trainer builds this through gpa_jax.training.data_iter.make_iterators with
L = config.train.seq_len.)

Keys (gpa_jax.training.train_step's layout): decoder_input_tokens, decoder_target_tokens,
decoder_segment_ids, decoder_positions, decoder_loss_weights, decoder_prefix_mask (seqio's
decoder_causal_attention, renamed here and only here, `PREFIX_RENAME`) and
decoder_task_ids (0 = padding, else `TASK_IDS`: tts=1, asr=2, vc=3, i.e. id i + 1 is
gpa_jax.tasks.config.TASK_NAMES[i], the table the trainer names its metrics by).
Tasks registered with audio_features=True add decoder_audio_frames (1 + the bank frame
index that decoder_input_tokens holds, 0 = none; `feature_converter`), which the trainer's
iterator turns into the features themselves (gpa_jax.training.data_iter).

Per-task metrics in the trainer: with per-token nll [b, l] and weights w =
decoder_loss_weights, for each (name, k) in TASK_IDS.items():
    m = w * (decoder_task_ids == k);  loss[name] = sum(m * nll) / max(sum(m), 1)
(the same masks give per-task accuracy and token counts). Packing mixes tasks within a
row, so this is per token, not per row; decoder_task_ids can stay on the host or be
sharded like the other [batch, length] arrays (the model never reads it).

Iterator state: `make_iterator` returns a `DataIterator` with the trainer's iterator
contract, `get_state()` -> bytes / `set_state(bytes)` (and `save(path)` / `restore(path)`
as files), through tf.train.Checkpoint on the tf.data iterator. The pipeline is pure TF
(no py_function), so a restored iterator yields exactly the batches the saved one would
have. The state holds positions, each task's epoch counter (`shuffled_epochs`: the order
of an epoch is a function of the seed and the epoch, not a saved buffer) and, dominating
it, seqio's packer buffer: the packer groups L
examples and the not yet emitted packed rows of a group are saved (about 8 MB at L = 1024
on the synthetic corpus). It never holds the token data itself. It is tied to the
pipeline's structure: change the mixture, lengths or batch size and old states no longer
restore.

Multi-host: pass shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()) and
the per-host batch size; each host then plans the same examples and keeps every
num_shards-th one (disjoint, deterministic).

Why the tasks pipeline keeps tf.data checkpoints, and where Grain comes in: the tasks
are SeqIO tasks and the mixture, its rate sampling and the packer are seqio's tf.data
ops, and a tf.data iterator checkpoint restores all of them exactly (tested here and
end to end in tests/training/test_task_data.py: N straight steps == N/2, stop, resume,
N/2, every loss equal). The price, measured on the default synthetic corpus at L = 512,
batch 8: the state is ~11.7 MB per host (almost all of it seqio's packing buffer),
restoring it takes ~2 s, and an old state no longer restores after the mixture, lengths
or batch size change. A training host that should import no TensorFlow, or keep a small
state, trains from the batch cache instead (`launch.cache_batches`, then
config.data.source = "cache": gpa_jax.data.batch_cache): this pipeline runs once, its
batches are written to ArrayRecord in order and Grain reads them back, resumable by batch
index. SeqIO stays the definition of the examples either way.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import msgpack
import numpy as np
import seqio
import tensorflow as tf

from gpa_jax.tasks.feature_converter import (
    INPUT_FRAMES,
    TASK_IDS,
    SpeechPrefixLMFeatureConverter,
    feature_lengths,
)
from gpa_jax.tasks.vocab import SpeechVocabulary

PREFIX_RENAME = {"decoder_causal_attention": "decoder_prefix_mask"}
__all__ = [
    "TASK_IDS",
    "PREFIX_RENAME",
    "DataIterator",
    "make_batches",
    "make_dataset",
    "make_iterator",
    "shuffled_epochs",
    "to_trainer_batch",
]


def shuffled_epochs(rows: np.ndarray, seed: int) -> tf.data.Dataset:
    """`rows` as an endless stream of epochs, epoch e in the order of a permutation drawn
    from (seed, e) alone.

    Why not `shuffle(reshuffle_each_iteration=True)`: its epoch counter lives in a seed
    generator outside the iterator, so a pipeline built a second time in one process could
    start at a later epoch's order (the resume test's 1-in-2 failure). Here the epoch index
    is an element of the stream, so an iterator checkpoint (a counter and a position, no
    shuffle buffer) restores the exact order, and every fresh pipeline starts at epoch 0.
    An empty `rows` gives an empty dataset (not an endless wait).
    """
    rows = np.asarray(rows)
    if not len(rows):
        return tf.data.Dataset.from_tensor_slices(tf.constant(rows))
    table = tf.constant(rows)
    indices = tf.range(len(rows), dtype=tf.int64)
    seed64 = tf.constant(int(seed) & 0x7FFFFFFFFFFFFFFF, tf.int64)

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(indices, seed=tf.stack([seed64, e]), alg="philox")
        return tf.data.Dataset.from_tensor_slices(tf.gather(table, order))

    return tf.data.Dataset.counter(dtype=tf.int64).flat_map(epoch)


def to_trainer_batch(features: Mapping[str, Any]) -> dict[str, Any]:
    """Renames seqio's prefix feature to the trainer's (the one place that does it)."""
    return {PREFIX_RENAME.get(k, k): v for k, v in features.items()}


def make_dataset(
    mixture_or_task: str | seqio.Task | seqio.Mixture,
    split: str,
    sequence_length: int,
    batch_size: int,
    seed: int | None,
    shuffle: bool,
    *,
    vocab: SpeechVocabulary | None = None,
    pack: bool = True,
    num_epochs: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """The batched tf.data pipeline (trainer layout); num_epochs=None repeats forever.

    `vocab` defaults to the task's own (its "targets" feature vocabulary). Tasks with
    "input_frames" (registered with audio_features=True) also give decoder_audio_frames.
    """
    provider = (
        seqio.get_mixture_or_task(mixture_or_task)
        if isinstance(mixture_or_task, str)
        else mixture_or_task
    )
    vocab = vocab or provider.output_features["targets"].vocabulary
    audio_frames = INPUT_FRAMES in provider.output_features
    converter = SpeechPrefixLMFeatureConverter.for_vocab(
        vocab, pack=pack, audio_frames=audio_frames
    )
    ds = seqio.get_dataset(
        provider,
        task_feature_lengths=feature_lengths(sequence_length),
        feature_converter=converter,
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=num_epochs,
        shard_info=shard_info,
        seed=seed,
        verbose=False,
    )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(to_trainer_batch).prefetch(tf.data.AUTOTUNE)


class DataIterator:
    """Iterator of numpy batches whose position can be saved and restored.

    Implements the trainer's iterator contract (gpa_jax.training.data_iter, grain's
    DatasetIterator protocol): `get_state()` -> bytes, `set_state(bytes)`. The bytes are
    the files of a tf.train.Checkpoint of the tf.data iterator, packed with msgpack.
    `save(path)` / `restore(path)` write / read the same checkpoint as files.
    """

    def __init__(self, dataset: tf.data.Dataset):
        self.dataset = dataset
        self.tf_iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self.tf_iterator)

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in next(self.tf_iterator).items()}

    def save(self, path_prefix: str) -> str:
        """Writes the iterator state (tf.train.Checkpoint files at path_prefix*)."""
        return self._checkpoint.write(path_prefix)

    def restore(self, path: str) -> None:
        """Restores a state written by `save` of an identically built pipeline."""
        self._checkpoint.read(path).assert_consumed()

    def get_state(self) -> bytes:
        """The iterator position as bytes (see class docstring)."""
        with tempfile.TemporaryDirectory() as tmp:
            prefix = self.save(os.path.join(tmp, "state"))
            files = {p.name: p.read_bytes() for p in pathlib.Path(tmp).iterdir()}
        return msgpack.packb({"prefix": os.path.basename(prefix), "files": files})

    def set_state(self, state: bytes) -> None:
        """Restores a `get_state()` of an identically built pipeline."""
        unpacked = msgpack.unpackb(state)
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in unpacked["files"].items():
                pathlib.Path(tmp, name).write_bytes(data)
            self.restore(os.path.join(tmp, unpacked["prefix"]))


def make_iterator(*args: Any, **kwargs: Any) -> DataIterator:
    """`make_dataset(...)` wrapped in a checkpointable DataIterator."""
    return DataIterator(make_dataset(*args, **kwargs))


def make_batches(
    mixture_or_task: str | seqio.Task | seqio.Mixture,
    split: str,
    sequence_length: int,
    batch_size: int,
    seed: int | None,
    shuffle: bool,
    **kwargs: Any,
) -> Iterator[dict[str, np.ndarray]]:
    """Iterator of numpy dicts in the trainer's layout (see module docstring)."""
    return make_iterator(
        mixture_or_task, split, sequence_length, batch_size, seed, shuffle, **kwargs
    )
