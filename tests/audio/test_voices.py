"""Tests for the synthetic corpus' voices (gpa_jax.audio.voices): real espeak-ng and flite runs."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import soundfile as sf

from gpa_jax.audio import voices as voices_lib
from gpa_jax.audio.voices import VOICES, SynthesisError, Voice, synthesis_worker, synthesize

SENTENCE = "The old farmer sold three brown cows at the market yesterday."


def _rms(wav: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))


def _median_f0(wav: np.ndarray, sr: int = 16000) -> float:
    """Crude autocorrelation pitch over loud 40 ms frames (enough to tell genders apart)."""
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    lo, hi = sr // 400, sr // 60
    energies = [_rms(wav[i : i + frame]) for i in range(0, wav.size - frame, hop)]
    threshold = 0.5 * max(energies)
    f0s = []
    for n, i in enumerate(range(0, wav.size - frame, hop)):
        if energies[n] < threshold:
            continue
        x = wav[i : i + frame] - wav[i : i + frame].mean()
        ac = np.correlate(x, x, mode="full")[frame - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            f0s.append(sr / lag)
    return float(np.median(f0s))


@pytest.fixture(scope="module")
def rendered() -> dict[str, np.ndarray]:
    return {v.speaker: synthesize(v, SENTENCE) for v in VOICES}


def test_voice_table() -> None:
    speakers = [v.speaker for v in VOICES]
    assert len(VOICES) >= 12
    assert len(set(speakers)) == len(speakers)
    flite = {v.name for v in VOICES if v.engine == "flite"}
    assert flite == {"kal16", "slt", "rms", "awb"}
    assert sum(v.engine == "espeak-ng" for v in VOICES) >= 8
    # Engine arguments distinct, so no two ids name the same voice.
    args = {(v.engine, v.name, v.variant, v.speed, v.pitch) for v in VOICES}
    assert len(args) == len(VOICES)
    genders = [v.gender for v in VOICES]
    assert abs(genders.count("female") - genders.count("male")) <= 2
    held = [v for v in VOICES if v.held_out]
    assert len(held) >= 2
    assert {v.gender for v in held} == {"female", "male"}
    assert all(v.engine == "espeak-ng" for v in held)
    for v in VOICES:
        assert v.speaker.startswith("flite_" if v.engine == "flite" else "espeak_")
    assert voices_lib.voice_by_speaker("flite_slt").gender == "female"
    with pytest.raises(KeyError):
        voices_lib.voice_by_speaker("nobody")


def test_voice_validation() -> None:
    with pytest.raises(ValueError, match="gender"):
        Voice("x", "flite", "slt", "other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pitch"):
        Voice("x", "espeak-ng", "en-us", "male", pitch=150)
    with pytest.raises(ValueError, match="flite"):
        Voice("x", "flite", "slt", "female", speed=200)


def test_every_voice_synthesizes(rendered: dict[str, np.ndarray]) -> None:
    for speaker, wav in rendered.items():
        assert wav.dtype == np.float32 and wav.ndim == 1, speaker
        seconds = wav.size / 16000
        assert 1.5 < seconds < 8.0, (speaker, seconds)
        assert np.all(np.isfinite(wav)) and np.abs(wav).max() <= 1.0, speaker
        assert _rms(wav) > 0.01, speaker
        # Trimmed: neither end is a long stretch of silence.
        edge = 4000  # 0.25 s
        assert _rms(wav[:edge]) > 1e-3 and _rms(wav[-edge:]) > 1e-3, speaker


def test_voices_are_distinct(rendered: dict[str, np.ndarray]) -> None:
    for (a, wa), (b, wb) in itertools.combinations(rendered.items(), 2):
        n = min(wa.size, wb.size)
        assert wa.size != wb.size or not np.allclose(wa[:n], wb[:n]), (a, b)
    f0 = {s: _median_f0(w) for s, w in rendered.items()}
    # The gender labels match the voices' pitch (measured: female >= 180 Hz, male <= 134 Hz).
    for v in VOICES:
        assert (f0[v.speaker] > 155) == (v.gender == "female"), (v.speaker, f0[v.speaker])


def test_synthesis_is_deterministic(rendered: dict[str, np.ndarray]) -> None:
    for voice in (VOICES[0], VOICES[-1]):
        again = synthesize(voice, SENTENCE)
        np.testing.assert_array_equal(again, rendered[voice.speaker])


def test_bogus_engine_args_raise_naming_the_voice() -> None:
    bogus_lang = Voice("espeak_xx_bogus", "espeak-ng", "xx-nonexistent", "female")
    with pytest.raises(SynthesisError, match="espeak_xx_bogus") as info:
        synthesize(bogus_lang, SENTENCE)
    assert info.value.reason == "engine_failed"
    assert info.value.text == SENTENCE

    bogus_variant = Voice("espeak_en-us_zz", "espeak-ng", "en-us", "male", variant="zz9")
    with pytest.raises(SynthesisError, match="espeak_en-us_zz.*unknown_voice"):
        synthesize(bogus_variant, SENTENCE)

    bogus_flite = Voice("flite_nobody", "flite", "nobody", "male")
    with pytest.raises(SynthesisError, match="flite_nobody.*unknown_voice"):
        synthesize(bogus_flite, SENTENCE)


def test_missing_binary_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(voices_lib.ENGINE_BINARIES, "espeak-ng", "espeak-ng-not-installed")
    with pytest.raises(SynthesisError, match="apt-get install espeak-ng flite") as info:
        synthesize(VOICES[-1], SENTENCE)
    assert info.value.reason == "missing_binary"
    assert VOICES[-1].speaker in str(info.value)


def _fake_engine(tmp_path, wav: np.ndarray | None, raw: bytes | None = None):
    path = tmp_path / "fake.wav"
    if raw is not None:
        path.write_bytes(raw)
    else:
        sf.write(path, wav, 16000, subtype="PCM_16")
    return lambda voice, text, workdir, timeout: str(path)


@pytest.mark.parametrize(
    ("wav", "raw", "reason"),
    [
        (np.zeros(16000, np.float32), None, "silent"),
        (None, b"RIFF" + b"\x00" * 200, "corrupt_output"),
        (0.3 * np.sin(np.arange(800) / 5.0).astype(np.float32), None, "too_short"),
    ],
)
def test_bad_output_is_classified(tmp_path, monkeypatch, wav, raw, reason) -> None:
    monkeypatch.setattr(voices_lib, "_run_engine", _fake_engine(tmp_path, wav, raw))
    with pytest.raises(SynthesisError) as info:
        synthesize(VOICES[0], SENTENCE)
    assert info.value.reason == reason
    assert VOICES[0].speaker in str(info.value)


def test_too_long() -> None:
    with pytest.raises(SynthesisError) as info:
        synthesize(VOICES[4], SENTENCE, max_seconds=1.0)
    assert info.value.reason == "too_long"


def test_worker_returns_failures_as_values() -> None:
    bogus = Voice("espeak_xx_bogus", "espeak-ng", "xx-nonexistent", "female")
    uid, audio, reason, message = synthesis_worker(("u1", bogus, SENTENCE, 0.5, 16.0))
    assert (uid, audio, reason) == ("u1", None, "engine_failed")
    assert "espeak_xx_bogus" in message
    uid, audio, reason, message = synthesis_worker(("u2", VOICES[0], SENTENCE, 0.5, 16.0))
    assert audio.dtype == np.int16 and audio.size > 16000 and reason is None


def test_error_pickles() -> None:
    err = SynthesisError("flite_slt", "hello", "silent", "RMS too low")
    back = pickle.loads(pickle.dumps(err))
    assert (back.speaker, back.text, back.reason, back.detail) == (
        "flite_slt",
        "hello",
        "silent",
        "RMS too low",
    )
    assert str(back) == str(err)
