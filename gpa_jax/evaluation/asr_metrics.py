"""Word and character error rates, computed by jiwer on normalised transcripts.

Two conventions live here:
- `error_rates` scores the LM's own ASR output (normaliser below).
- `judge_wer_report` scores a judge ASR's transcripts of generated speech (TTS / VC) the
  way seed-tts-eval does: Whisper's English normaliser on both sides, and both corpus WER
  and the mean of per-utterance WERs, overall and per voice.

`error_rates` normalisation: both the reference and the hypothesis pass through
`gpa_jax.text.normalize_transcript` (lower-case, punctuation dropped, hyphens to spaces,
diacritics stripped; its docstring states the whole rule) before scoring, so casing and
punctuation never count as errors. Rates are corpus-level (total edits / total reference
words or characters), as jiwer computes them over a list, not means of per-utterance
rates. An empty normalised reference cannot be scored and is an error naming the
utterance; an empty hypothesis is scored (all deletions).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

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


@functools.cache
def _whisper_english() -> Callable[[str], str]:
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as error:
        raise ImportError(
            "judge WER needs Whisper's English normaliser: pip install -e '.[eval]' "
            "(package whisper-normalizer)"
        ) from error
    return EnglishTextNormalizer()


# Name (as written into reports) -> normaliser applied to references and hypotheses.
NORMALIZERS: dict[str, Callable[[], Callable[[str], str]]] = {
    "whisper_english": _whisper_english,
    "normalize_transcript": lambda: normalize_transcript,  # gpa_jax.text, as error_rates
}


def judge_wer_report(
    references: Sequence[str],
    hypotheses: Sequence[str],
    groups: Sequence[str] | None = None,
    normalizer: str = "whisper_english",
) -> dict[str, Any]:
    """Judge WER of `hypotheses`, JSON-able: corpus WER (total edits / total reference
    words) and the mean of per-utterance WERs (seed-tts-eval's figure), overall and per
    group (e.g. the voice of each utterance), after `normalizer` on both sides.

    Keys: corpus_wer, mean_utterance_wer, num_utterances, num_words, normalizer,
    utterance_wer (list, input order), per_group ({group: the same three figures and
    num_words}; empty without `groups`). An empty normalised reference is an error.
    """
    counts = {"references": len(references), "hypotheses": len(hypotheses)}
    if groups is not None:
        counts["groups"] = len(groups)
    if len(set(counts.values())) > 1:
        raise ValueError("lengths differ: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if not references:
        raise ValueError("no utterances to score")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {normalizer!r}; known: {sorted(NORMALIZERS)}")
    norm = NORMALIZERS[normalizer]()
    edits, words = [], []
    for index, (ref, hyp) in enumerate(zip(references, hypotheses, strict=True)):
        ref_n, hyp_n = norm(ref).strip(), norm(hyp or "").strip()
        if not ref_n:
            raise ValueError(f"utterance #{index}: reference {ref!r} is empty after normalisation")
        out = jiwer.process_words(ref_n, hyp_n)
        edits.append(out.substitutions + out.deletions + out.insertions)
        words.append(len(ref_n.split()))

    def figures(rows: Sequence[int]) -> dict[str, Any]:
        return {
            "corpus_wer": sum(edits[i] for i in rows) / sum(words[i] for i in rows),
            "mean_utterance_wer": sum(edits[i] / words[i] for i in rows) / len(rows),
            "num_utterances": len(rows),
            "num_words": sum(words[i] for i in rows),
        }

    report = figures(range(len(edits)))
    report["normalizer"] = normalizer
    report["utterance_wer"] = [e / w for e, w in zip(edits, words, strict=True)]
    members: dict[str, list[int]] = {}
    for index, group in enumerate(() if groups is None else groups):
        members.setdefault(str(group), []).append(index)
    report["per_group"] = {group: figures(rows) for group, rows in sorted(members.items())}
    return report


def wer_report_table(report: dict[str, Any], group_label: str = "voice") -> str:
    """Markdown table of a `judge_wer_report`: one row per group, then the total."""
    from gpa_jax.evaluation.results import markdown_table

    rows = [{group_label: g, **f} for g, f in report["per_group"].items()]
    rows.append({group_label: "all", **report})
    columns = [group_label, "num_utterances", "num_words", "corpus_wer", "mean_utterance_wer"]
    return markdown_table(rows, columns)
