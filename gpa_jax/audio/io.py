"""Audio file I/O and waveform validation.

Every path into the system (dataset builders, tokenizer jobs, evaluation, synthesizer
outputs) goes through `load_audio` or `check_waveform`, so bad audio is rejected once,
early, with an `AudioError` that says which file or example and why.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
import soundfile as sf
import soxr

from gpa_jax import paths
from gpa_jax.errors import UserError

# int16 PCM full scale. Both directions use 2^15 (soundfile reads PCM_16 the same way), so
# int16 -> float -> int16 is exact and float -> int16 -> float is within half a step.
_INT16_SCALE = 32768.0

# Near-silence threshold of the data jobs (codec clips, tokenization): a clip whose RMS
# is below -60 dBFS (1e-3 of full scale) holds no speech to learn from (quiet read speech
# sits around -35 to -20 dBFS, 16-bit dither near -96 dBFS). Such clips are counted and
# skipped as "silent" (`gpa_jax.corpora.speech_examples(silence_rms=...)`).
SILENCE_RMS = 1e-3


class AudioError(UserError, ValueError):
    """Unusable audio; the message always names the source (file path or example name).

    Constructed as AudioError(source, reason, kind). `kind` is a short stable code for
    counting rejections ("not_found", "not_a_file", "corrupt", "truncated", "bad_header",
    "empty", "non_finite", "too_long", "too_short", "silent", "bad_shape", "bad_dtype");
    `reason` is the human-readable detail. `args` holds all three, so the error pickles and
    survives multiprocessing data workers.
    """

    def __init__(self, source: str | os.PathLike, reason: str, kind: str = "invalid") -> None:
        super().__init__(os.fspath(source), reason, kind)
        self.source = os.fspath(source)
        self.reason = reason
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def int16_to_float(wav: np.ndarray) -> np.ndarray:
    """int16 PCM (as TFDS stores audio) to float32 in [-1, 1)."""
    wav = np.asarray(wav)
    if wav.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got {wav.dtype}")
    return wav.astype(np.float32) / np.float32(_INT16_SCALE)


def float_to_int16(wav: np.ndarray) -> np.ndarray:
    """Float samples to int16 PCM, clipping to [-1, 1] (+1.0 maps to 32767)."""
    wav = np.clip(np.asarray(wav, dtype=np.float64), -1.0, 1.0)
    return np.clip(np.round(wav * _INT16_SCALE), -32768, 32767).astype(np.int16)


def to_mono(wav: np.ndarray) -> np.ndarray:
    """Mean over channels for [samples, channels] (soundfile layout); 1-D passes through."""
    wav = np.asarray(wav)
    if wav.ndim == 1:
        return wav
    if wav.ndim == 2:
        return wav.mean(axis=1, dtype=np.float64).astype(
            wav.dtype if np.issubdtype(wav.dtype, np.floating) else np.float32
        )
    raise ValueError(f"expected [samples] or [samples, channels], got shape {wav.shape}")


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample [samples] (or [..., samples]) with soxr HQ; float32 out, no-op if rates match.

    Output length is ceil(samples * target_sr / orig_sr) (librosa's rule). soxr is called
    directly, as librosa.resample(res_type="soxr_hq") would, without librosa's first-call
    start-up cost (seconds, paid in every corpus worker process).
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    wav = np.asarray(wav, dtype=np.float32)
    if orig_sr == target_sr:
        return wav
    lead, n = wav.shape[:-1], wav.shape[-1]
    length = int(np.ceil(n * target_sr / orig_sr))
    channels_last = wav.reshape(-1, n).T  # soxr wants [samples, channels]
    out = soxr.resample(np.ascontiguousarray(channels_last), orig_sr, target_sr, quality="HQ")
    out = np.asarray(out, dtype=np.float32).reshape(-1, channels_last.shape[1]).T
    if out.shape[-1] < length:
        out = np.pad(out, ((0, 0), (0, length - out.shape[-1])))
    return np.ascontiguousarray(out[:, :length]).reshape(*lead, length)


def check_waveform(
    wav: np.ndarray,
    sample_rate: int,
    *,
    name: str,
    max_seconds: float = 600.0,
    min_seconds: float = 0.0,
    silence_rms: float | None = None,
) -> np.ndarray:
    """Validate an in-memory mono waveform; return it as float32 or raise AudioError(name).

    Rejects: non-1-D input, empty, non-finite samples, duration above max_seconds or below
    min_seconds, and (when silence_rms is given) RMS below silence_rms. int16 input is
    rescaled to [-1, 1) first, since that is how TFDS hands back decoded audio.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    wav = np.asarray(wav)
    if wav.dtype == np.int16:
        wav = int16_to_float(wav)
    elif not np.issubdtype(wav.dtype, np.floating):
        raise AudioError(
            name, f"unsupported sample dtype {wav.dtype} (want float or int16)", "bad_dtype"
        )
    wav = wav.astype(np.float32, copy=False)
    if wav.ndim != 1:
        raise AudioError(name, f"expected mono 1-D samples, got shape {wav.shape}", "bad_shape")
    if wav.size == 0:
        raise AudioError(name, "audio is empty (0 samples)", "empty")
    bad = np.count_nonzero(~np.isfinite(wav))
    if bad:
        raise AudioError(name, f"{bad} of {wav.size} samples are NaN or infinite", "non_finite")
    seconds = wav.size / sample_rate
    if seconds > max_seconds:
        raise AudioError(
            name, f"too long: {seconds:.2f} s > max_seconds={max_seconds:g}", "too_long"
        )
    if seconds < min_seconds:
        raise AudioError(
            name, f"too short: {seconds:.3f} s < min_seconds={min_seconds:g}", "too_short"
        )
    if silence_rms is not None:
        rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
        if rms < silence_rms:
            raise AudioError(name, f"silent: RMS {rms:.3g} < silence_rms={silence_rms:g}", "silent")
    return wav


def header_frames(f: sf.SoundFile) -> int:
    """Frames the file's header promises, which may exceed what the file holds.

    For WAV/AIFF, libsndfile trims `frames` to the data actually present and reports the
    header's own data size only in its log ("data : 64000 (should be 960)"), so a cut
    file would otherwise load silently as a fragment. Compressed formats (FLAC, OGG) keep
    the header's count in `frames`; their truncation shows up as a short read instead.
    """
    claim = _DATA_CLAIM.search(f.extra_info)
    width = _BYTES_PER_SAMPLE.get(f.subtype)
    if claim is None or width is None:
        return f.frames
    claimed_bytes = int(claim.group(2))
    if claim.group(1) == "SSND":  # AIFF's sound chunk starts with 8 bytes of offsets
        claimed_bytes -= 8
    # Writers that stream to a pipe cannot know the length and write 0 or ~4 GiB.
    if claimed_bytes == 0 or claimed_bytes >= _STREAMING_DATA_SIZE:
        return f.frames
    return max(f.frames, claimed_bytes // (width * f.channels))


# libsndfile's log line for a data chunk whose header size disagrees with the file.
_DATA_CLAIM = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+) \(should be \d+\)", re.M)
_BYTES_PER_SAMPLE = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
                     "FLOAT": 4, "DOUBLE": 8, "ULAW": 1, "ALAW": 1}  # fmt: skip
_STREAMING_DATA_SIZE = 0x7FFFF000
# Samples per read call: a truncated compressed file fails mid-stream, and reading in
# blocks tells how much of it was readable.
_READ_BLOCK = 1 << 16


def load_audio(
    path: str | os.PathLike,
    target_sr: int = 16000,
    *,
    max_seconds: float = 600.0,
    first_seconds: float | None = None,
) -> np.ndarray:
    """Read any soundfile-readable file as float32 mono in [-1, 1] at target_sr.

    The duration limit is checked against the header before any samples are read, so a
    huge file costs nothing. `first_seconds` reads only the start of the file (the rest
    is never decoded and does not count against max_seconds). A file whose header
    promises more samples than it holds (a cut download or copy) is an error naming both
    durations ("truncated"); a 0-byte file or a header with no samples is "empty";
    anything libsndfile cannot parse is "corrupt". Samples are mixed down by averaging
    channels, resampled with soxr, clipped to [-1, 1] (resampling can overshoot by a
    hair; float files can exceed full scale) and validated with `check_waveform`. Every
    failure is an AudioError that names the file.
    """
    name = os.fspath(path)
    local = name
    if paths.is_remote(name):  # libsndfile opens local files: gcsfuse or the host cache
        try:
            local = paths.local_path(name)
        except FileNotFoundError:
            raise AudioError(name, "file not found", "not_found") from None
        except IsADirectoryError:
            raise AudioError(name, "not a regular file", "not_a_file") from None
    if not os.path.exists(local):
        raise AudioError(name, "file not found", "not_found")
    if not os.path.isfile(local):
        raise AudioError(name, "not a regular file", "not_a_file")
    if os.path.getsize(local) == 0:
        raise AudioError(name, "empty file (0 bytes)", "empty")
    try:
        with sf.SoundFile(local) as f:
            orig_sr = f.samplerate
            if orig_sr <= 0:
                raise AudioError(name, f"invalid sample rate {orig_sr} in header", "bad_header")
            promised = header_frames(f)
            if promised == 0:
                raise AudioError(name, "audio is empty (header says 0 samples)", "empty")
            wanted = promised
            if first_seconds is not None:
                wanted = min(promised, max(1, int(round(first_seconds * orig_sr))))
            seconds = wanted / orig_sr
            if seconds > max_seconds:
                raise AudioError(
                    name,
                    f"too long: {seconds:.2f} s > max_seconds={max_seconds:g} (header)",
                    "too_long",
                )
            blocks, got, failure = [], 0, None
            while got < wanted:
                try:
                    block = f.read(min(_READ_BLOCK, wanted - got), dtype="float32", always_2d=True)
                except (sf.SoundFileError, RuntimeError) as e:
                    failure = e
                    break
                if not len(block):
                    break
                blocks.append(block)
                got += len(block)
    except AudioError:
        raise
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OSError) as e:
        raise AudioError(
            name, f"unreadable or corrupt audio ({type(e).__name__}: {e})", "corrupt"
        ) from e
    if got < wanted:
        detail = f" ({type(failure).__name__}: {failure})" if failure is not None else ""
        raise AudioError(
            name,
            f"truncated: the header says {promised / orig_sr:.2f} s ({promised} samples) but "
            f"only {got / orig_sr:.2f} s ({got} samples) could be read{detail}",
            "truncated",
        ) from failure
    data = np.concatenate(blocks)
    wav = to_mono(data)
    bad = np.count_nonzero(~np.isfinite(wav))
    if bad:  # checked before resampling, which would smear NaNs over the whole clip
        raise AudioError(name, f"{bad} of {wav.size} samples are NaN or infinite", "non_finite")
    wav = np.clip(resample(wav, orig_sr, target_sr), -1.0, 1.0)
    return check_waveform(wav, target_sr, name=name, max_seconds=max_seconds)


def save_wav(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM wav, clipping to [-1, 1]; [samples] or [samples, channels]."""
    wav = np.asarray(wav)
    if wav.ndim not in (1, 2):
        raise ValueError(f"expected [samples] or [samples, channels], got shape {wav.shape}")
    if not np.issubdtype(wav.dtype, np.floating):
        raise TypeError(f"expected float samples, got {wav.dtype}")
    if not np.all(np.isfinite(wav)):
        raise AudioError(path, "refusing to write NaN or infinite samples", "non_finite")
    if paths.is_remote(path):  # one object write of the finished file
        buffer = io.BytesIO()
        sf.write(buffer, float_to_int16(wav), sample_rate, subtype="PCM_16", format="WAV")
        paths.atomic_write_text(path, buffer.getvalue())
        return
    sf.write(os.fspath(path), float_to_int16(wav), sample_rate, subtype="PCM_16", format="WAV")
