"""SeqIO tasks `<ns>_tts`, `<ns>_asr`, `<ns>_vc` (`<ns>_se`) and the mixture `<ns>_mix`.

Every example is ONE sequence: a task tag, the conditioning segments with their
delimiters (seqio feature "inputs": the loss-free, optionally bidirectional prefix), then
the output segment and <eos> (feature "targets": the only tokens with loss). A<k>(u) are
utterance u's RVQ layer-k ids, Ref = the reference crop (A0 only when ref_layers = 1,
else frame-major [A0 A1 .. A<n-1>] per frame), Text(u) its transcript's text ids:

    tts  inputs  <|tts|> <|ref_audio|> Ref(r) <|text|> Text(t) <|tgt_audio|>
         targets A0(t) <eos>
    asr  inputs  <|asr|> <|src_audio|> A0(t) <|text|>
         targets Text(t) <eos>
    vc   inputs  <|vc|> <|ref_audio|> Ref(r) <|src_audio|> A0(s) <|tgt_audio|>
         targets A0(t) <eos>
    se   inputs  <|se|> <|src_audio|> N0(t) <|tgt_audio|>
         targets A0(t) <eos>

N0(t) is the RVQ-1 ids of utterance t's noisy version (speech enhancement, LauraGPT's
task; the token shards' noisy input, `gpa_jax.audio.noise`). SE is opt-in: registered
only when config.tasks.rates.se > 0, which makes every task's bank load the noisy inputs
(`planning.PlanSettings.noisy_inputs`); with rate 0 (the default) nothing changes.

With `register_tasks(..., audio_features=True)` (the continuous audio input) every example
also has "input_frames", int32 of len(inputs): at each audio input position (the
reference crop's, every layer of a frame-major frame included, and the source's; SE's
noisy source reads the noisy rows, `Bank.noisy_row`) the
bank's global frame index of the frame it holds (a row of `Bank.features`), else
`layout.NO_FRAME` (-1). The feature converter turns it into decoder_audio_frames.

The last prefix token names the output to produce, so generation is "feed inputs, sample
until <eos>". Only start delimiters are used: the next delimiter closes a segment. The
layout follows GPA (AutoArk/GPA `data_utils`: one sequence per task, delimiter tokens
around global/semantic token runs and the text, labels only on the generated part and
the end token), with an explicit task tag added so the task never has to be inferred
from the segment structure.

Who is paired with whom, crops, the length rule and the counters: `gpa_jax.tasks.planning`.
The examples are assembled from an in-memory bank with TensorFlow ops (no py_function),
so the whole input pipeline is checkpointable with tf.train.Checkpoint.

Shuffling is done by the source: a shuffled source is an endless stream of epochs, each a
full permutation of the split's examples drawn from (seed, task, epoch)
(`gpa_jax.tasks.pipeline.shuffled_epochs`), so seqio's repeat never starts over and Tasks
have shuffle_buffer_size=None. An unshuffled source is one epoch in plan order
(evaluation). Per-epoch variety is in the order only: the references, crops and VC
sources are fixed by the seed (re-plan with another seed for different pairings).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from gpa_jax.tasks import layout, planning, token_shards
from gpa_jax.tasks.config import TASK_NAMES, registered_tasks, task_rate, validate_tasks_config
from gpa_jax.tasks.feature_converter import INPUT_FRAMES
from gpa_jax.tasks.pipeline import shuffled_epochs
from gpa_jax.tasks.vocab import SpeechVocabulary

DEFAULT_SEED = 0


def task_name(namespace: str, task: str) -> str:
    return f"{namespace}_{task}"


def mixture_name(namespace: str) -> str:
    return f"{namespace}_mix"


class _BankTensors:
    """A bank's arrays as TF tensors (captured by reference in the dataset's map fn)."""

    def __init__(self, bank: planning.Bank):
        self.codes = tf.constant(bank.codes)
        self.audio_start = tf.constant(bank.audio_start)
        self.frames = tf.constant(bank.frames)
        self.text_ids = tf.constant(bank.text_ids)
        self.text_start = tf.constant(bank.text_start)
        self.text_len = tf.constant(bank.text_len)
        self.tts_text_ids = tf.constant(bank.tts_text_ids)
        self.tts_text_start = tf.constant(bank.tts_text_start)
        self.tts_text_len = tf.constant(bank.tts_text_len)
        self.noisy_codes = None if bank.noisy_codes is None else tf.constant(bank.noisy_codes)
        self.total_frames = tf.constant(bank.total_frames, tf.int64)


_TENSORS: dict[int, tuple[planning.Bank, _BankTensors]] = {}


def _bank_tensors(bank: planning.Bank) -> _BankTensors:
    """One TF copy per bank, shared by the tasks that read it."""
    if id(bank) not in _TENSORS:
        _TENSORS[id(bank)] = (bank, _BankTensors(bank))
    return _TENSORS[id(bank)][1]


def clear_caches() -> None:
    """Forgets loaded banks (e.g. after rewriting a split's shards in this process)."""
    planning.clear_bank_cache()
    _TENSORS.clear()


class SpeechTaskSource(seqio.DataSource):
    """A DataSource that plans one task per split and assembles its examples in TF.

    Supports arbitrary sharding (shard_info takes every num_shards-th planned example,
    for multi-host input) and shuffles internally (see module docstring). With
    `audio_features` the bank holds the per-frame features and examples carry
    "input_frames".
    """

    def __init__(
        self,
        task: str,
        shard_dir: str,
        vocab: SpeechVocabulary,
        settings: planning.PlanSettings,
        splits: Sequence[str],
        verify_checksums: bool = True,
        audio_features: bool = False,
    ):
        super().__init__(splits=splits, caching_permitted=False, performs_internal_shuffling=True)
        self.task = task
        self.shard_dir = shard_dir
        self.vocab = vocab
        self.settings = settings
        self.verify_checksums = verify_checksums
        self.audio_features = bool(audio_features)
        self._plans: dict[tuple[str, int], tuple[np.ndarray, planning.TaskStats]] = {}

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def bank(self, split: str) -> planning.Bank:
        layers = max(1, self.settings.ref_layers)
        return planning.cached_bank(
            self.shard_dir,
            split,
            self.vocab,
            layers,
            verify=self.verify_checksums,
            features=self.audio_features,
            tts_text=self.settings.tts_text,
            noisy=self.settings.noisy_inputs,
        )

    def plan(self, split: str, seed: int | None = None) -> tuple[np.ndarray, planning.TaskStats]:
        """Plan rows and counters for `split` (cached per split and seed)."""
        seed = DEFAULT_SEED if seed is None else int(seed)
        if (split, seed) not in self._plans:
            self._plans[(split, seed)] = planning.plan_task(
                self.task, self.bank(split), self.settings, seed, split
            )
        return self._plans[(split, seed)]

    def stats(self, split: str, seed: int | None = None) -> planning.TaskStats:
        return self.plan(split, seed)[1]

    # num_input_examples stays None on purpose: a known small count makes seqio cache
    # the source in memory, which would freeze the per-epoch order and put the cached
    # examples into every iterator checkpoint. Counts are in `stats`.

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        # Unshuffled: seqio repeats the one epoch; shuffled: the source is endless itself.
        del sequence_length, use_cached, num_epochs
        if split not in self.splits:
            raise ValueError(f"{self.task}: no split {split!r}; splits: {self.splits}")
        rows, _ = self.plan(split, seed)
        if shard_info is not None and shard_info.num_shards > 1:
            rows = rows[shard_info.index :: shard_info.num_shards]
        rows = np.asarray(rows, np.int64)
        if shuffle:
            # A different stream per task, so equal-length tasks do not share permutations.
            task_seed = zlib.crc32(f"{self.task}:{DEFAULT_SEED if seed is None else seed}".encode())
            ds = shuffled_epochs(rows, task_seed)
        else:
            ds = tf.data.Dataset.from_tensor_slices(tf.constant(rows, dtype=tf.int64))
        assemble = functools.partial(
            _ASSEMBLERS[self.task],
            t=_bank_tensors(self.bank(split)),
            vocab=self.vocab,
            s=self.settings,
            frames=self.audio_features,
        )
        return ds.map(assemble, num_parallel_calls=tf.data.AUTOTUNE)


def _audio(t: _BankTensors, vocab: SpeechVocabulary, u: tf.Tensor) -> tf.Tensor:
    """RVQ-1 ids of utterance u."""
    start = t.audio_start[u]
    codes = t.codes[0, start : start + t.frames[u]]
    return tf.cast(codes, tf.int32) + vocab.audio_range(0)[0]


def _noisy_audio(t: _BankTensors, vocab: SpeechVocabulary, u: tf.Tensor) -> tf.Tensor:
    """RVQ-1 ids of utterance u's noisy version (SE's source)."""
    start = t.audio_start[u]
    codes = t.noisy_codes[0, start : start + t.frames[u]]
    return tf.cast(codes, tf.int32) + vocab.audio_range(0)[0]


def _noisy_audio_frames(t: _BankTensors, u: tf.Tensor) -> tf.Tensor:
    """Feature rows of utterance u's noisy version (`planning.Bank.noisy_row`)."""
    start = t.total_frames + t.audio_start[u]
    return tf.range(start, start + t.frames[u], dtype=tf.int64)


def _reference(
    t: _BankTensors, vocab: SpeechVocabulary, s: planning.PlanSettings, row: tf.Tensor
) -> tf.Tensor:
    """Reference crop ids, frame-major over the first ref_layers layers."""
    start = t.audio_start[row[planning.REF]] + row[planning.REF_START]
    block = t.codes[: s.ref_layers, start : start + row[planning.REF_LEN]]
    return layout.reference_ids(block, vocab, tf, layers=s.ref_layers)


def _text(t: _BankTensors, u: tf.Tensor) -> tf.Tensor:
    start = t.text_start[u]
    return t.text_ids[start : start + t.text_len[u]]


def _tts_text(t: _BankTensors, u: tf.Tensor) -> tf.Tensor:
    """What the TTS prompt spells for utterance u (config.tasks.tts_text)."""
    start = t.tts_text_start[u]
    return t.tts_text_ids[start : start + t.tts_text_len[u]]


def _audio_frames(t: _BankTensors, u: tf.Tensor) -> tf.Tensor:
    """Global frame indices (bank rows) of utterance u, the frames `_audio` reads."""
    return tf.range(t.audio_start[u], t.audio_start[u] + t.frames[u], dtype=tf.int64)


def _reference_frames(t: _BankTensors, row: tf.Tensor) -> tf.Tensor:
    """Global frame indices of the reference crop, one per frame (`_reference`'s frames)."""
    start = t.audio_start[row[planning.REF]] + row[planning.REF_START]
    return tf.range(start, start + row[planning.REF_LEN], dtype=tf.int64)


# The segment order lives in gpa_jax.tasks.layout, shared with the sampler.


def _example(task, vocab, s, frames, targets, *, text=None, reference=None, source=None):
    """One example from its parts; `reference` / `source` are (ids, frame indices) pairs,
    the frame indices becoming "input_frames" when `frames` (audio features) is on."""
    pieces = layout.input_segments(
        task,
        vocab,
        text=text,
        reference=None if reference is None else reference[0],
        source=None if source is None else source[0],
    )
    example = {
        "inputs": layout.join(pieces, tf),
        "targets": layout.join(layout.target_segments(targets), tf),
    }
    if frames:
        frame_pieces = layout.input_frame_segments(
            task,
            vocab,
            text=text,
            reference=None if reference is None else reference[1],
            source=None if source is None else source[1],
            ref_layers=s.ref_layers,
            xp=tf,
        )
        example[INPUT_FRAMES] = layout.join(frame_pieces, tf)
    return example


def _assemble_tts(row, *, t, vocab, s, frames=False) -> dict[str, tf.Tensor]:
    reference = (_reference(t, vocab, s, row), _reference_frames(t, row))
    target = _audio(t, vocab, row[planning.TGT])
    text = _tts_text(t, row[planning.TGT])
    return _example("tts", vocab, s, frames, target, text=text, reference=reference)


def _assemble_asr(row, *, t, vocab, s, frames=False) -> dict[str, tf.Tensor]:
    u = row[planning.TGT]
    source = (_audio(t, vocab, u), _audio_frames(t, u))
    return _example("asr", vocab, s, frames, _text(t, u), source=source)


def _assemble_vc(row, *, t, vocab, s, frames=False) -> dict[str, tf.Tensor]:
    reference = (_reference(t, vocab, s, row), _reference_frames(t, row))
    source = (_audio(t, vocab, row[planning.SRC]), _audio_frames(t, row[planning.SRC]))
    target = _audio(t, vocab, row[planning.TGT])
    return _example("vc", vocab, s, frames, target, reference=reference, source=source)


def _assemble_se(row, *, t, vocab, s, frames=False) -> dict[str, tf.Tensor]:
    u = row[planning.SRC]
    source = (_noisy_audio(t, vocab, u), _noisy_audio_frames(t, u))
    target = _audio(t, vocab, row[planning.TGT])
    return _example("se", vocab, s, frames, target, source=source)


_ASSEMBLERS = {"tts": _assemble_tts, "asr": _assemble_asr, "vc": _assemble_vc, "se": _assemble_se}


@dataclasses.dataclass
class SpeechTasks:
    """Handle returned by register_tasks: registry names and access to plans/counters."""

    namespace: str
    task_names: dict[str, str]  # "tts" -> "<ns>_tts"
    mixture: str
    sources: dict[str, SpeechTaskSource]
    splits: tuple[str, ...]

    def stats(self, split: str, seed: int | None = None) -> dict[str, planning.TaskStats]:
        """Per-task counters (kept, dropped by reason, trimmed) for a split and seed."""
        return {task: src.stats(split, seed) for task, src in self.sources.items()}

    def log_summary(self, split: str, seed: int | None = None) -> str:
        text = "\n".join(s.summary() for s in self.stats(split, seed).values())
        logging.info("task statistics:\n%s", text)
        return text


def register_tasks(
    shard_dir: str,
    vocab: SpeechVocabulary,
    config: Any,
    *,
    sequence_length: int,
    namespace: str | None = None,
    audio_features: bool = False,
) -> SpeechTasks:
    """Registers <ns>_tts/_asr/_vc (and <ns>_se when config.rates.se > 0: opt-in, it needs
    shards with noisy inputs) and the mixture <ns>_mix (rates from config.rates).

    `audio_features` (the continuous audio input): banks load the shards' per-frame
    features and every example also carries "input_frames" (module docstring), declared
    in the tasks' output features so the mixture keeps it; off, nothing changes.

    `config` is the `config.tasks` section (gpa_jax.tasks.config.tasks_config);
    `sequence_length` is the packed row length L (config.train.seq_len), which the length
    rule bounds every example by. Calling it
    again with the same namespace replaces the earlier registrations (idempotent), so tests
    can register tmp directories under their own namespaces. Nothing is read until a
    dataset or counters are asked for.
    """
    validate_tasks_config(config)
    namespace = namespace or config.namespace
    manifest = token_shards.read_manifest(shard_dir)
    if manifest["codebook_size"] != vocab.codebook_size:
        raise ValueError(
            f"{shard_dir}: codebook_size {manifest['codebook_size']} != vocabulary's "
            f"{vocab.codebook_size}"
        )
    if config.ref_layers > min(manifest["n_q"], vocab.num_audio_streams):
        raise ValueError(
            f"ref_layers={config.ref_layers} exceeds the shards' n_q={manifest['n_q']} or "
            f"the vocabulary's {vocab.num_audio_streams} audio streams"
        )
    splits = tuple(sorted(manifest["splits"]))
    settings = planning.PlanSettings.from_config(config, sequence_length)
    if settings.noisy_inputs:
        lacking = [s for s in splits if token_shards.split_noisy(manifest, s) is None]
        if lacking:
            raise ValueError(
                f"tasks.rates.se={task_rate(config, 'se')} but split(s) {lacking} of "
                f"{shard_dir} have no noisy inputs: tokenize with data.noisy_inputs=True "
                "(launch.tokenize --noisy_inputs)"
            )
    features = {
        "inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
        "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
    }
    if audio_features:
        # Frame indices, not ids: a pass-through "vocabulary" (seqio.Mixture keeps only
        # declared output features).
        features[INPUT_FRAMES] = seqio.Feature(
            seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.int32
        )
    names, sources = {}, {}
    for task in TASK_NAMES:
        if task not in registered_tasks(config):  # an opt-in task at rate 0
            seqio.TaskRegistry.remove(task_name(namespace, task))
            continue
        name = task_name(namespace, task)
        source = SpeechTaskSource(
            task,
            shard_dir,
            vocab,
            settings,
            splits,
            bool(config.verify_checksums),
            audio_features=audio_features,
        )
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name, source=source, output_features=features, shuffle_buffer_size=None
        )
        names[task], sources[task] = name, source
    mix = mixture_name(namespace)
    seqio.MixtureRegistry.remove(mix)
    rated = [(names[t], task_rate(config, t)) for t in names if task_rate(config, t) > 0]
    seqio.MixtureRegistry.add(
        mix,
        rated,
        # An empty task (VC on a non-parallel corpus) is skipped instead of ending the mix.
        sample_fn=functools.partial(
            tf.data.Dataset.sample_from_datasets, stop_on_empty_dataset=False
        ),
    )
    return SpeechTasks(namespace, names, mix, sources, splits)
