"""Tests for gpa_jax.audio.stft: STFT parity with librosa and the codec losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from gpa_jax.audio import (
    DEFAULT_STFT_RESOLUTIONS,
    STFTResolution,
    multi_resolution_stft_loss,
    multi_scale_mel_loss,
    stft,
)

# Max |jnp - librosa| relative to the largest magnitude (float32 FFT vs float64 reference).
STFT_RTOL = 1e-5

_stft_jit = jax.jit(stft, static_argnames=("n_fft", "hop_length", "win_length", "center"))


def _signal(n: int, batch: tuple[int, ...] = (), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    tone = 0.4 * np.sin(2 * np.pi * (220 + 300 * t) * t)
    return (tone + 0.05 * rng.standard_normal((*batch, n))).astype(np.float32)


@pytest.mark.parametrize(
    "n_fft, hop, win",
    [
        (512, 128, None),
        (400, 160, 300),  # window shorter than the FFT
        (512, 100, None),  # hop does not divide the FFT size
        (31, 7, None),  # odd FFT size
    ],
)
@pytest.mark.parametrize("n", [200, 3001])
@pytest.mark.filterwarnings("ignore:n_fft=.*too large for input signal:UserWarning")
def test_stft_matches_librosa(n_fft, hop, win, n):
    wav = _signal(n)
    ref = librosa.stft(
        wav.astype(np.float64), n_fft=n_fft, hop_length=hop, win_length=win, pad_mode="reflect"
    ).T
    got = np.asarray(_stft_jit(wav, n_fft=n_fft, hop_length=hop, win_length=win))
    assert got.shape == ref.shape == (1 + (n + 2 * (n_fft // 2) - n_fft) // hop, n_fft // 2 + 1)
    assert np.max(np.abs(got - ref)) < STFT_RTOL * np.max(np.abs(ref))


@pytest.mark.parametrize("hop", [128, 100])
def test_stft_uncentred_and_batched(hop):
    wav = _signal(2000, batch=(2, 3))
    got = np.asarray(_stft_jit(wav, n_fft=512, hop_length=hop, center=False))
    ref = librosa.stft(wav.astype(np.float64), n_fft=512, hop_length=hop, center=False)
    ref = np.swapaxes(ref, -1, -2)
    assert got.shape == ref.shape == (2, 3, 1 + (2000 - 512) // hop, 257)
    assert np.max(np.abs(got - ref)) < STFT_RTOL * np.max(np.abs(ref))
    with pytest.raises(ValueError):
        stft(wav[..., :100], 512, 128, center=False)
    with pytest.raises(ValueError):
        stft(np.zeros((2, 0)), 512, 128)


_LOSSES = {"mrstft": multi_resolution_stft_loss, "msmel": multi_scale_mel_loss}


@pytest.mark.parametrize("name", sorted(_LOSSES))
def test_loss_zero_positive_monotone_and_differentiable(name):
    # One compiled value_and_grad per loss keeps this test cheap on CPU.
    value_and_grad = jax.jit(jax.value_and_grad(_LOSSES[name]))
    target = _signal(8000, batch=(2,))
    noise = np.random.default_rng(1).standard_normal(target.shape).astype(np.float32)

    value, grad = value_and_grad(target, target)
    # Zero up to float32 rounding (XLA does not promise bit-identical spectra for both).
    assert abs(float(value)) < 1e-10
    # At the optimum the norm and |.| terms sit at their kink: the gradient is a subgradient
    # picked by rounding noise, but it must not be NaN (safe norm, power/log floors).
    assert bool(jnp.all(jnp.isfinite(grad)))

    values = []
    for scale in (0.3, 0.1, 0.03, 0.01):
        value, grad = value_and_grad(target + scale * noise, target)
        assert grad.shape == target.shape
        assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0
        values.append(float(value))
    assert all(np.isfinite(values)) and values[-1] > 0
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values


def test_short_audio_skips_long_windows():
    target = _signal(1000)
    pred = target[::-1].copy()
    msmel = jax.jit(multi_scale_mel_loss, static_argnames="scales")
    mrstft = jax.jit(multi_resolution_stft_loss, static_argnames="resolutions")
    # A window of 2^10 = 1024 samples exceeds the 1000-sample clip: only 2^6 counts.
    np.testing.assert_allclose(
        float(msmel(pred, target, scales=(6, 10))),
        float(msmel(pred, target, scales=(6,))),
        rtol=1e-6,
    )
    small, large = STFTResolution(256, 64, 256), STFTResolution(2048, 512, 2048)
    np.testing.assert_allclose(
        float(mrstft(pred, target, resolutions=(small, large))),
        float(mrstft(pred, target, resolutions=(small,))),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="shorter than every"):
        multi_scale_mel_loss(pred[:16], target[:16])
    with pytest.raises(ValueError, match="shorter than every"):
        multi_resolution_stft_loss(pred[:256], target[:256])
    with pytest.raises(ValueError, match="equal shapes"):
        multi_resolution_stft_loss(pred, target[:999])
    with pytest.raises(ValueError):
        multi_scale_mel_loss(pred, target, scales=[1, 5])


def test_stft_resolution_validation():
    assert DEFAULT_STFT_RESOLUTIONS[0] == STFTResolution(512, 128, 512)
    with pytest.raises(ValueError):
        STFTResolution(512, 128, 1024)
    with pytest.raises(ValueError):
        STFTResolution(512, 0, 512)


@pytest.mark.parametrize("hop", [160, 320])
def test_istft_inverts_frames_centred_on_each_hop(hop):
    """istft('same' padding) of the STFT whose frame f is centred at f * hop + hop / 2
    gives the signal back, F frames -> F * hop samples."""
    from gpa_jax.audio.stft import istft

    n_fft, frames = 4 * hop, 24
    x = np.random.default_rng(0).normal(size=(2, frames * hop)).astype(np.float32)
    shifted = np.concatenate([x[:, hop // 2 :], np.zeros((2, hop // 2), np.float32)], axis=1)
    spec = stft(jnp.asarray(shifted), n_fft, hop)[..., :frames, :]
    y = np.asarray(istft(spec, n_fft, hop))
    assert y.shape == x.shape
    inner = slice(n_fft, -n_fft)  # the ends see the analysis' reflect padding
    np.testing.assert_allclose(y[:, inner], x[:, inner], atol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        istft(spec, n_fft + 1, hop)
