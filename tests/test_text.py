"""Tests for transcript normalisation (gpa_jax.text)."""

from __future__ import annotations

import pytest

from gpa_jax.text import normalize_transcript, phonemize, tts_prompt_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # LibriSpeech style: upper case, apostrophes, no punctuation.
        ("HE HOPED THERE WOULD BE STEW FOR DINNER", "he hoped there would be stew for dinner"),
        ("I DON'T THINK SO", "i don't think so"),
        # Synthetic corpus style: punctuation.
        ("Did the farmer sell three cows, or two?", "did the farmer sell three cows or two"),
        ("Well, it's late.  Let's go!", "well it's late let's go"),
        # Hyphens, dashes and slashes separate words.
        ("a well-known and/or long—winded story", "a well known and or long winded story"),
        ("left\\right", "left right"),
        # Apostrophes: kept inside words, stripped elsewhere, typographic ones folded.
        ("'Tis the dogs' bone", "tis the dogs bone"),
        ("rock 'n' roll", "rock n roll"),
        ("It’s o’clock", "it's o'clock"),
        ("' ' '", ""),
        # Unicode: NFKC, diacritics, other scripts and symbols dropped.
        ("Ｆｕｌｌ ｗｉｄｔｈ ﬁne", "full width fine"),
        ("Café NAÏVE résumé", "cafe naive resume"),
        ("price: $5 & 10% 日本", "price 5 10"),
        # Whitespace.
        ("  tabs\tand\nnew lines  ", "tabs and new lines"),
        ("", ""),
    ],
)
def test_normalize_transcript_examples(raw: str, expected: str) -> None:
    assert normalize_transcript(raw) == expected


def test_normalize_transcript_is_idempotent() -> None:
    samples = ["Don't STOP—now!", "'quoted' words, here.", "Ünïcödé / text-here"]
    for sample in samples:
        once = normalize_transcript(sample)
        assert normalize_transcript(once) == once


def test_librispeech_and_sentence_styles_agree() -> None:
    assert normalize_transcript("THE CAT'S HAT IS RED") == normalize_transcript(
        "The cat's hat is red."
    )


def test_output_alphabet() -> None:
    out = normalize_transcript("Mixed: ÄÖÜ, 123, ½, ©, “quotes” — and more…")
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyz0123456789' ")
    assert "  " not in out


def test_phonemize_spells_sounds_not_letters() -> None:
    out = phonemize(["the cat", "knight night", "zyxquor blorft"])
    assert len(out) == 3 and all(out)
    # Homophones share phonemes whatever their spelling; words stay separated by one space.
    first, second = out[1].split(" ")
    assert first == second
    assert out[0].count(" ") == 1 and "th" not in out[0]
    # Unseen words still get a spelling (letter-to-sound rules), deterministically.
    assert phonemize(["zyxquor blorft"]) == [out[2]]


def test_tts_prompt_text_frontends() -> None:
    assert tts_prompt_text(["a cat"], "transcript") == ["a cat"]
    assert tts_prompt_text(["a cat"], "phonemes") == phonemize(["a cat"])
    with pytest.raises(ValueError, match="tts_text='ipa'"):
        tts_prompt_text(["a cat"], "ipa")
