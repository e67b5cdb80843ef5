"""Transcript normalisation shared by corpora, ASR targets and WER evaluation.

Every transcript that a model is trained on or scored against passes through
`normalize_transcript`, so that LibriSpeech's upper-case transcripts, the synthetic
corpus' punctuated sentences and a model's output compare in one style. The rule, in order:

1. Unicode NFKC (full-width letters, ligatures such as "ﬁ" and compatibility forms fold
   to plain ones).
2. Lower-case.
3. Typographic apostrophes (’ ‘ ʼ ′ `) become "'"; letters with diacritics lose them
   (é → e), so accented loan words keep their letters.
4. Hyphens and dashes of every kind, slashes and backslashes become a space
   ("well-known" → "well known"); so does any other whitespace (tabs, new lines).
5. Every character except a–z, 0–9, apostrophe and space is dropped (punctuation,
   symbols, letters of other scripts). Note this joins "a,b" into "ab": punctuation is
   assumed to be followed by a space, as in ordinary text.
6. An apostrophe survives only inside a word, i.e. with a letter or digit on both sides
   ("don't", "o'clock" stay; "'tis" → "tis", "dogs'" → "dogs", "'" → "").
7. Runs of spaces collapse to one; leading and trailing spaces go.

Numbers are not spelled out here: corpora that want spoken numbers must write them out.
"""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "′": "'", "`": "'"})
# Hyphen-minus, hyphen, non-breaking hyphen, figure dash, en/em dash, horizontal bar,
# minus sign, small/full-width hyphen-minus (NFKC already maps the last two to "-").
_SEPARATORS = re.compile(r"[\-‐‑‒–—―−/\\\s]+")
_DISALLOWED = re.compile(r"[^a-z0-9' ]+")
_LONE_APOSTROPHE = re.compile(r"(?<![a-z0-9])'+|'+(?![a-z0-9])")
_SPACES = re.compile(r" +")


def _strip_diacritics(text: str) -> str:
    """Removes combining marks so that 'café' keeps its letters as 'cafe'."""
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalize_transcript(text: str) -> str:
    """Normalises a transcript by the rule in the module docstring."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _strip_diacritics(text.translate(_APOSTROPHES))
    text = _SEPARATORS.sub(" ", text)
    text = _DISALLOWED.sub("", text)
    text = _LONE_APOSTROPHE.sub("", text)
    return _SPACES.sub(" ", text).strip()


# The TTS text frontends (config.tasks.tts_text): what a TTS prompt spells.
TTS_TEXT_FRONTENDS = ("transcript", "phonemes")
_PHONEMIZER = None


def phonemize(texts: list[str]) -> list[str]:
    """US-English IPA phonemes of normalised transcripts, words separated by one space
    (espeak-ng through `phonemizer`, offline; no stress marks). Phonemes spell how a
    word sounds, so a TTS model need not learn English spelling (USLM and VALL-E feed
    phonemes); unseen words get espeak-ng's letter-to-sound rules."""
    global _PHONEMIZER
    if _PHONEMIZER is None:
        try:
            from phonemizer.backend import EspeakBackend
        except ImportError as e:  # pragma: no cover - a requirement of the package
            raise RuntimeError("tts_text='phonemes' needs the phonemizer package") from e
        try:
            _PHONEMIZER = EspeakBackend("en-us", preserve_punctuation=False, with_stress=False)
        except RuntimeError as e:
            raise RuntimeError(
                f"tts_text='phonemes' needs the espeak-ng library (apt-get install espeak-ng): {e}"
            ) from e
    from phonemizer.separator import Separator

    if not texts:
        return []
    out = _PHONEMIZER.phonemize(list(texts), separator=Separator(phone="", word=" "),
                                strip=True, njobs=1)  # fmt: skip
    return [" ".join(p.split()) for p in out]


def tts_prompt_text(texts: list[str], frontend: str) -> list[str]:
    """What a TTS prompt holds for each normalised transcript under `frontend`."""
    if frontend == "transcript":
        return list(texts)
    if frontend == "phonemes":
        return phonemize(texts)
    raise ValueError(f"tasks.tts_text={frontend!r}; expected one of {TTS_TEXT_FRONTENDS}")
