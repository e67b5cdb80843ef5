"""TTS on English outside the corpus grammar: does the LM read text, or recall sentences?

The synthetic corpus is drawn from a closed grammar of about a thousand words, so a TTS
judge-WER on its `test` split (unseen sentences, seen words) cannot tell reading from
recall. `SENTENCES` are everyday English sentences written for this check; each has words
the grammar never produces (tests/evaluation/test_open_text.py checks that against a large
sample of the grammar). The evaluation speaks each with a reference clip of the split,
judges it like the corpus TTS, and sets it beside the same sentence rendered by the
reference speaker's own voice engine (the corpus voices are flite / espeak-ng voices, so
that rendering is what a recording of the sentence would be), plus the share of words
never seen in the training transcripts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from gpa_jax.text import normalize_transcript

SENTENCES = (
    "The weather forecast promised sunshine, but heavy rain arrived before lunch.",
    "Please remember to charge your phone before the meeting tomorrow.",
    "My grandmother keeps her recipes in a small wooden box.",
    "The museum will be closed for repairs until next spring.",
    "Several volunteers cleaned the beach after the storm.",
    "Could you explain how the new software update works?",
    "The orchestra rehearsed the symphony for three exhausting hours.",
    "He forgot his umbrella on the crowded subway train.",
    "Fresh strawberries taste better than anything from a supermarket.",
    "The committee postponed its decision about the budget.",
    "Astronomers discovered a comet moving toward the outer planets.",
    "She painted the kitchen walls a cheerful shade of yellow.",
    "Our flight was delayed because of fog at the airport.",
    "The children built a snowman with a carrot for a nose.",
    "A quiet library is the perfect place to study chemistry.",
    "The mechanic replaced the brakes and checked the tires.",
    "Thousands of fans cheered when the band walked on stage.",
    "Please turn off the lights when you leave the office.",
    "The bakery on the corner sells delicious cinnamon rolls.",
    "Scientists measured the temperature of the glacier every winter.",
    "His laptop battery died in the middle of the presentation.",
    "The river flooded the village after a week of heavy rain.",
    "We celebrated her birthday with pizza and chocolate cake.",
    "The detective noticed a muddy footprint near the window.",
    "Traffic was terrible on the highway this morning.",
    "The hospital hired twenty nurses for the new wing.",
    "Bicycles are cheaper and healthier than cars in the city.",
    "The volcano erupted without warning late on a Tuesday night.",
    "I usually drink coffee with a little milk and no sugar.",
    "The students wrote an essay about climate and oceans.",
    "A colorful parade marched through the streets of the town.",
    "The printer ran out of paper during the exam.",
    "Mountain climbers need strong ropes and warm jackets.",
    "The chef seasoned the soup with garlic and pepper.",
    "Our neighbors adopted a friendly puppy from the shelter.",
    "The election results will be announced on Friday evening.",
    "Penguins cannot fly, but they swim remarkably well.",
    "The carpenter measured the table twice before cutting it.",
    "She answered every question on the quiz correctly.",
    "The satellite sends photographs of the earth to the station.",
)


def unseen_word_rate(texts: Sequence[str], known: set[str]) -> float:
    """Share of the words of `texts` (normalised) that are not in `known`."""
    words = [w for t in texts for w in normalize_transcript(t).split()]
    return float(np.mean([w not in known for w in words])) if words else 0.0


def voice_renderings(
    texts: Sequence[str], speakers: Sequence[str], sample_rate: int
) -> list[np.ndarray | None]:
    """Each text spoken by its speaker's corpus voice (flite / espeak-ng), None where the
    speaker is not a corpus voice or the engine fails (named in one warning)."""
    from gpa_jax.audio import voices

    out: list[np.ndarray | None] = []
    failed = []
    for text, speaker in zip(texts, speakers, strict=True):
        try:
            out.append(voices.synthesize(voices.voice_by_speaker(speaker), text, sample_rate=sample_rate))
        except (KeyError, ValueError, voices.SynthesisError) as e:
            failed.append(f"{speaker}: {e}")
            out.append(None)
    if failed:
        logging.warning("open-text TTS: %d renderings by the voice engine failed, e.g. %s", len(failed), failed[0])
    return out


def evaluate(
    models: Any, data: Any, plan: np.ndarray, *, known_words: set[str], seed: int, count: int,
    voice_frames: int, store: Any,
) -> dict[str, Any]:  # fmt: skip
    """Speaks the first `count` of `SENTENCES`, each with the reference crop of a planned
    TTS row of the split (`plan`, cycled), through the LM, the acoustic stage and the codec;
    returns the judge's figures (see `gpa_jax.evaluation.harness`) and writes the samples
    to `store` (a `results.SampleStore`)."""
    from gpa_jax.acoustic import api as acoustic_api
    from gpa_jax.evaluation import asr_metrics
    from gpa_jax.evaluation.speaker import cosine
    from gpa_jax.sampling import Request
    from gpa_jax.tasks import planning

    bank, rate = data.bank, int(models.codec.sample_rate)
    texts = [normalize_transcript(s) for s in SENTENCES[:count]]
    rows = [plan[i % len(plan)] for i in range(len(texts))]
    crops = [planning.voice_crop(bank, r, voice_frames) for r in rows]
    refs = [data.codes(*crop) for crop in crops]
    speakers = [bank.speakers[r[planning.REF]] for r in rows]
    requests = [
        Request.tts(text, ref, id=f"open{i:02d}", seed=seed + i, reference_features=data.features(*crop))
        for i, (text, ref, crop) in enumerate(zip(texts, refs, crops, strict=True))
    ]
    results = models.sampler.generate(requests)
    ok = [i for i, res in enumerate(results) if res.ok and len(res.rvq1) >= 5]
    wavs = dict(zip(ok, acoustic_api.synthesize(models.acoustic, models.codec, [results[i].rvq1 for i in ok],
                                                [refs[i] for i in ok]), strict=True)) if ok else {}  # fmt: skip
    figures: dict[str, Any] = {
        "examples": len(texts), "failed": len(texts) - len(ok),
        "unseen_word_rate": unseen_word_rate(texts, known_words),
    }  # fmt: skip
    report = asr_metrics.judge_wer_report
    hyps = dict(zip(ok, models.judge.transcribe([wavs[i] for i in ok], rate), strict=True)) if ok else {}
    utt_wer = {}
    if ok:
        generated = report([texts[i] for i in ok], [hyps[i] for i in ok], [speakers[i] for i in ok])
        figures["judge_wer"], figures["judge_wer_mean_utt"] = generated["corpus_wer"], generated["mean_utterance_wer"]
        utt_wer = dict(zip(ok, generated["utterance_wer"], strict=True))
    # The engines get the written sentence, as the corpus build does (punctuation shapes prosody).
    rendered = voice_renderings(SENTENCES[:count], speakers, rate)
    have = [i for i, w in enumerate(rendered) if w is not None]
    if have:
        truth = report([texts[i] for i in have], models.judge.transcribe([rendered[i] for i in have], rate))
        figures["judge_wer_truth"], figures["judge_wer_truth_mean_utt"] = truth["corpus_wer"], truth["mean_utterance_wer"]
    ref_wavs = [data.wav(*crop) for crop in crops]
    if models.speaker is not None and ok:
        gen = models.speaker.embed([wavs[i] for i in ok])
        ref = models.speaker.embed(ref_wavs)
        figures["sim_reference"] = float(np.mean(cosine(gen, ref[ok])))
        others = [float(np.mean(cosine(gen[j][None], ref[[k for k in range(len(rows)) if speakers[k] != speakers[i]]])))
                  for j, i in enumerate(ok) if any(s != speakers[i] for s in speakers)]  # fmt: skip
        figures["sim_other_voices"] = float(np.mean(others)) if others else None
    for i, text in enumerate(texts):
        ref_path = store.add(f"open{i:02d}.reference", ref_wavs[i], role="reference", speaker=speakers[i])
        if rendered[i] is not None:
            store.add(f"open{i:02d}.voice_engine", rendered[i], role="voice_engine", text=text, speaker=speakers[i])
        if i in wavs:
            store.add(f"open{i:02d}", wavs[i], role="generated", text=text, reference_speaker=speakers[i],
                      reference_wav=os.path.basename(ref_path), judge_hypothesis=hyps.get(i), judge_wer=utt_wer[i])  # fmt: skip
    return figures
