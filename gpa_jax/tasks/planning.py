"""Which utterances make each TTS/ASR/VC/SE example: pairing, crops, the length rule, counters.

A split's token shards are loaded once into a `Bank` (metadata, text token ids, the
codes of the RVQ layers the tasks use and, when asked for, the per-frame features of the
continuous audio input, in memory). `plan_task` then decides, with numpy
and a seeded generator, every example of a task as one row of

    (target utterance, reference utterance, reference start frame, reference frames,
     source utterance)            -1 where a task has no such part

and `gpa_jax.tasks.tasks` turns rows into token sequences with TensorFlow ops (so the
tf.data pipeline is pure TF and its iterator can be checkpointed). Pairing rules:

- TTS: every utterance with a non-empty transcript is a target once. Reference: another
  utterance of the same speaker whose text differs from the target's (a same-text
  reference would leak the target's content); none -> dropped ("no_reference").
- ASR: every utterance with a non-empty transcript, source = itself.
- VC: target t (speaker B, text X); source = an utterance with text X by another speaker
  (none -> "no_parallel_source": a non-parallel corpus such as LibriSpeech gives an empty
  VC task, with a warning); reference = as for TTS, B's utterance with another text.
- SE (opt-in: config.tasks.rates.se > 0): every utterance, source = itself, read as its
  noisy version (the token shards' noisy input, `gpa_jax.audio.noise`; the bank must be
  loaded with `noisy=True`); no reference (the noisy input carries the voice).

Crops: the reference is cropped to min(ref_max_frames, its length) frames at a uniformly
random start. Length rule (per example, L = sequence_length, counting every token of the
serialized example including tag, delimiters and EOS): if inputs + targets > L and the
task has a reference and `trim_ref_to_fit`, the reference is shortened (same start) by
just enough frames to fit, but not below ref_min_frames; if it still does not fit the
example is dropped ("too_long"). Targets are never truncated.

Determinism: utterances are ordered by id (not by shard layout) and all choices come
from numpy's default_rng([seed, task index, crc32(split)]): the same seed, shards and
settings give the same examples.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from gpa_jax import paths
from gpa_jax.tasks import token_shards
from gpa_jax.tasks.config import TASK_NAMES, task_rate
from gpa_jax.tasks.vocab import SpeechVocabulary
from gpa_jax.text import tts_prompt_text

TASKS = TASK_NAMES
# Plan row columns.
TGT, REF, REF_START, REF_LEN, SRC = range(5)
PLAN_COLUMNS = 5
# Tokens around the variable parts (tag + delimiters; EOS counts in targets).
TTS_FIXED = 4  # <|tts|> <|ref_audio|> ... <|text|> ... <|tgt_audio|>
ASR_FIXED = 3  # <|asr|> <|src_audio|> ... <|text|>
VC_FIXED = 4  # <|vc|> <|ref_audio|> ... <|src_audio|> ... <|tgt_audio|>
SE_FIXED = 3  # <|se|> <|src_audio|> ... <|tgt_audio|>


@dataclasses.dataclass
class Bank:
    """One split held in memory, utterances sorted by id."""

    ids: list[str]
    speakers: list[str]
    texts: list[str]
    speaker_index: np.ndarray  # int32 [U]: index into sorted unique speakers
    text_index: np.ndarray  # int32 [U]: index into sorted unique texts
    frames: np.ndarray  # int64 [U]
    audio_start: np.ndarray  # int64 [U]: column of utterance u's first frame in `codes`
    codes: np.ndarray  # int16/int32 [layers, total frames]: raw codes of the loaded layers
    text_start: np.ndarray  # int64 [U]
    text_len: np.ndarray  # int64 [U]
    text_ids: np.ndarray  # int32 [total text tokens]: SpeechVocabulary ids
    manifest: dict[str, Any]
    # What TTS prompts spell (config.tasks.tts_text) and its ids, laid out as text_*; the
    # text_* arrays themselves when that is the transcript.
    tts_text: str = "transcript"
    tts_text_start: np.ndarray | None = None
    tts_text_len: np.ndarray | None = None
    tts_text_ids: np.ndarray | None = None
    # float16 [total frames, F] or None: row audio_start[u] + f is utterance u's frame f
    # (the same global frame index as the columns of `codes`); load_bank(features=True).
    # With noisy inputs too, [2 * total frames, F]: row noisy_row(u, f) is the noisy
    # input's frame f (one table, so a batch's frame indices address both).
    features: np.ndarray | None = None
    # SE noisy inputs, load_bank(noisy=True): codes of the loaded layers laid out as
    # `codes` (column audio_start[u] + f is frame f of u's noisy version), SNR and kind.
    noisy_codes: np.ndarray | None = None
    noisy_snr_db: np.ndarray | None = None  # float32 [U]
    noisy_kinds: list[str] | None = None

    @property
    def num_utterances(self) -> int:
        return len(self.ids)

    @property
    def num_layers(self) -> int:
        return int(self.codes.shape[0])

    def utterance_codes(self, u: int, start: int = 0, frames: int | None = None) -> np.ndarray:
        """int32 [layers, frames] of utterance u from frame `start` (default: to its end)."""
        return np.asarray(self.codes[:, self._span(u, start, frames)], np.int32)

    def utterance_features(
        self, u: int, start: int = 0, frames: int | None = None
    ) -> np.ndarray | None:
        """float32 [frames, F] feature rows of utterance u from frame `start`, cropped like
        `utterance_codes`; None when the bank was loaded without features."""
        if self.features is None:
            return None
        return np.asarray(self.features[self._span(u, start, frames)], np.float32)

    @property
    def has_noisy(self) -> bool:
        return self.noisy_codes is not None

    @property
    def total_frames(self) -> int:
        return int(self.codes.shape[1])

    def noisy_row(self, u: Any, f: Any = 0) -> Any:
        """Feature row (global frame index) of frame f of utterance u's noisy input."""
        return self.total_frames + self.audio_start[u] + f

    def utterance_noisy_codes(self, u: int) -> np.ndarray:
        """int32 [layers, frames] of utterance u's noisy input (SE's source)."""
        return np.asarray(self.noisy_codes[:, self._span(u, 0, None)], np.int32)

    def utterance_noisy_features(self, u: int) -> np.ndarray | None:
        """float32 [frames, F] feature rows of utterance u's noisy input; None when the bank
        was loaded without features."""
        if self.features is None:
            return None
        lo = self.total_frames + int(self.audio_start[u])
        return np.asarray(self.features[lo : lo + int(self.frames[u])], np.float32)

    def _span(self, u: int, start: int, frames: int | None) -> slice:
        """Global frame columns of utterance u from `start` (default: to its end)."""
        lo = int(self.audio_start[u]) + start
        return slice(lo, lo + int(self.frames[u] - start if frames is None else frames))


def load_bank(
    directory: str,
    split: str,
    vocab: SpeechVocabulary,
    layers: int,
    verify: bool = True,
    features: bool = False,
    tts_text: str = "transcript",
    noisy: bool = False,
) -> Bank:
    """Reads a split's shards: metadata, text ids, the first `layers` RVQ layers and, with
    `features`, the per-frame features (the shards must have been tokenized with them);
    `tts_text` is the TTS prompts' text frontend (gpa_jax.text.tts_prompt_text); with
    `noisy`, the SE noisy inputs (their codes, and their features with `features`)."""
    manifest = token_shards.read_manifest(directory, verify=verify)
    if noisy and split in manifest["splits"]:
        if token_shards.split_noisy(manifest, split) is None:
            raise ValueError(
                f"{directory}: split {split!r} has no noisy inputs (the se task reads them): "
                "tokenize with data.noisy_inputs=True (launch.tokenize --noisy_inputs)"
            )
    if features and split in manifest["splits"]:
        if token_shards.split_features(manifest, split) is None:
            raise ValueError(
                f"{directory}: split {split!r} has no per-frame audio features (the "
                "continuous audio input needs them): tokenize with "
                "data.token_features=log_mel (launch.tokenize --token_features=log_mel)"
            )
    if layers > manifest["n_q"]:
        raise ValueError(
            f"{directory}: tasks need {layers} RVQ layers, shards have {manifest['n_q']}"
        )
    if manifest["codebook_size"] != vocab.codebook_size:
        raise ValueError(
            f"{directory}: codebook_size {manifest['codebook_size']} but the vocabulary has "
            f"{vocab.codebook_size}"
        )
    utts = sorted(
        (
            (u.id, u.speaker, u.text, np.array(u.codes[:layers]), u.features if features else None,
             u.noisy if noisy else None)
            for u in token_shards.iter_utterances(directory, split, verify=False)
        ),
        key=lambda x: x[0],
    )  # fmt: skip
    ids = [u[0] for u in utts]
    duplicates = [i for i, c in collections.Counter(ids).items() if c > 1]
    if duplicates:
        raise token_shards.ShardError(f"{directory}/{split}: duplicate ids {duplicates[:5]}")
    speakers = [u[1] for u in utts]
    texts = [u[2] for u in utts]
    frames = np.array([u[3].shape[1] for u in utts], dtype=np.int64)
    audio_start = np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64)
    dtype = token_shards.codes_dtype(manifest["codebook_size"])
    codes = (
        np.concatenate([u[3] for u in utts], axis=1).astype(dtype)
        if utts
        else np.zeros((layers, 0), dtype)
    )
    feature_rows = None
    if features:
        dim = int(token_shards.split_features(manifest, split)["dim"])
        # The noisy inputs' rows follow the clean ones (Bank.noisy_row).
        rows = [u[4] for u in utts] + ([u[5].features for u in utts] if noisy else [])
        feature_rows = (
            np.concatenate(rows).astype(np.float16) if utts else np.zeros((0, dim), np.float16)
        )
    noisy_codes = noisy_snr = noisy_kinds = None
    if noisy:
        noisy_codes = (
            np.concatenate([np.array(u[5].codes[:layers]) for u in utts], axis=1).astype(dtype)
            if utts
            else np.zeros((layers, 0), dtype)
        )
        noisy_snr = np.array([u[5].snr_db for u in utts], np.float32)
        noisy_kinds = [u[5].kind for u in utts]
    text_start, text_len, text_ids = _encode_texts(vocab, texts)
    tts_arrays = (text_start, text_len, text_ids)
    if tts_text != "transcript":
        unique = sorted(set(texts))
        spelled = dict(zip(unique, tts_prompt_text(unique, tts_text), strict=True))
        tts_arrays = _encode_texts(vocab, [spelled[t] for t in texts])
    speaker_names = sorted(set(speakers))
    unique_texts = sorted(set(texts))
    speaker_pos = {s: i for i, s in enumerate(speaker_names)}
    text_pos = {t: i for i, t in enumerate(unique_texts)}
    return Bank(
        ids=ids,
        speakers=speakers,
        texts=texts,
        speaker_index=np.array([speaker_pos[s] for s in speakers], dtype=np.int32),
        text_index=np.array([text_pos[t] for t in texts], dtype=np.int32),
        frames=frames,
        audio_start=audio_start,
        codes=codes,
        text_start=text_start,
        text_len=text_len,
        text_ids=text_ids,
        manifest=manifest,
        tts_text=tts_text,
        tts_text_start=tts_arrays[0],
        tts_text_len=tts_arrays[1],
        tts_text_ids=tts_arrays[2],
        features=feature_rows,
        noisy_codes=noisy_codes,
        noisy_snr_db=noisy_snr,
        noisy_kinds=noisy_kinds,
    )


def _encode_texts(vocab: SpeechVocabulary, texts: list[str]):
    """(start int64 [U], len int64 [U], ids int32 [total]) of the texts, concatenated."""
    encoded = [np.asarray(vocab.encode(t), dtype=np.int32) for t in texts]
    length = np.array([len(e) for e in encoded], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    ids = np.concatenate(encoded) if encoded else np.zeros([0], np.int32)
    return start, length, ids.astype(np.int32)


_BANKS: dict[tuple, Bank] = {}
_BANKS_LOCK = threading.Lock()


def cached_bank(
    directory: str,
    split: str,
    vocab: SpeechVocabulary,
    layers: int,
    verify: bool = True,
    features: bool = False,
    tts_text: str = "transcript",
    noisy: bool = False,
) -> Bank:
    """`load_bank`, shared by the tasks of one process (keyed by dir, split, vocab, layers,
    whether features and noisy inputs are loaded and the TTS text frontend)."""
    key = (paths.absolute(directory), split, vocab, layers, bool(features), tts_text, bool(noisy))
    with _BANKS_LOCK:
        if key not in _BANKS:
            _BANKS[key] = load_bank(
                directory, split, vocab, layers, verify, features, tts_text, noisy
            )
        return _BANKS[key]


def clear_bank_cache() -> None:
    with _BANKS_LOCK:
        _BANKS.clear()


@dataclasses.dataclass
class TaskStats:
    """What planning a task on a split kept, dropped (by reason) and trimmed."""

    task: str
    split: str
    candidates: int = 0
    examples: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    ref_trimmed: int = 0
    tokens: int = 0
    loss_tokens: int = 0

    def summary(self) -> str:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"{self.task}/{self.split}: {self.examples} of {self.candidates} kept "
            f"({self.tokens} tokens, {self.loss_tokens} with loss); dropped: {drops}; "
            f"references trimmed to fit: {self.ref_trimmed}"
        )

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dropped"] = dict(self.dropped)
        return d


def voice_crop(bank: Bank, row: np.ndarray, frames: int) -> tuple[int, int, int]:
    """(utterance, start, length) of a planned row's reference crop, widened to `frames`
    where its utterance has them. The acoustic stage's voice prompt may be longer than the
    LM's reference: both are given this crop, and the sampler keeps its first
    ref_max_frames for the LM."""
    utt, start, length = int(row[REF]), int(row[REF_START]), int(row[REF_LEN])
    total = int(bank.frames[utt])
    length = min(max(length, int(frames)), total)
    return utt, min(start, total - length), length


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """The config.tasks fields planning reads (see gpa_jax.tasks.config), plus L."""

    sequence_length: int
    ref_max_frames: int
    ref_min_frames: int
    ref_layers: int
    trim_ref_to_fit: bool
    tts_text: str = "transcript"
    # Whether the banks load the SE noisy inputs: the se task is trained (rates.se > 0).
    noisy_inputs: bool = False

    @classmethod
    def from_config(cls, config: Any, sequence_length: int) -> PlanSettings:
        """`config` = config.tasks; `sequence_length` = config.train.seq_len."""

        if int(sequence_length) < 8:
            raise ValueError(f"sequence length {sequence_length} is too short (need >= 8)")
        return cls(
            sequence_length=int(sequence_length),
            ref_max_frames=int(config.ref_max_frames),
            ref_min_frames=int(config.ref_min_frames),
            ref_layers=int(config.ref_layers),
            trim_ref_to_fit=bool(config.trim_ref_to_fit),
            # Configs saved before the field existed spelled transcripts.
            tts_text=str(config.get("tts_text", "transcript")),
            noisy_inputs=task_rate(config, "se") > 0,
        )


def task_rng(seed: int, task: str, split: str) -> np.random.Generator:
    return np.random.default_rng(
        [int(seed) & 0xFFFFFFFF, TASKS.index(task), zlib.crc32(split.encode())]
    )


class _Index:
    """Look-ups shared by the planners: utterances per speaker and per text."""

    def __init__(self, bank: Bank):
        self.by_speaker: Mapping[int, np.ndarray] = _group(bank.speaker_index)
        self.by_text: Mapping[int, np.ndarray] = _group(bank.text_index)


def _group(keys: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    groups: dict[int, np.ndarray] = {}
    if not len(keys):
        return groups
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    for chunk in np.split(order, bounds):
        groups[int(keys[chunk[0]])] = chunk
    return groups


def _pick_reference(
    bank: Bank, index: _Index, target: int, rng: np.random.Generator, s: PlanSettings
) -> tuple[int, int, int] | None:
    """(utterance, start, frames) of a crop of another same-speaker, other-text utterance."""
    same = index.by_speaker[int(bank.speaker_index[target])]
    candidates = same[bank.text_index[same] != bank.text_index[target]]
    if not len(candidates):
        return None
    ref = int(candidates[rng.integers(len(candidates))])
    n = int(min(s.ref_max_frames, bank.frames[ref]))
    start = int(rng.integers(int(bank.frames[ref]) - n + 1))
    return ref, start, n


def _fit_reference(fixed: int, ref_frames: int, s: PlanSettings, stats: TaskStats) -> int | None:
    """Reference frames after the length rule (`fixed` = all other tokens), None = drop."""
    excess = fixed + ref_frames * s.ref_layers - s.sequence_length
    if excess <= 0:
        return ref_frames
    if s.trim_ref_to_fit:
        shorter = ref_frames - (-(-excess // s.ref_layers))
        if shorter >= min(s.ref_min_frames, ref_frames):
            stats.ref_trimmed += 1
            return shorter
    stats.dropped["too_long"] += 1
    return None


def plan_task(
    task: str, bank: Bank, settings: PlanSettings, seed: int, split: str
) -> tuple[np.ndarray, TaskStats]:
    """Plan rows int64 [N, 5] (columns TGT, REF, REF_START, REF_LEN, SRC) and counters."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")
    if settings.ref_layers > bank.num_layers:
        raise ValueError(
            f"ref_layers={settings.ref_layers} but the bank holds {bank.num_layers} layers"
        )
    if task == "tts" and bank.tts_text != settings.tts_text:
        raise ValueError(
            f"the bank spells TTS prompts as {bank.tts_text!r}, the tasks want "
            f"{settings.tts_text!r}: load it with load_bank(..., tts_text=settings.tts_text)"
        )
    if task == "se" and not bank.has_noisy:
        raise ValueError("the se task reads noisy inputs: load the bank with noisy=True")
    rng = task_rng(seed, task, split)
    index = _Index(bank)
    stats = TaskStats(task=task, split=split)
    rows: list[tuple[int, int, int, int, int]] = []
    L = settings.sequence_length
    for t in range(bank.num_utterances):
        stats.candidates += 1
        text_len = int((bank.tts_text_len if task == "tts" else bank.text_len)[t])
        frames = int(bank.frames[t])
        if task in ("tts", "asr") and text_len == 0:
            stats.dropped["empty_text"] += 1
            continue
        if task == "asr":
            total = ASR_FIXED + frames + text_len + 1
            if total > L:
                stats.dropped["too_long"] += 1
                continue
            rows.append((t, -1, 0, 0, -1))
            stats.tokens += total
            stats.loss_tokens += text_len + 1
            continue
        if task == "se":
            total = SE_FIXED + 2 * frames + 1  # the noisy input, the clean output, <eos>
            if total > L:
                stats.dropped["too_long"] += 1
                continue
            rows.append((t, -1, 0, 0, t))
            stats.tokens += total
            stats.loss_tokens += frames + 1
            continue
        src = -1
        if task == "vc":
            same_text = index.by_text[int(bank.text_index[t])]
            sources = same_text[bank.speaker_index[same_text] != bank.speaker_index[t]]
            if not len(sources):
                stats.dropped["no_parallel_source"] += 1
                continue
        picked = _pick_reference(bank, index, t, rng, settings)
        if picked is None:
            stats.dropped["no_reference"] += 1
            continue
        ref, start, n = picked
        if task == "vc":
            src = int(sources[rng.integers(len(sources))])
            fixed = VC_FIXED + int(bank.frames[src]) + frames + 1
        else:
            fixed = TTS_FIXED + text_len + frames + 1
        n = _fit_reference(fixed, n, settings, stats)
        if n is None:
            continue
        rows.append((t, ref, start, n, src))
        stats.tokens += fixed + n * settings.ref_layers
        stats.loss_tokens += frames + 1
    stats.examples = len(rows)
    plan = np.array(rows, dtype=np.int64).reshape(-1, PLAN_COLUMNS)
    logging.info("planned %s", stats.summary())
    if task == "vc" and not rows and stats.dropped["no_parallel_source"]:
        logging.warning(
            "vc/%s is empty: no sentence is spoken by two speakers (a non-parallel corpus); "
            "the mixture samples the other tasks only",
            split,
        )
    return plan, stats
