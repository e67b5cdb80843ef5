"""Acoustic-stage training data: a SeqIO task over the token shards and trainer batches.

    tasks = register_task(config)                 # SeqIO task <namespace>_<variant>
    train_it, eval_it = make_iterators(config)   # the trainer's checkpointable iterators

Examples (planned once per split and seed, with numpy; `plan_pairs`): every utterance of
the split is a target once. Its voice prompt is a crop of ANOTHER utterance of the same
speaker whose transcript differs (so the prompt never contains the target utterance, nor
the same words); candidates shorter than data.prompt_min_frames are skipped; a target
whose speaker has no candidate is dropped and counted ("no_reference"). The prompt is
cropped to data.prompt_max_frames and the target to data.target_max_frames, each at a
random start. Eval examples (data.eval_split) take their prompts from
data.eval_prompt_split when set (default: train; held-out sentences, so again another
utterance and another text). The SeqIO task yields {"prompt_codes": int32 [P, n_q], "target_codes":
int32 [T, n_q]} (frame-major, all RVQ layers).

Trainer rows (length L = train.seq_len), one example per row:

    codes                int32 [L, n_q]  prompt frames, then target frames, then 0
    prompt_mask          1 on the P prompt frames
    decoder_segment_ids  1 on the P + T real frames, 0 = padding
    decoder_positions    0..P+T-1 on real frames
    decoder_loss_weights 1 on the T target frames
    stage                the RVQ layer this row predicts (1..n_q-1, 0-based) on real
                         frames; 0 for the vocoder (which predicts the summed latent)
    decoder_task_ids     per-stage metric id on target frames (stage for the NAR model,
                         1 for the vocoder; names in config.data.task_names)

The NAR stage is drawn per row, uniformly over 1..n_q-1, from (seed, row counter) with a
stateless TF generator, so it differs between epochs and is part of the iterator state.
The pipeline is pure TF (no py_function); its state is the tf.data checkpoint
(`gpa_jax.tasks.pipeline.DataIterator`), saved by the trainer with the model.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import zlib
from typing import Any

import ml_collections
import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from gpa_jax import paths
from gpa_jax.acoustic.rows import ROW_KEYS, TASK_IDS_KEY, token_dir  # noqa: F401 (re-exported)
from gpa_jax.tasks import token_shards
from gpa_jax.tasks.pipeline import DataIterator, shuffled_epochs

# Plan columns.
TGT, TGT_START, TGT_LEN, REF, REF_START, REF_LEN = range(6)


@dataclasses.dataclass
class CodeBank:
    """One split's utterances in memory, sorted by id; codes of utterance u are
    codes[:, start[u] : start[u] + frames[u]]."""

    ids: list[str]
    speakers: list[str]
    texts: list[str]
    frames: np.ndarray  # int64 [U]
    start: np.ndarray  # int64 [U]
    codes: np.ndarray  # int [n_q, total frames]
    manifest: dict[str, Any]

    def utterance_codes(self, u: int) -> np.ndarray:
        return self.codes[:, self.start[u] : self.start[u] + self.frames[u]]

    def index_of(self, utt_id: str) -> int:
        return self.ids.index(utt_id)


def load_code_bank(directory: str, split: str, verify: bool = True) -> CodeBank:
    """Reads a split's token shards (all RVQ layers) into a CodeBank."""
    manifest = token_shards.read_manifest(directory, verify=verify)
    utts = sorted(token_shards.iter_utterances(directory, split), key=lambda u: u.id)
    if not utts:
        raise ValueError(f"{directory}: split {split!r} has no utterances")
    counts = collections.Counter(u.id for u in utts)
    dupes = [i for i, c in counts.items() if c > 1]
    if dupes:
        raise token_shards.ShardError(f"{directory}/{split}: duplicate ids {dupes[:5]}")
    frames = np.array([u.num_frames for u in utts], np.int64)
    return CodeBank(
        ids=[u.id for u in utts],
        speakers=[u.speaker for u in utts],
        texts=[u.text for u in utts],
        frames=frames,
        start=np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64),
        codes=np.concatenate([u.codes for u in utts], axis=1),
        manifest=manifest,
    )


_BANKS: dict[tuple[str, str], CodeBank] = {}
_LOCK = threading.Lock()


def cached_bank(directory: str, split: str, verify: bool = True) -> CodeBank:
    key = (paths.absolute(directory), split)
    with _LOCK:
        if key not in _BANKS:
            _BANKS[key] = load_code_bank(directory, split, verify)
        return _BANKS[key]


def clear_cache() -> None:
    with _LOCK:
        _BANKS.clear()


@dataclasses.dataclass(frozen=True)
class PairSettings:
    prompt_max_frames: int
    prompt_min_frames: int
    target_max_frames: int

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict) -> PairSettings:
        return cls(
            int(data.prompt_max_frames), int(data.prompt_min_frames), int(data.target_max_frames)
        )


def reference_candidates(bank: CodeBank, min_frames: int) -> list[np.ndarray]:
    """Per target u: utterances of u's speaker with another transcript and >= min_frames."""
    by_speaker: dict[str, list[int]] = collections.defaultdict(list)
    for u, s in enumerate(bank.speakers):
        by_speaker[s].append(u)
    out = []
    for u in range(len(bank.ids)):
        same = by_speaker[bank.speakers[u]]
        out.append(
            np.array(
                [
                    r
                    for r in same
                    if r != u and bank.texts[r] != bank.texts[u] and bank.frames[r] >= min_frames
                ],
                np.int64,
            )
        )
    return out


def cross_candidates(bank: CodeBank, ref_bank: CodeBank, min_frames: int) -> list[np.ndarray]:
    """Per target u of `bank`: utterances of `ref_bank` by u's speaker with another text."""
    by_speaker: dict[str, list[int]] = collections.defaultdict(list)
    for r, s in enumerate(ref_bank.speakers):
        if ref_bank.frames[r] >= min_frames:
            by_speaker[s].append(r)
    return [
        np.array([r for r in by_speaker[bank.speakers[u]] if ref_bank.texts[r] != bank.texts[u]],
                 np.int64)
        for u in range(len(bank.ids))
    ]  # fmt: skip


def plan_pairs(
    bank: CodeBank,
    settings: PairSettings,
    seed: int,
    split: str,
    ref_bank: CodeBank | None = None,
) -> tuple[np.ndarray, collections.Counter]:
    """Rows int64 [N, 6] (TGT, TGT_START, TGT_LEN, REF, REF_START, REF_LEN) and counters.

    With `ref_bank` (another split, e.g. train for held-out targets) references are its
    utterances (REF indexes ref_bank), again of the target's speaker with another text.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode())])
    if ref_bank is None:
        candidates = reference_candidates(bank, settings.prompt_min_frames)
    else:
        candidates = cross_candidates(bank, ref_bank, settings.prompt_min_frames)
    bank_for_ref = bank if ref_bank is None else ref_bank
    rows, counts = [], collections.Counter()
    for u in range(len(bank.ids)):
        if not len(candidates[u]):
            counts["no_reference"] += 1
            continue
        ref = int(candidates[u][rng.integers(len(candidates[u]))])
        ref_len = int(min(settings.prompt_max_frames, bank_for_ref.frames[ref]))
        ref_start = int(rng.integers(int(bank_for_ref.frames[ref]) - ref_len + 1))
        tgt_len = int(min(settings.target_max_frames, bank.frames[u]))
        tgt_start = int(rng.integers(int(bank.frames[u]) - tgt_len + 1))
        rows.append((u, tgt_start, tgt_len, ref, ref_start, ref_len))
        counts["examples"] += 1
        counts["target_cropped"] += int(tgt_len < bank.frames[u])
    logging.info("acoustic pairs on %s: %s", split, dict(counts))
    return np.array(rows, np.int64).reshape(-1, 6), counts


class AcousticPairSource(seqio.DataSource):
    """(prompt, target) code pairs of a token-shard split (module docstring)."""

    def __init__(
        self,
        token_dir: str,
        settings: PairSettings,
        splits: tuple[str, ...],
        verify: bool,
        prompt_splits: dict[str, str] | None = None,
    ):
        super().__init__(splits=splits, caching_permitted=False, performs_internal_shuffling=True)
        self.token_dir = token_dir
        # split -> the split its prompts come from (absent: the same split).
        self.prompt_splits = dict(prompt_splits or {})
        self.settings = settings
        self.verify = verify
        self._plans: dict[tuple[str, int], tuple[np.ndarray, collections.Counter]] = {}

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str):
        return [split]

    def bank(self, split: str) -> CodeBank:
        return cached_bank(self.token_dir, split, self.verify)

    def ref_bank(self, split: str) -> CodeBank:
        return self.bank(self.prompt_splits.get(split, split))

    def plan(self, split: str, seed: int | None = None):
        seed = 0 if seed is None else int(seed)
        if (split, seed) not in self._plans:
            ref = self.prompt_splits.get(split)
            self._plans[(split, seed)] = plan_pairs(
                self.bank(split), self.settings, seed, split,
                ref_bank=None if ref in (None, split) else self.bank(ref),
            )  # fmt: skip
        return self._plans[(split, seed)]

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length=None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs
        if split not in self.splits:
            raise ValueError(f"{self.token_dir}: no split {split!r}; splits: {self.splits}")
        rows, _ = self.plan(split, seed)
        if not len(rows):
            raise ValueError(
                f"{self.token_dir}/{split}: no acoustic example (no speaker has two "
                "utterances with different texts)"
            )
        if shard_info is not None and shard_info.num_shards > 1:
            rows = rows[shard_info.index :: shard_info.num_shards]
        bank, ref_bank = self.bank(split), self.ref_bank(split)
        codes = tf.constant(bank.codes.T.astype(np.int32))  # [total, n_q], frame-major
        starts = tf.constant(bank.start)
        if ref_bank is bank:
            ref_codes, ref_starts = codes, starts
        else:
            ref_codes = tf.constant(ref_bank.codes.T.astype(np.int32))
            ref_starts = tf.constant(ref_bank.start)
        if shuffle:  # endless, one permutation per epoch (see shuffled_epochs)
            ds = shuffled_epochs(rows, zlib.crc32(f"acoustic:{seed}".encode()))
        else:
            ds = tf.data.Dataset.from_tensor_slices(tf.constant(rows))

        def assemble(row):
            t0 = starts[row[TGT]] + row[TGT_START]
            r0 = ref_starts[row[REF]] + row[REF_START]
            return {
                "prompt_codes": ref_codes[r0 : r0 + row[REF_LEN]],
                "target_codes": codes[t0 : t0 + row[TGT_LEN]],
            }

        return ds.map(assemble, num_parallel_calls=tf.data.AUTOTUNE)


def task_name(config: ml_collections.ConfigDict) -> str:
    return f"{config.data.namespace}_{config.model.variant}"


def register_task(config: ml_collections.ConfigDict) -> seqio.Task:
    """Registers (or replaces) the SeqIO task of `config` and returns it."""
    directory = token_dir(config)
    manifest = token_shards.read_manifest(directory)
    m = config.model
    if manifest["n_q"] != m.n_q or manifest["codebook_size"] != m.codebook_size:
        raise ValueError(
            f"{directory}: shards have n_q={manifest['n_q']}, codebook_size="
            f"{manifest['codebook_size']}; config.model says n_q={m.n_q}, codebook_size="
            f"{m.codebook_size}"
        )
    source = AcousticPairSource(
        directory,
        PairSettings.from_config(config.data),
        tuple(sorted(manifest["splits"])),
        bool(config.data.verify_checksums),
        prompt_splits=(
            {config.data.eval_split: config.data.eval_prompt_split}
            if config.data.eval_prompt_split
            else None
        ),
    )
    vocab = seqio.PassThroughVocabulary(size=int(m.codebook_size))
    features = {
        k: seqio.Feature(vocab, add_eos=False, dtype=tf.int32, rank=2)
        for k in ("prompt_codes", "target_codes")
    }
    name = task_name(config)
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name, source=source, output_features=features, shuffle_buffer_size=None
    )


def to_rows(
    ds: tf.data.Dataset, seq_len: int, n_q: int, variant: str, seed: int
) -> tf.data.Dataset:
    """Examples -> trainer rows (module docstring), stage drawn per row."""

    def row(index, ex):
        prompt, target = ex["prompt_codes"], ex["target_codes"]
        p, t = tf.shape(prompt)[0], tf.shape(target)[0]
        real = p + t
        tf.debugging.assert_less_equal(real, seq_len, message="prompt + target > train.seq_len")
        codes = tf.pad(tf.concat([prompt, target], 0), [[0, seq_len - real], [0, 0]])
        codes = tf.ensure_shape(codes, [seq_len, n_q])
        idx = tf.range(seq_len)
        seg = tf.cast(idx < real, tf.int32)
        target_mask = tf.cast((idx >= p) & (idx < real), tf.int32)
        if variant == "nar":
            stage = tf.random.stateless_uniform(
                [], seed=tf.stack([tf.constant(seed, tf.int64), index]),
                minval=1, maxval=n_q, dtype=tf.int32,
            )  # fmt: skip
            task = stage
        else:
            stage = tf.constant(0, tf.int32)
            task = tf.constant(1, tf.int32)
        return {
            "codes": codes,
            "prompt_mask": tf.cast(idx < p, tf.int32),
            "decoder_segment_ids": seg,
            "decoder_positions": idx * seg,
            "decoder_loss_weights": target_mask,
            "stage": stage * seg,
            TASK_IDS_KEY: task * target_mask,
        }

    return ds.enumerate().map(row, num_parallel_calls=tf.data.AUTOTUNE)


def make_dataset(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    shuffle: bool,
    batch_size: int | None = None,
    num_epochs: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
) -> tf.data.Dataset:
    """Batched trainer rows of `split` (repeats forever with num_epochs=None)."""
    task = register_task(config)
    ds = task.get_dataset(
        sequence_length=None,
        split=split,
        shuffle=shuffle,
        seed=int(config.seed),
        num_epochs=num_epochs,
        shard_info=shard_info,
    )
    ds = to_rows(
        ds, int(config.train.seq_len), int(config.model.n_q), config.model.variant,
        int(config.seed),
    )  # fmt: skip
    rows = int(batch_size or config.train.batch_size)
    return ds.batch(rows, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_iterators(
    config: ml_collections.ConfigDict,
    *,
    workdir: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[DataIterator, DataIterator | None]:
    """(train, eval) iterators in the trainer's contract; each host reads its own share.

    `workdir` (the run's) is accepted for the trainer's contract; the token shards are
    always named by config.data.token_dir (they belong to the corpus, not to this run).
    """
    from gpa_jax.acoustic.config import check_config

    del workdir
    check_config(config)
    rows = int(config.train.batch_size) // process_count
    shard = seqio.ShardInfo(process_index, process_count) if process_count > 1 else None
    kw = dict(batch_size=rows, shard_info=shard)
    train = DataIterator(make_dataset(config, config.data.train_split, shuffle=True, **kw))
    evals = None
    if config.train.eval_every:
        evals = DataIterator(make_dataset(config, config.data.eval_split, shuffle=False, **kw))
    return train, evals
