"""Log-mel features: the continuous LM inputs (LauraGPT / WHISPER-GPT) and eval features.

`log_mel` is the librosa reference (numpy, for data pipelines and for checking);
`log_mel_jnp` is the jit-able twin that runs inside models. Both share the STFT framing
conventions of `stft.py` and the cached filterbank, and agree to float32 precision.

`token_aligned_log_mel` regroups `log_mel` frames per codec frame (two 10 ms mel frames
per 20 ms token, stacked into one row): the LM's continuous audio input, one row per
audio token position, written into the token shards by the tokenization job.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import librosa
import numpy as np

from gpa_jax.audio.filters import mel_basis
from gpa_jax.audio.stft import stft

# Codec hop of the 50 Hz codecs at 16 kHz (samples per token frame).
CODEC_HOP = 320


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """Log-mel analysis settings.

    Defaults follow Whisper's front end at 16 kHz: 25 ms Hann window (400 samples),
    10 ms hop (160 samples, i.e. 100 frames/s, two per 50 Hz codec token), 80 Slaney
    mel bins over 0-8 kHz, centred frames with reflect padding. Unlike Whisper we keep
    the plain natural log with a floor (no log10, dynamic-range clamp or rescale), so
    downstream models normalise however they like.
    """

    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5
    center: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"need 0 < win_length <= n_fft in {self}")
        if self.hop_length <= 0 or self.n_mels <= 0 or self.log_floor <= 0:
            raise ValueError(f"hop_length, n_mels and log_floor must be positive in {self}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2 in {self}")


def num_frames(num_samples: int, cfg: MelConfig = MelConfig()) -> int:
    """Frames `log_mel` yields for a clip; `1 + num_samples // hop` when centred, even n_fft."""
    if cfg.center:
        padded = num_samples + 2 * (cfg.n_fft // 2)
    else:
        padded = num_samples
    if padded < cfg.n_fft:
        return 0
    return 1 + (padded - cfg.n_fft) // cfg.hop_length


def mel_filterbank(cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Slaney-style mel filterbank (librosa defaults) as read-only float32 [n_freqs, n_mels]."""
    return mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)


def log_mel(wav: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """librosa reference log-mel, float32 [..., frames, n_mels] for [..., samples] input.

    Computed in float64 so that it serves as ground truth for `log_mel_jnp`.
    """
    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim == 0 or wav.shape[-1] == 0:
        raise ValueError(f"log_mel needs a non-empty [..., samples] array, got {wav.shape}")
    with warnings.catch_warnings():
        # Clips shorter than n_fft are valid here (reflect padding covers them).
        warnings.filterwarnings("ignore", message=".*too large for input signal.*")
        spec = librosa.stft(
            wav,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window="hann",
            center=cfg.center,
            pad_mode="reflect",
        )
    power = np.swapaxes(np.abs(spec) ** 2, -1, -2)  # [..., frames, n_freqs]
    mel = power @ mel_filterbank(cfg).astype(np.float64)
    return np.log(np.maximum(mel, cfg.log_floor)).astype(np.float32)


def log_mel_jnp(wav: jax.Array | np.ndarray, cfg: MelConfig = MelConfig()) -> jax.Array:
    """jnp log-mel [..., frames, n_mels] for [..., samples]; jit-able, batched, differentiable.

    Matches `log_mel` within ~1e-3 on the log scale in float32 (see tests). The
    filterbank and window are trace-time constants; cfg must be static under jit.
    """
    spec = stft(wav, cfg.n_fft, cfg.hop_length, cfg.win_length, center=cfg.center)
    power = jnp.square(spec.real) + jnp.square(spec.imag)
    mel = power @ jnp.asarray(mel_filterbank(cfg), dtype=power.dtype)
    return jnp.log(jnp.maximum(mel, cfg.log_floor))


# Rows of `token_aligned_log_mel` with the defaults: 2 mel frames x 80 bins per token.
TOKEN_FEATURE_DIM = (CODEC_HOP // MelConfig().hop_length) * MelConfig().n_mels


def token_aligned_log_mel(
    wav: np.ndarray, frames: int, cfg: MelConfig = MelConfig(), codec_hop: int = CODEC_HOP
) -> np.ndarray:
    """Log-mel regrouped per codec frame: float32 [frames, (codec_hop // hop) * n_mels].

    Codec frame t covers samples [codec_hop * t, codec_hop * (t + 1)); with the default
    10 ms mel hop that is mel frames 2t and 2t + 1 (centred on samples 320t and
    320t + 160), concatenated in that order into row t. Why regroup instead of
    interpolating: every row then holds exactly the analysis of its token's span, and
    the LM reads one row per audio position, like a token embedding. The clip's mel
    frame count (1 + samples // hop) rarely equals 2 * frames (the codec pads the last
    frame): missing trailing frames repeat the last one, extra ones are dropped.
    """
    if codec_hop <= 0 or codec_hop % cfg.hop_length:
        raise ValueError(
            f"codec_hop={codec_hop} is not a positive multiple of the mel hop "
            f"{cfg.hop_length}: token frames would not hold whole mel frames"
        )
    if frames < 1:
        raise ValueError(f"token_aligned_log_mel needs frames >= 1, got {frames}")
    per_token = codec_hop // cfg.hop_length
    mel = log_mel(np.asarray(wav).reshape(-1), cfg)  # [mel frames, n_mels]
    need = per_token * frames
    if len(mel) < need:
        mel = np.concatenate([mel, np.repeat(mel[-1:], need - len(mel), axis=0)])
    return np.ascontiguousarray(mel[:need].reshape(frames, per_token * cfg.n_mels))
