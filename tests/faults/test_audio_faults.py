"""Audio files with injected faults: cut, empty, header-only, silent (real files, real cuts).

Every file is written by soundfile and then damaged on disk the way a cut download or
copy leaves it, and read back through `gpa_jax.audio.io.load_audio`.
"""

import struct

import numpy as np
import pytest
import soundfile as sf

from gpa_jax.audio import io as audio_io

RATE = 16000


def _speechlike(seconds: float, amp: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    return (
        (amp * np.sin(2 * np.pi * 180 * t) * (1 + 0.3 * rng.standard_normal(len(t))))
        .clip(-1, 1)
        .astype(np.float32)
    )


def _cut(path, keep_bytes: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])


@pytest.mark.parametrize("subtype, width", [("PCM_16", 2), ("FLOAT", 4), ("PCM_24", 3)])
def test_truncated_wav_names_header_and_read_durations(tmp_path, subtype, width):
    path = tmp_path / "cut.wav"
    sf.write(path, _speechlike(2.0), RATE, subtype=subtype)
    header = len(path.read_bytes()) - 2 * RATE * width
    _cut(path, header + int(0.03 * RATE) * width)  # 0.03 s of the promised 2 s left
    assert sf.info(path).frames == int(0.03 * RATE)  # libsndfile alone would load a fragment
    with pytest.raises(audio_io.AudioError) as excinfo:
        audio_io.load_audio(path)
    error = excinfo.value
    assert error.kind == "truncated"
    assert str(path) in str(error)
    assert "2.00 s" in str(error) and "0.03 s" in str(error), str(error)


@pytest.mark.parametrize("suffix, fmt", [(".flac", "FLAC"), (".aiff", "AIFF")])
def test_truncated_compressed_or_aiff_is_truncated_not_a_fragment(tmp_path, suffix, fmt):
    path = tmp_path / f"cut{suffix}"
    sf.write(path, _speechlike(2.0), RATE, format=fmt)
    _cut(path, len(path.read_bytes()) // 4)
    with pytest.raises(audio_io.AudioError) as excinfo:
        audio_io.load_audio(path)
    assert excinfo.value.kind == "truncated", str(excinfo.value)
    assert "header says 2.00 s" in str(excinfo.value)


def test_header_without_data_is_truncated(tmp_path):
    path = tmp_path / "header_only.wav"
    sf.write(path, _speechlike(2.0), RATE, subtype="PCM_16")
    _cut(path, 44)  # the canonical 44-byte header, no samples
    with pytest.raises(audio_io.AudioError) as excinfo:
        audio_io.load_audio(path)
    assert excinfo.value.kind == "truncated"
    assert "2.00 s" in str(excinfo.value) and "0.00 s" in str(excinfo.value)


def test_empty_file_is_empty_not_corrupt(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(audio_io.AudioError) as excinfo:
        audio_io.load_audio(path)
    assert excinfo.value.kind == "empty"
    assert "empty" in str(excinfo.value) and "corrupt" not in str(excinfo.value)
    zero = tmp_path / "zero_samples.wav"  # a valid header that promises no samples
    sf.write(zero, np.zeros(0, np.float32), RATE)
    with pytest.raises(audio_io.AudioError) as excinfo:
        audio_io.load_audio(zero)
    assert excinfo.value.kind == "empty"


def test_cut_header_is_corrupt(tmp_path):
    path = tmp_path / "cut_header.wav"
    sf.write(path, _speechlike(0.5), RATE)
    _cut(path, 20)  # inside the fmt chunk
    with pytest.raises(audio_io.AudioError) as excinfo:
        audio_io.load_audio(path)
    assert excinfo.value.kind == "corrupt" and str(path) in str(excinfo.value)


def test_streamed_wav_with_unknown_length_still_loads(tmp_path):
    """Writers that stream to a pipe put 0xFFFFFFFF in the size fields: not a truncation."""
    path = tmp_path / "streamed.wav"
    wav = _speechlike(0.5)
    sf.write(path, wav, RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[36:40] == b"data"
    data[4:8] = data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    assert len(audio_io.load_audio(path)) == len(wav)


def test_first_seconds_reads_only_the_start(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    sf.write(path, _speechlike(5.0), RATE)
    read = []
    original = sf.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        out = original(self, frames, *args, **kwargs)
        read.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    wav = audio_io.load_audio(path, first_seconds=1.5, max_seconds=2.0)
    assert len(wav) == int(1.5 * RATE) and sum(read) == int(1.5 * RATE)
    with pytest.raises(audio_io.AudioError, match="too long: 5.00 s"):
        audio_io.load_audio(path, max_seconds=2.0)  # from the header: nothing read
    assert sum(read) == int(1.5 * RATE)


def test_silence_threshold_is_minus_60_dbfs():
    quiet_speech = _speechlike(1.0, amp=0.01)  # about -43 dBFS: kept
    audio_io.check_waveform(quiet_speech, RATE, name="q", silence_rms=audio_io.SILENCE_RMS)
    near_silent = _speechlike(1.0, amp=0.001)  # about -63 dBFS: skipped
    with pytest.raises(audio_io.AudioError) as excinfo:
        audio_io.check_waveform(near_silent, RATE, name="n", silence_rms=audio_io.SILENCE_RMS)
    assert excinfo.value.kind == "silent"
    assert audio_io.SILENCE_RMS == pytest.approx(10 ** (-60 / 20))
