"""What the synthetic corpus contains, decided before any audio exists.

The plan fixes, from the seed alone, which sentences go to which split and which voices
speak each one, so a build is reproducible and tests can check the corpus' structure
without synthesizing. It imports neither TensorFlow nor TFDS (worker processes and the
launcher can use it cheaply).

Layout: `generate_sentences` supplies test sentences first, then validation, then train,
so test and validation stay the same when only the train size changes. train, validation
and test are spoken by seen voices; test_unseen_voice re-uses the test sentences, spoken by
the held-out voices only. Within a split each sentence gets k distinct voices, always those
used least so far (ties broken by a seeded shuffle), so voice counts differ by at most one
and voice pairs vary (useful for voice conversion).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence

from data.sentences import generate_sentences
from gpa_jax.audio.voices import VOICES, Voice
from gpa_jax.text import normalize_transcript

SPLITS = ("train", "validation", "test", "test_unseen_voice")


@dataclasses.dataclass(frozen=True)
class PlannedUtterance:
    """One utterance to synthesize: a sentence in a voice, with its split and ids."""

    id: str
    split: str
    sentence_id: int
    raw_text: str
    text: str
    speaker: str


def utterance_id(split: str, sentence_id: int, speaker: str) -> str:
    return f"{split}-{sentence_id:06d}-{speaker}"


def assign_voices(
    num_sentences: int, speakers: Sequence[str], k: int, rng: random.Random
) -> list[tuple[str, ...]]:
    """k distinct speakers per sentence, balanced: always the least-used so far."""
    if not 1 <= k <= len(speakers):
        raise ValueError(f"need 1 <= voices per sentence <= {len(speakers)}, got {k}")
    counts = dict.fromkeys(speakers, 0)
    position = {s: i for i, s in enumerate(speakers)}
    out = []
    for _ in range(num_sentences):
        ranked = sorted(speakers, key=lambda s: (counts[s], rng.random()))
        chosen = sorted(ranked[:k], key=position.__getitem__)
        for s in chosen:
            counts[s] += 1
        out.append(tuple(chosen))
    return out


def make_plan(
    *,
    num_sentences: Mapping[str, int],
    voices_per_sentence: Mapping[str, int],
    seed: int,
    voices: Sequence[Voice] = VOICES,
) -> dict[str, list[PlannedUtterance]]:
    """Utterances per split (SPLITS order), deterministic in the arguments.

    num_sentences: sentences for "train", "validation" and "test" (test_unseen_voice
        speaks the test sentences). voices_per_sentence: k for each of the four splits.
    """
    for split in ("train", "validation", "test"):
        if num_sentences.get(split, 0) < 1:
            raise ValueError(f"need at least one {split} sentence, got {num_sentences}")
    seen = [v.speaker for v in voices if not v.held_out]
    held_out = [v.speaker for v in voices if v.held_out]
    if not seen or not held_out:
        raise ValueError("need at least one seen and one held-out voice")
    if len({v.speaker for v in voices}) != len(voices):
        raise ValueError("speaker ids must be unique")

    n_test, n_val, n_train = (num_sentences[s] for s in ("test", "validation", "train"))
    sentences = generate_sentences(n_test + n_val + n_train, seed)
    ranges = {
        "test": range(0, n_test),
        "validation": range(n_test, n_test + n_val),
        "train": range(n_test + n_val, n_test + n_val + n_train),
    }
    ranges["test_unseen_voice"] = ranges["test"]

    plan: dict[str, list[PlannedUtterance]] = {}
    for split in SPLITS:
        pool = held_out if split == "test_unseen_voice" else seen
        rng = random.Random(f"synthetic_speech/{seed}/{split}")  # str seeds hash via sha512
        ids = ranges[split]
        assignment = assign_voices(len(ids), pool, voices_per_sentence[split], rng)
        plan[split] = [
            PlannedUtterance(
                id=utterance_id(split, sid, speaker),
                split=split,
                sentence_id=sid,
                raw_text=sentences[sid],
                text=normalize_transcript(sentences[sid]),
                speaker=speaker,
            )
            for sid, speakers in zip(ids, assignment, strict=True)
            for speaker in speakers
        ]
    return plan
