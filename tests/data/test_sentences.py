"""Tests for the grammar sentence generator (data.sentences)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import pytest

from data.sentences import MAX_WORDS, MIN_WORDS, generate_sentences, vocabulary
from gpa_jax.text import normalize_transcript

DEFAULT_SIZE = 3000


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return generate_sentences(DEFAULT_SIZE, seed=0)


def _digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def test_count_and_distinct(sentences: list[str]) -> None:
    assert len(sentences) == DEFAULT_SIZE
    assert len(set(sentences)) == DEFAULT_SIZE
    # Distinct after normalisation too, so transcripts never collide.
    assert len({normalize_transcript(s) for s in sentences}) == DEFAULT_SIZE


def test_deterministic_and_prefix_stable(sentences: list[str]) -> None:
    assert generate_sentences(DEFAULT_SIZE, seed=0) == sentences
    assert generate_sentences(100, seed=0) == sentences[:100]
    other = generate_sentences(100, seed=1)
    assert other != sentences[:100]
    assert len(set(other) & set(sentences[:100])) < 10


def test_deterministic_across_processes(sentences: list[str]) -> None:
    # A fresh interpreter with a different hash seed must produce the same list.
    code = (
        "import hashlib; from data.sentences import generate_sentences; "
        f"print(hashlib.sha256('\\n'.join(generate_sentences({DEFAULT_SIZE}, 0)).encode())"
        ".hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": "."},
    )
    assert out.stdout.strip() == _digest(sentences)


def test_length_spread(sentences: list[str]) -> None:
    lengths = [len(s.split()) for s in sentences]
    assert min(lengths) >= MIN_WORDS and max(lengths) <= MAX_WORDS
    short = sum(n <= 9 for n in lengths) / len(lengths)
    long = sum(n >= 16 for n in lengths) / len(lengths)
    assert short >= 0.15, short
    assert long >= 0.15, long
    assert sum(n >= 24 for n in lengths) >= 30


def test_vocabulary_moderate_and_shared(sentences: list[str]) -> None:
    counts = vocabulary(sentences)
    assert 300 <= len(counts) <= 1500, len(counts)
    # Words recur: most of the running text uses words seen at least ten times.
    tokens = sum(counts.values())
    frequent = sum(c for c in counts.values() if c >= 10)
    assert frequent / tokens > 0.9


def test_text_style(sentences: list[str]) -> None:
    for s in sentences:
        assert not re.search(r"\d", s), s
        assert s[0].isupper(), s
        assert s[-1] in ".?!", s
        assert "  " not in s, s
    kinds = {s[-1] for s in sentences}
    assert {".", "?"} <= kinds
    assert any("," in s for s in sentences)


def test_articles_agree(sentences: list[str]) -> None:
    for s in sentences:
        words = normalize_transcript(s).split()
        for article, word in zip(words, words[1:], strict=False):
            if article == "a":
                assert word[0] not in "aeiou" or word.startswith(("use", "uni", "one")), s
            if article == "an":
                assert word[0] in "aeiou" or word.startswith(("honest", "hour")), s


def test_rejects_negative() -> None:
    with pytest.raises(ValueError):
        generate_sentences(-1, seed=0)
    assert generate_sentences(0, seed=0) == []
