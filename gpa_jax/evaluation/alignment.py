"""How far guided attention's linear prior is from where the words really are.

    report = linear_guide_deviation(teacher, wavs, texts)

Guided attention (`model.guide_weight`, `gpa_jax.training.attention_guide`) pushes the
guided heads of output frame t of T towards text position t/T of the TTS text (and the
transposed relation for ASR), within a Gaussian of width `model.guide_sigma` in
fractions of the text. The CTC content teacher's forced alignment
(`gpa_jax.codec.ctc.forced_alignment`) says which character each codec frame actually
says: per frame the deviation |aligned character - linear centre| is measured in
characters and in fractions of the text (the guide's unit), over every frame of the
utterances given. Frames the alignment gives to blank count as the last character
said before them (the first character before any).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def frame_characters(alignment: np.ndarray) -> np.ndarray:
    """float [T]: the character each frame says (`forced_alignment`'s -1 blanks take the
    last character said before them, 0 before the first)."""
    said = np.maximum.accumulate(np.where(alignment >= 0, alignment, -1))
    return np.maximum(said, 0).astype(np.float64)


def linear_guide_deviation(teacher: Any, wavs: Sequence[np.ndarray], texts: Sequence[str],
                           *, sample_rate: int = 16000) -> dict[str, Any]:  # fmt: skip
    """{utterances, chars_mean / _median / _p90, fraction_mean / _p90, leading_blank,
    trailing_blank} over every frame of the clips (module docstring); `texts` are the
    clips' transcripts (normalised here)."""
    import jax

    from gpa_jax.codec import ctc
    from gpa_jax.codec.teacher import waveform_logits
    from gpa_jax.text import normalize_transcript

    chars, fractions, lead, trail = [], [], [], []
    logits = waveform_logits(teacher, list(wavs), sample_rate=sample_rate)
    for frame_logits, text in zip(logits, texts, strict=True):
        labels = ctc.text_to_ids(normalize_transcript(text))
        if not len(labels):
            continue
        alignment = ctc.forced_alignment(np.asarray(jax.nn.log_softmax(frame_logits, -1)), labels)
        frames = len(alignment)
        said = np.flatnonzero(alignment >= 0)
        lead.append(said[0] / frames)
        trail.append((frames - 1 - said[-1]) / frames)
        linear = (np.arange(frames) + 0.5) / frames * len(labels) - 0.5
        off = np.abs(frame_characters(alignment) - linear)
        chars.append(off)
        fractions.append(off / len(labels))
    if not chars:
        raise ValueError("no utterance with a transcript to align")
    c, f = np.concatenate(chars), np.concatenate(fractions)
    return {
        "utterances": len(chars), "frames": int(len(c)),
        "chars_mean": float(c.mean()), "chars_median": float(np.median(c)),
        "chars_p90": float(np.percentile(c, 90)),
        "fraction_mean": float(f.mean()), "fraction_p90": float(np.percentile(f, 90)),
        "leading_blank": float(np.mean(lead)), "trailing_blank": float(np.mean(trail)),
    }  # fmt: skip
