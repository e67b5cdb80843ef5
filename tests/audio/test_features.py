"""Tests for gpa_jax.audio.features: the jnp log-mel must match the librosa reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from gpa_jax.audio import (
    TOKEN_FEATURE_DIM,
    MelConfig,
    log_mel,
    log_mel_jnp,
    mel_filterbank,
    num_frames,
    token_aligned_log_mel,
)

# Max abs difference on the (natural) log scale between float32 jnp and float64 librosa.
# Observed ~1e-5; the bound leaves room for other FFT backends (GPU/TPU).
LOG_TOL = 1e-3
CFG = MelConfig()

_log_mel_jit = jax.jit(log_mel_jnp, static_argnames="cfg")


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _chirp(n: int) -> np.ndarray:
    wav = librosa.chirp(fmin=60.0, fmax=7800.0, sr=16000, length=n)
    return (0.5 * wav).astype(np.float32)


# Odd lengths, lengths below n_fft (400) and below n_fft // 2 (reflection wraps around).
@pytest.mark.parametrize("n", [1, 150, 399, 401, 4801, 16000])
def test_jnp_matches_librosa(n):
    for wav in (_noise(n), _chirp(n)):
        ref = log_mel(wav)
        got = np.asarray(_log_mel_jit(wav, cfg=CFG))
        assert ref.shape == got.shape == (1 + n // CFG.hop_length, CFG.n_mels)
        assert np.max(np.abs(ref - got)) < LOG_TOL


def test_non_default_config_matches():
    cfg = MelConfig(
        sample_rate=24000,
        n_fft=1024,
        win_length=800,
        hop_length=240,
        n_mels=100,
        fmin=20.0,
        fmax=12000.0,
    )
    wav = _noise(6001)
    ref = log_mel(wav, cfg)
    got = np.asarray(_log_mel_jit(wav, cfg=cfg))
    assert ref.shape == got.shape == (num_frames(6001, cfg), 100)
    assert np.max(np.abs(ref - got)) < LOG_TOL


def test_frame_count_rule():
    for n in (1, 159, 160, 161, 16000, 16001):
        assert num_frames(n) == 1 + n // 160
    uncentred = MelConfig(center=False)
    assert num_frames(399, uncentred) == 0
    assert num_frames(400, uncentred) == 1
    assert num_frames(720, uncentred) == 3
    wav = _noise(720)
    assert log_mel(wav, uncentred).shape == (3, 80)
    np.testing.assert_allclose(
        np.asarray(_log_mel_jit(wav, cfg=uncentred)), log_mel(wav, uncentred), atol=LOG_TOL
    )


def test_batched_jit_equals_per_item():
    batch = np.stack([_noise(3200, seed=s) for s in range(3)]).reshape(3, 1, 3200)
    batch[2, 0] = _chirp(3200)
    fn = jax.jit(functools.partial(log_mel_jnp, cfg=CFG))
    out = np.asarray(fn(batch))
    assert out.shape == (3, 1, 21, 80)
    for i in range(3):
        np.testing.assert_allclose(out[i, 0], np.asarray(fn(batch[i, 0])), atol=1e-5)
        assert np.max(np.abs(out[i, 0] - log_mel(batch[i, 0]))) < LOG_TOL
    np.testing.assert_allclose(log_mel(batch), out, atol=LOG_TOL)  # reference batches too


def test_silence_hits_the_floor_and_gradient_is_finite():
    out = np.asarray(_log_mel_jit(np.zeros(1600, np.float32), cfg=CFG))
    np.testing.assert_allclose(out, np.log(CFG.log_floor))
    grad = jax.jit(jax.grad(lambda w: jnp.mean(log_mel_jnp(w))))(_noise(1600))
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_filterbank():
    fb = mel_filterbank(CFG)
    assert fb.shape == (201, 80) and fb.dtype == np.float32
    assert mel_filterbank(MelConfig()) is fb  # cached
    assert not fb.flags.writeable
    ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, fmin=0.0, fmax=8000.0)
    np.testing.assert_allclose(fb, ref.T, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [{"win_length": 512}, {"hop_length": 0}, {"fmax": 9000.0}, {"fmin": 8000.0}, {"log_floor": 0}],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        MelConfig(**kwargs)


def test_token_aligned_log_mel_stacks_two_mel_frames_per_token():
    assert TOKEN_FEATURE_DIM == 160
    wav = _chirp(16000)  # 50 token frames, 101 mel frames: the extra one is dropped
    mel = log_mel(wav)
    got = token_aligned_log_mel(wav, 50)
    assert got.shape == (50, TOKEN_FEATURE_DIM) and got.dtype == np.float32
    for t in (0, 1, 25, 49):
        np.testing.assert_array_equal(got[t, :80], mel[2 * t])
        np.testing.assert_array_equal(got[t, 80:], mel[2 * t + 1])


def test_token_aligned_log_mel_repeats_the_last_frame_when_short():
    wav = _noise(16100)  # codec frames ceil(16100 / 320) = 51, mel frames 101 < 102
    mel = log_mel(wav)
    got = token_aligned_log_mel(wav, 51)
    assert got.shape == (51, 160)
    np.testing.assert_array_equal(got[50, :80], mel[100])
    np.testing.assert_array_equal(got[50, 80:], mel[100])  # the repeated last frame
    np.testing.assert_array_equal(got[:50].reshape(100, 80), mel[:100])
    # A clip shorter than one hop still gives every requested row.
    assert token_aligned_log_mel(_noise(100), 3).shape == (3, 160)


def test_token_aligned_log_mel_other_hops_and_bad_ones():
    wav = _noise(4800)
    got = token_aligned_log_mel(wav, 10, codec_hop=480)  # 3 mel frames per token
    assert got.shape == (10, 240)
    np.testing.assert_array_equal(got[1], log_mel(wav)[3:6].reshape(-1))
    with pytest.raises(ValueError, match="not a positive multiple of the mel hop"):
        token_aligned_log_mel(wav, 10, codec_hop=300)
    with pytest.raises(ValueError, match="frames >= 1"):
        token_aligned_log_mel(wav, 0)
