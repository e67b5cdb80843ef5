"""Tests for gpa_jax.audio.io: loading, resampling, validation and error messages."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import soundfile as sf

from gpa_jax.audio import (
    AudioError,
    check_waveform,
    float_to_int16,
    int16_to_float,
    load_audio,
    resample,
    save_wav,
    to_mono,
)


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize(
    "suffix, fmt, subtype",
    [(".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"), (".ogg", "OGG", "VORBIS")],
)
def test_round_trip_at_16k(tmp_path, suffix, fmt, subtype):
    wav = _sine(440.0, 16000, 0.5)
    path = tmp_path / f"tone{suffix}"
    sf.write(path, wav, 16000, format=fmt, subtype=subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == len(wav)
    assert np.max(np.abs(out)) <= 1.0
    if subtype == "PCM_16":  # lossless up to 16-bit quantisation
        np.testing.assert_allclose(out, wav, atol=1.0 / 32768)
    else:  # lossy: same tone, roughly the same waveform
        assert abs(_peak_hz(out, 16000) - 440.0) < 4.0
        assert np.corrcoef(out, wav)[0, 1] > 0.95


def test_save_wav_round_trip_is_exact_in_int16(tmp_path):
    wav = np.random.default_rng(0).uniform(-1.2, 1.2, 4000).astype(np.float32)
    path = tmp_path / "x.wav"
    save_wav(path, wav, 16000)
    info = sf.info(path)
    assert (info.samplerate, info.subtype, info.channels) == (16000, "PCM_16", 1)
    out = load_audio(path)
    np.testing.assert_array_equal(out, int16_to_float(float_to_int16(wav)))
    np.testing.assert_allclose(out, np.clip(wav, -1, 1), atol=1.0 / 32768)


def test_stereo_is_averaged_to_mono(tmp_path):
    left = _sine(440.0, 16000, 0.25)
    stereo = np.stack([left, -0.5 * left], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), 0.25 * left, atol=1e-6)
    np.testing.assert_allclose(to_mono(stereo), 0.25 * left, atol=1e-7)
    assert to_mono(left) is left
    with pytest.raises(ValueError):
        to_mono(np.zeros((2, 3, 4)))


@pytest.mark.parametrize("orig_sr", [44100, 22050])
def test_resampled_on_load(tmp_path, orig_sr):
    seconds = 0.75
    wav = _sine(1000.0, orig_sr, seconds)
    path = tmp_path / f"tone_{orig_sr}.flac"
    sf.write(path, wav, orig_sr)
    out = load_audio(path, target_sr=16000)
    assert len(out) == int(np.ceil(len(wav) * 16000 / orig_sr))
    assert abs(len(out) / 16000 - seconds) < 1e-3
    assert abs(_peak_hz(out, 16000) - 1000.0) < 2.0  # bins are 1.33 Hz wide
    # Away from the edges the amplitude survives resampling.
    core = out[1000:-1000]
    assert abs(np.max(np.abs(core)) - 0.5) < 0.01


def test_resample_no_op_and_dtype():
    wav = np.linspace(-1, 1, 100)
    out = resample(wav, 16000, 16000)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, wav.astype(np.float32))
    assert resample(wav, 16000, 8000).shape == (50,)
    with pytest.raises(ValueError):
        resample(wav, 0, 16000)


def _assert_names(excinfo, path, kind, *words):
    message = str(excinfo.value)
    assert str(path) in message and excinfo.value.source == str(path)
    assert excinfo.value.kind == kind
    for word in words:
        assert word in message, message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as excinfo:
        load_audio(path)
    _assert_names(excinfo, path, "not_found", "not found")
    with pytest.raises(AudioError) as excinfo:
        load_audio(tmp_path)
    _assert_names(excinfo, tmp_path, "not_a_file", "not a regular file")


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError) as excinfo:
        load_audio(path)
    _assert_names(excinfo, path, "corrupt", "corrupt")
    assert isinstance(excinfo.value.__cause__, sf.SoundFileError)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    assert sf.info(path).frames == 0
    with pytest.raises(AudioError) as excinfo:
        load_audio(path)
    _assert_names(excinfo, path, "empty", "empty")


def test_nan_samples(tmp_path):
    wav = _sine(440.0, 16000, 0.1)
    wav[100] = np.nan
    wav[200] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, wav, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as excinfo:
        load_audio(path)
    _assert_names(excinfo, path, "non_finite", "2 of 1600", "NaN")


def test_too_long_is_rejected_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    sf.write(path, _sine(440.0, 16000, 1.0), 16000)

    def no_read(*args, **kwargs):
        raise AssertionError("samples were read before the duration check")

    monkeypatch.setattr(sf.SoundFile, "read", no_read)
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, max_seconds=0.5)
    _assert_names(excinfo, path, "too_long", "too long", "1.00 s")


def test_check_waveform_accepts_and_converts():
    wav = _sine(440.0, 16000, 0.5).astype(np.float64)
    out = check_waveform(wav, 16000, name="utt1", min_seconds=0.25, silence_rms=0.01)
    assert out.dtype == np.float32
    pcm = float_to_int16(wav)
    np.testing.assert_allclose(check_waveform(pcm, 16000, name="utt1"), wav, atol=1 / 32768)


@pytest.mark.parametrize(
    "wav, kwargs, kind, words",
    [
        (np.zeros(0, np.float32), {}, "empty", ["empty"]),
        (np.array([0.1, np.nan, 0.2], np.float32), {}, "non_finite", ["1 of 3", "NaN"]),
        (np.zeros(16000, np.float32), {"max_seconds": 0.5}, "too_long", ["1.00 s"]),
        (np.zeros(800, np.float32), {"min_seconds": 0.1}, "too_short", ["0.050 s"]),
        (np.full(1600, 1e-4, np.float32), {"silence_rms": 1e-3}, "silent", ["RMS 0.0001"]),
        (np.zeros((100, 2), np.float32), {}, "bad_shape", ["mono"]),
        (np.zeros(100, np.int32), {}, "bad_dtype", ["dtype"]),
    ],
)
def test_check_waveform_rejects(wav, kwargs, kind, words):
    with pytest.raises(AudioError) as excinfo:
        check_waveform(wav, 16000, name="example/42", **kwargs)
    _assert_names(excinfo, "example/42", kind, *words)


def test_audio_error_is_value_error_and_pickles():
    err = AudioError("a/b.wav", "file not found", "not_found")
    assert isinstance(err, ValueError)
    assert str(err) == "a/b.wav: file not found"
    again = pickle.loads(pickle.dumps(err))
    assert (again.source, again.reason, again.kind) == ("a/b.wav", "file not found", "not_found")
    assert str(again) == str(err)
    assert AudioError("x", "odd").kind == "invalid"


def test_int16_helpers():
    pcm = np.array([-32768, -1, 0, 1, 32767], np.int16)
    as_float = int16_to_float(pcm)
    assert as_float.dtype == np.float32 and as_float[0] == -1.0
    np.testing.assert_array_equal(float_to_int16(as_float), pcm)
    np.testing.assert_array_equal(
        float_to_int16(np.array([-2.0, 1.0, 2.0])), [-32768, 32767, 32767]
    )
    with pytest.raises(TypeError):
        int16_to_float(np.zeros(3, np.int32))
