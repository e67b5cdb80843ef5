"""Word and character error rates, computed by jiwer on normalised transcripts.

Normalisation: both the reference and the hypothesis pass through
`gpa_jax.text.normalize_transcript` (lower-case, punctuation dropped, hyphens to spaces,
diacritics stripped; its docstring states the whole rule) before scoring, so casing and
punctuation never count as errors. Rates are corpus-level (total edits / total reference
words or characters), as jiwer computes them over a list, not means of per-utterance
rates. An empty normalised reference cannot be scored and is an error naming the
utterance; an empty hypothesis is scored (all deletions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jiwer

from gpa_jax.text import normalize_transcript


@dataclasses.dataclass(frozen=True)
class ErrorRates:
    wer: float
    cer: float
    num_utterances: int
    num_words: int

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def error_rates(
    references: Sequence[str], hypotheses: Sequence[str], ids: Sequence[str] | None = None
) -> ErrorRates:
    """Corpus-level WER and CER of `hypotheses` against `references` (normalised first)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    for index, ref in enumerate(refs):
        if not ref:
            name = ids[index] if ids is not None else f"#{index}"
            raise ValueError(f"utterance {name}: reference {references[index]!r} is empty after normalisation")
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return ErrorRates(
        wer=float(words.wer),
        cer=float(chars.cer),
        num_utterances=len(refs),
        num_words=sum(len(r.split()) for r in refs),
    )


def utterance_wer(reference: str, hypothesis: str) -> float:
    """WER of one utterance (for per-file manifests); same normalisation."""
    return error_rates([reference], [hypothesis]).wer
