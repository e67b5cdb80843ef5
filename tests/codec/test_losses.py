"""Codec losses: D-axis distillation vs NumPy, MS-STFT discriminator, hinge and FM losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpa_jax.codec.discriminator import MultiScaleSTFTDiscriminator
from gpa_jax.codec.losses import (
    d_axis_distill_loss,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    teacher_features,
)
from gpa_jax.config_utils import load_config


def _np_d_axis(pred, teacher):
    """-1/D sum_d log sigmoid(cos_t(pred[:, d], teacher[:, d])), mean over batch, float64."""
    n = min(pred.shape[1], teacher.shape[1])
    p, s = pred[:, :n].astype(np.float64), teacher[:, :n].astype(np.float64)
    cos = (p * s).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(s, axis=1))
    return float(np.mean(np.log1p(np.exp(-cos))))


def test_d_axis_loss_matches_numpy_and_truncates_time():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 12, 5)).astype(np.float32)
    teacher = rng.normal(size=(3, 11, 5)).astype(np.float32)  # teacher one frame shorter
    loss = jax.jit(d_axis_distill_loss)  # one compile per shape instead of op-by-op
    got = float(loss(jnp.asarray(pred), jnp.asarray(teacher)))
    np.testing.assert_allclose(got, _np_d_axis(pred, teacher), rtol=1e-5)
    # Perfectly aligned tracks reach the floor -log sigmoid(1); a scale per dim is free.
    scaled = teacher * np.array([1.0, 2.0, 3.0, 0.5, 7.0], np.float32)
    floor = float(loss(jnp.asarray(scaled), jnp.asarray(teacher)))
    np.testing.assert_allclose(floor, np.log1p(np.exp(-1.0)), rtol=1e-5)
    grad = jax.jit(jax.grad(d_axis_distill_loss))(
        jnp.zeros((1, 4, 5)), jnp.asarray(teacher[:1, :4])
    )
    assert np.all(np.isfinite(grad))  # zero prediction: clamped norm, no NaN


def test_hinge_and_feature_matching_values():
    real = [jnp.array([2.0, 0.5]), jnp.array([-1.0])]
    fake = [jnp.array([-2.0, 0.0]), jnp.array([0.5])]
    # scale 1: mean(relu(1 - r)) = 0.25, mean(relu(1 + f)) = 0.5; scale 2: 2 + 1.5.
    np.testing.assert_allclose(hinge_discriminator_loss(real, fake), (0.75 + 3.5) / 2)
    np.testing.assert_allclose(hinge_generator_loss(fake), (2.0 + 0.5) / 2)
    fm_real = [[jnp.array([1.0, -1.0]), jnp.array([2.0])]]
    fm_fake = [[jnp.array([0.0, -1.0]), jnp.array([2.0])]]
    np.testing.assert_allclose(feature_matching_loss(fm_real, fm_fake), (0.5 / 1.0 + 0.0) / 2)


def test_ms_stft_discriminator_shapes_and_finite_grads():
    disc = MultiScaleSTFTDiscriminator(
        filters=4, n_ffts=(256, 128), hop_lengths=(64, 32), win_lengths=(256, 128), rngs=nnx.Rngs(0)
    )
    rng = np.random.default_rng(1)
    wav = jnp.asarray(0.1 * rng.normal(size=(2, 2048)), jnp.float32)
    fake = jnp.asarray(0.1 * rng.normal(size=(2, 2048)), jnp.float32)
    logits, fmaps = nnx.jit(lambda d, w: d(w))(disc, wav)
    assert len(logits) == len(fmaps) == 2
    for logit, fmap, n_fft, hop in zip(logits, fmaps, (256, 128), (64, 32), strict=True):
        frames, bins = 1 + (2048 - n_fft) // hop, n_fft // 2 + 1
        assert len(fmap) == 5 and all(f.shape[-1] == 4 for f in fmap)
        assert fmap[0].shape == (2, frames, bins, 4)
        for _ in range(3):  # three stride-2 convs (kernel 9, padding 4) over frequency
            bins = (bins - 1) // 2 + 1
        assert logit.shape == (2, frames, bins, 1)

    @nnx.jit
    def grads(disc, wav, fake):
        # Discriminator and generator terms in one backward pass (one compile).
        def total(disc, fake):
            fake_logits, fake_maps = disc(fake)
            _, real_maps = disc(wav)
            gen = hinge_generator_loss(fake_logits) + feature_matching_loss(real_maps, fake_maps)
            return discriminator_loss(disc, wav, fake) + gen

        return nnx.grad(total, argnums=(0, 1))(disc, fake)

    d_grads, g_grad = grads(disc, wav, fake)
    leaves = jax.tree.leaves(d_grads)
    assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    assert np.all(np.isfinite(g_grad)) and float(jnp.abs(g_grad).sum()) > 0


def test_generator_loss_weights_terms_and_switches_adversarial():
    config = load_config(
        "configs/codec_tiny.py",
        {
            "loss.mel_scales": (6,),
            "discriminator.n_ffts": (128,),
            "loss.adversarial": True,
            "teacher.kind": "log_mel",
            "teacher.dim": 32,
            "codec.quantizer": "rvq",  # distillation needs a learned RVQ-1
        },
    )
    config.unlock()
    config.discriminator.hop_lengths, config.discriminator.win_lengths = (32,), (128,)
    disc = MultiScaleSTFTDiscriminator.from_config(config)
    rng = np.random.default_rng(2)
    wav = jnp.asarray(0.1 * rng.normal(size=(2, 1600)), jnp.float32)
    teacher = teacher_features(wav, config)
    assert teacher.shape == (2, 1 + 1600 // 320, config.teacher.dim)
    out = {
        "recon": wav + 0.01,
        "commit_loss": jnp.float32(0.5),
        "semantic_pred": jnp.asarray(rng.normal(size=(2, 5, config.teacher.dim)), jnp.float32),
    }

    @nnx.jit
    def full(disc, out, wav, teacher):
        return generator_loss(out, wav, config, teacher=teacher, discriminator=disc)

    total, m = full(disc, out, wav, teacher)
    lc = config.loss
    expect = (
        lc.lambda_wave * m["wave_l1"]
        + lc.lambda_mel * m["mel"]
        + lc.lambda_log_mel * m["log_mel"]
        + lc.lambda_commit * m["commit"]
        + lc.lambda_distill * m["distill"]
        + lc.lambda_adv * m["adv"]
        + lc.lambda_fm * m["fm"]
    )
    assert lc.lambda_log_mel > 0 and m["log_mel"] > 0  # codec_tiny's Whisper-like mel term
    np.testing.assert_allclose(total, expect, rtol=1e-5)
    np.testing.assert_allclose(m["wave_l1"], 0.01, rtol=1e-3)
    assert all(np.isfinite(float(v)) for v in m.values())
    with pytest.raises(ValueError, match="no discriminator"):
        generator_loss(out, wav, config)  # adversarial on, no discriminator
