"""Short-time Fourier transform and spectral reconstruction losses in pure jnp.

One STFT serves the log-mel features (`features.py`) and the codec's losses and
discriminators, so every consumer frames audio identically. All functions are jit-able,
differentiable, and batched over any leading axes ([..., samples]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpa_jax.audio.filters import hann_window, mel_basis

# Power floor before sqrt/log in the MR-STFT loss (Parallel WaveGAN's value).
_MAG_POWER_FLOOR = 1e-7


def _as_float(x: jax.Array | np.ndarray) -> jax.Array:
    """float32 (or float64 under x64) array; FFTs do not take bf16 or integers."""
    x = jnp.asarray(x)
    if x.dtype not in (jnp.float32, jnp.float64):
        x = x.astype(jnp.float32)
    return x


def _frame(x: jax.Array, frame_length: int, hop_length: int) -> jax.Array:
    """[..., n] → [..., num_frames, frame_length] with frames starting every hop_length.

    One gather with constant indices. Measured on CPU (jax 0.10, fwd+bwd of both losses
    on [8, 48000]) it runs as fast as assembling frames from strided slices and compiles
    about twice as fast.
    """
    num_frames = 1 + (x.shape[-1] - frame_length) // hop_length
    idx = np.arange(num_frames)[:, None] * hop_length + np.arange(frame_length)[None, :]
    return x[..., idx]


def stft(
    wav: jax.Array | np.ndarray,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    center: bool = True,
) -> jax.Array:
    """Complex STFT [..., frames, n_fft // 2 + 1] with a periodic Hann window.

    Matches `librosa.stft(..., window="hann", pad_mode="reflect")` transposed to
    frames-first. With center=True the signal is reflect-padded by n_fft // 2 on both
    sides (repeated reflection when it is shorter than that, as np.pad does), giving
    `1 + samples // hop_length` frames; with center=False it needs samples >= n_fft.
    """
    win_length = n_fft if win_length is None else win_length
    if hop_length <= 0:
        raise ValueError(f"hop_length must be positive, got {hop_length}")
    window = hann_window(win_length, n_fft)
    wav = _as_float(wav)
    if wav.ndim == 0 or wav.shape[-1] == 0:
        raise ValueError(f"stft needs a non-empty [..., samples] array, got shape {wav.shape}")
    if center:
        pad = n_fft // 2
        wav = jnp.pad(wav, [(0, 0)] * (wav.ndim - 1) + [(pad, pad)], mode="reflect")
    elif wav.shape[-1] < n_fft:
        raise ValueError(f"center=False needs >= n_fft={n_fft} samples, got {wav.shape[-1]}")
    frames = _frame(wav, n_fft, hop_length)
    return jnp.fft.rfft(frames * jnp.asarray(window, dtype=wav.dtype), n=n_fft, axis=-1)


@dataclasses.dataclass(frozen=True)
class STFTResolution:
    """One (n_fft, hop, window) triple of a multi-resolution STFT loss or discriminator."""

    n_fft: int
    hop_length: int
    win_length: int

    def __post_init__(self) -> None:
        if not (0 < self.win_length <= self.n_fft and self.hop_length > 0):
            raise ValueError(f"invalid STFT resolution {self}")


# Window/hop of 4:1 at three octaves, the common codec/vocoder choice (covers ~32-128 ms
# windows at 16 kHz).
DEFAULT_STFT_RESOLUTIONS: tuple[STFTResolution, ...] = (
    STFTResolution(512, 128, 512),
    STFTResolution(1024, 256, 1024),
    STFTResolution(2048, 512, 2048),
)


def _check_pair(pred: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    pred, target = _as_float(pred), _as_float(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must have equal shapes")
    if pred.ndim == 0 or pred.shape[-1] == 0:
        raise ValueError(f"expected non-empty [..., samples] audio, got shape {pred.shape}")
    return pred, target


def _power(spec: jax.Array) -> jax.Array:
    return jnp.square(spec.real) + jnp.square(spec.imag)


def _safe_norm(x: jax.Array, axis: tuple[int, ...]) -> jax.Array:
    """Frobenius norm whose gradient is 0 (not NaN) at x == 0."""
    sq = jnp.sum(jnp.square(x), axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def multi_resolution_stft_loss(
    pred: jax.Array,
    target: jax.Array,
    resolutions: Sequence[STFTResolution] = DEFAULT_STFT_RESOLUTIONS,
) -> jax.Array:
    """Parallel WaveGAN multi-resolution STFT loss: mean over resolutions of SC + log-mag L1.

    Per resolution, with |X| = sqrt(max(|STFT|^2, 1e-7)):
      spectral convergence = ||  |T| - |P|  ||_F / || |T| ||_F
      log-magnitude loss   = mean | log|T| - log|P| |
    Spectral convergence is computed per example and averaged over the leading axes (PWG
    takes one norm over the whole batch; per-example keeps a loud item from dominating).
    Resolutions whose window is longer than the audio are skipped (their frames would be
    mostly padding); a ValueError is raised when none fits.
    """
    pred, target = _check_pair(pred, target)
    num_samples = pred.shape[-1]
    usable = [r for r in resolutions if r.win_length <= num_samples]
    if not usable:
        raise ValueError(f"audio of {num_samples} samples is shorter than every STFT window")
    total = jnp.zeros((), jnp.float32)
    for res in usable:
        power_p, power_t = (
            jnp.maximum(
                _power(stft(x, res.n_fft, res.hop_length, res.win_length)), _MAG_POWER_FLOOR
            )
            for x in (pred, target)
        )
        mag_p, mag_t = jnp.sqrt(power_p), jnp.sqrt(power_t)
        sc = _safe_norm(mag_t - mag_p, axis=(-2, -1)) / _safe_norm(mag_t, axis=(-2, -1))
        log_l1 = jnp.mean(jnp.abs(0.5 * (jnp.log(power_t) - jnp.log(power_p))))
        total = total + jnp.mean(sc) + log_l1
    return total / len(usable)


def multi_scale_mel_loss(
    pred: jax.Array,
    target: jax.Array,
    sample_rate: int = 16000,
    n_mels: int = 64,
    scales: Iterable[int] = range(5, 12),
    *,
    fmin: float = 0.0,
    fmax: float | None = None,
    log_floor: float = 1e-5,
) -> jax.Array:
    """EnCodec / SpeechTokenizer multi-scale mel reconstruction loss (frequency-domain term).

    Both papers define L_f = sum_{i in e} ||S_i(x) - S_i(x_hat)||_1 + ||S_i(x) - S_i(x_hat)||_2
    with S_i a 64-bin mel spectrogram of a *normalized* STFT, window 2^i, hop 2^i / 4,
    e = 5..11. The papers leave the scale of each term implicit; this follows the
    reference implementation of that loss (AudioCraft's `MultiScaleMelSpectrogramLoss`,
    used to train EnCodec): per scale, mean L1 between linear mel power spectrograms plus
    mean squared error between log10(floor + mel), with alpha_i = 1. The sum over scales
    is divided by the number of scales used, so the value does not depend on how many
    scales fit the clip (AudioCraft's `normalized=True` divides by 2x that).

    Details: power spectrum divided by sum(window^2) (torchaudio's normalized=True),
    HTK-scale triangular filters without area normalisation (torchaudio's MelScale
    defaults, which EnCodec uses), centred reflect-padded frames (AudioCraft pads
    (n_fft - hop) / 2 and drops `center`; the frame grid differs by under one hop).
    SpeechTokenizer's released trainer uses a single-scale L1 log-mel loss instead; we
    implement the multi-scale loss its paper specifies.

    Scales whose window exceeds the clip length are skipped (a frame made mostly of
    reflected padding says nothing the shorter scales do not); a ValueError is raised
    if no scale fits. The filterbanks are numpy constants cached per (sr, n_fft, n_mels).
    """
    pred, target = _check_pair(pred, target)
    num_samples = pred.shape[-1]
    scales = tuple(scales)
    if any(i < 2 for i in scales):
        raise ValueError(f"scales must be >= 2 (hop = 2^i / 4), got {scales}")
    used = [i for i in scales if 2**i <= num_samples]
    if not used:
        raise ValueError(f"audio of {num_samples} samples is shorter than every mel window")
    total = jnp.zeros((), jnp.float32)
    for i in used:
        n_fft = 2**i
        basis = mel_basis(sample_rate, n_fft, n_mels, fmin, fmax, htk=True, norm=None)
        norm = float(np.sum(np.square(hann_window(n_fft), dtype=np.float64)))
        mel_p, mel_t = (
            (_power(stft(x, n_fft, n_fft // 4)) / norm) @ jnp.asarray(basis, dtype=x.dtype)
            for x in (pred, target)
        )
        l1 = jnp.mean(jnp.abs(mel_p - mel_t))
        l2 = jnp.mean(jnp.square(jnp.log10(mel_p + log_floor) - jnp.log10(mel_t + log_floor)))
        total = total + l1 + l2
    return total / len(used)


def istft(spec: jax.Array, n_fft: int, hop_length: int) -> jax.Array:
    """Inverse STFT with 'same' padding: [..., frames, n_fft // 2 + 1] -> [..., frames * hop].

    Vocos' convention for generator heads: each frame's inverse FFT is Hann-windowed,
    overlap-added, divided by the summed squared window, and (n_fft - hop) / 2 samples
    are trimmed from both ends, so frame f is centred on the middle of samples
    [f * hop, (f + 1) * hop), the span a codec frame f encodes. n_fft must be a multiple
    of hop (overlap-add is then n_fft / hop shifted adds, cheap and differentiable).
    """
    if n_fft % hop_length or (n_fft - hop_length) % 2:
        raise ValueError(
            f"istft needs n_fft ({n_fft}) to be a multiple of hop ({hop_length}), n_fft - hop even"
        )
    spec = jnp.asarray(spec)
    frames = spec.shape[-2]
    window = jnp.asarray(hann_window(n_fft), jnp.float32)
    chunks = jnp.fft.irfft(spec, n=n_fft, axis=-1).astype(jnp.float32) * window
    k = n_fft // hop_length
    lead = chunks.shape[:-2]
    chunks = chunks.reshape(*lead, frames, k, hop_length)
    out = jnp.zeros((*lead, frames + k - 1, hop_length), jnp.float32)
    for i in range(k):  # chunk i of frame f lands on output block f + i
        out = out.at[..., i : i + frames, :].add(chunks[..., i, :])
    env_frames = np.square(hann_window(n_fft)).reshape(k, hop_length)
    envelope = np.zeros((frames + k - 1, hop_length))
    for i in range(k):
        envelope[i : i + frames] += env_frames[i]
    pad = (n_fft - hop_length) // 2
    out = out.reshape(*lead, (frames + k - 1) * hop_length)
    envelope = envelope.reshape(-1)
    out = out / jnp.asarray(np.maximum(envelope, 1e-11), jnp.float32)
    return out[..., pad : pad + frames * hop_length]
