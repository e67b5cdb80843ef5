"""The open-text TTS sentences: outside the corpus grammar, and rendered by the voices."""

import numpy as np
import pytest

from data import sentences
from gpa_jax.audio import voices
from gpa_jax.evaluation import open_text
from gpa_jax.text import normalize_transcript


def test_every_sentence_has_words_the_grammar_never_produces():
    # 20k draws reach the grammar's whole word list (about a thousand words).
    grammar_words = set(sentences.vocabulary(sentences.generate_sentences(20_000, seed=0)))
    for sentence in open_text.SENTENCES:
        unseen = [w for w in normalize_transcript(sentence).split() if w not in grammar_words]
        assert unseen, f"{sentence!r} uses only grammar words"
    rate = open_text.unseen_word_rate(open_text.SENTENCES, grammar_words)
    assert 0.2 < rate < 1.0, rate


def test_unseen_word_rate_counts_normalised_words():
    assert open_text.unseen_word_rate(["The Dog, barks!"], {"the", "dog"}) == pytest.approx(1 / 3)
    assert open_text.unseen_word_rate([], {"a"}) == 0.0


def test_voice_renderings_speak_corpus_voices_and_skip_unknown_speakers():
    speaker = voices.seen_voices()[0].speaker
    out = open_text.voice_renderings(
        [open_text.SENTENCES[0], open_text.SENTENCES[1]], [speaker, "not_a_voice"], 16000
    )
    assert out[1] is None
    assert out[0] is not None and out[0].dtype == np.float32 and len(out[0]) > 16000
