"""Codec training losses: reconstruction, commitment, D-axis distillation, adversarial.

Generator objective (SpeechTokenizer paper Sec. 3.4, EnCodec's terms plus distillation):
  L_G = l_wave * L_t + l_mel * L_f + l_log_mel * L_lm + l_adv * L_g + l_fm * L_feat
        + l_commit * L_w + l_distill * L_distill
- L_t: mean |x - x_hat| (waveform L1);
- L_f: EnCodec's multi-scale mel loss, `gpa_jax.audio.stft.multi_scale_mel_loss`
  (64 mels, windows 2^5..2^11);
- L_lm: L1 of natural-log mel in the Whisper-like analysis (HiFi-GAN / Vocos' mel loss;
  not in the paper, off unless lambda_log_mel > 0);
- L_w: the RVQ commitment loss, mean over RVQ layers (`rvq.py`);
- L_distill: D-axis loss between the projected RVQ-1 output and the teacher features;
- L_g / L_feat: hinge adversarial and normalised feature-matching losses against the
  MS-STFT discriminator (`discriminator.py`), switched by `config.loss.adversarial`.
The weights live in the config (`gpa_jax.codec.config`, which cites their sources).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from gpa_jax.audio.features import MelConfig, log_mel_jnp
from gpa_jax.audio.stft import multi_scale_mel_loss
from gpa_jax.codec.discriminator import MultiScaleSTFTDiscriminator

_COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default eps


def wave_l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Time-domain L1, mean over samples and batch."""
    return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def mel_loss(pred: jax.Array, target: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """The multi-scale mel loss with the config's mel count and scales."""
    return multi_scale_mel_loss(
        pred,
        target,
        sample_rate=config.codec.sample_rate,
        n_mels=config.loss.mel_n_mels,
        scales=tuple(config.loss.mel_scales),
    )


def log_mel_l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean |log-mel(x) - log-mel(x_hat)| with the Whisper-like analysis (`MelConfig()`)."""
    return jnp.mean(jnp.abs(log_mel_jnp(pred) - log_mel_jnp(target)))


def _safe_norm(x: jax.Array, axis: int) -> jax.Array:
    """max(||x||, eps) whose gradient is finite (zero) where the clamp is active."""
    return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis), _COS_EPS**2))


def d_axis_distill_loss(pred: jax.Array, teacher: jax.Array) -> jax.Array:
    """SpeechTokenizer's D-axis distillation loss.

    pred [b, T, D] (projected RVQ-1 output), teacher [b, T', D] -> scalar
      L = -1/D sum_d log sigmoid(cos(pred[:, d], teacher[:, d])),
    where each cosine is taken along *time* between one feature dimension's tracks; the
    mean also runs over the batch. Sequences are cut to min(T, T') frames from the start,
    as the reference `d_axis_distill_loss` does (HuBERT yields one frame fewer than the
    codec's ceil(samples / 320)). No extra weight inside; lambda lives in the config.
    """
    n = min(pred.shape[1], teacher.shape[1])
    p = pred[:, :n].astype(jnp.float32)
    s = jax.lax.stop_gradient(teacher[:, :n].astype(jnp.float32))
    cos = jnp.sum(p * s, axis=1) / (_safe_norm(p, 1) * _safe_norm(s, 1))
    return -jnp.mean(jax.nn.log_sigmoid(cos))


def teacher_features(
    wav: jax.Array,
    config: ml_collections.ConfigDict,
    *,
    teacher_model: Any = None,
    lengths: jax.Array | None = None,
    precomputed: jax.Array | None = None,
) -> jax.Array | None:
    """Distillation targets for a batch, [b, frames, teacher.dim], or None ('none').

    kind 'ctc': the trained `teacher.ContentTeacher` (`teacher_model`) run on the crops;
    kind 'hubert_features': the frame-aligned precomputed features that came with the
    batch (`precomputed`); kind 'log_mel': a CPU stand-in, log-mel frames at the codec's
    frame rate (hop = codec hop, window = 2 hops, teacher.dim mel bins), which exercises
    the distillation path but carries no content supervision.
    """
    kind = config.teacher.kind
    if kind == "none":
        return None
    if kind == "ctc":
        if teacher_model is None:
            raise ValueError("teacher.kind='ctc' needs the trained teacher model")
        return _centered(teacher_model(wav, lengths), config)
    if kind == "hubert_features":
        if precomputed is None:
            raise ValueError(
                "teacher.kind='hubert_features' needs precomputed features in the batch "
                "(batch['teacher'], from the FeatureStore at teacher.path)"
            )
        return _centered(precomputed, config)
    if kind != "log_mel":
        raise ValueError(
            f"unknown teacher.kind {kind!r}; expected none|hubert_features|ctc|log_mel"
        )
    hop = 1
    for s in config.codec.strides:
        hop *= int(s)
    sr = config.codec.sample_rate
    cfg = MelConfig(
        sample_rate=sr,
        n_fft=2 * hop,
        win_length=2 * hop,
        hop_length=hop,
        n_mels=config.teacher.dim,
        fmax=sr / 2,
    )
    return log_mel_jnp(wav, cfg)


def _centered(features: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """With teacher.center, each feature track minus its mean over the crop's frames.

    The D-axis loss takes cosines along time; a teacher track with a large constant part
    is then matched well by a *constant* prediction (the projection's bias), which lets
    RVQ-1 ignore the content. Centring leaves only the part that changes with the words.
    """
    if not config.teacher.center:
        return features
    return features - jnp.mean(features, axis=1, keepdims=True)


def hinge_discriminator_loss(
    real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array]
) -> jax.Array:
    """EnCodec's L_d = 1/K sum_k mean(max(0, 1 - D_k(x))) + mean(max(0, 1 + D_k(x_hat)))."""
    terms = [
        jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
        for r, f in zip(real_logits, fake_logits, strict=True)
    ]
    return sum(terms) / len(terms)


def hinge_generator_loss(fake_logits: Sequence[jax.Array]) -> jax.Array:
    """EnCodec's L_g = 1/K sum_k mean(max(0, 1 - D_k(x_hat)))."""
    return sum(jnp.mean(jax.nn.relu(1.0 - f)) for f in fake_logits) / len(fake_logits)


def feature_matching_loss(
    real_fmaps: Sequence[Sequence[jax.Array]], fake_fmaps: Sequence[Sequence[jax.Array]]
) -> jax.Array:
    """EnCodec's L_feat = 1/(KL) sum_{k,l} mean|D_k^l(x) - D_k^l(x_hat)| / mean|D_k^l(x)|.

    The real feature maps are constants for the generator (stop_gradient).
    """
    total, count = jnp.zeros((), jnp.float32), 0
    for real_k, fake_k in zip(real_fmaps, fake_fmaps, strict=True):
        for real, fake in zip(real_k, fake_k, strict=True):
            real = jax.lax.stop_gradient(real)
            total = total + jnp.mean(jnp.abs(real - fake)) / (jnp.mean(jnp.abs(real)) + 1e-8)
            count += 1
    return total / count


def generator_loss(
    out: dict[str, Any],
    wav: jax.Array,
    config: ml_collections.ConfigDict,
    *,
    teacher: jax.Array | None = None,
    discriminator: MultiScaleSTFTDiscriminator | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted generator objective for one batch -> (total, per-term metrics).

    out: `Codec.__call__` output for `wav` [b, samples]; teacher: [b, T', teacher.dim]
    features, or None to skip distillation; discriminator: required when
    `config.loss.adversarial` is on.
    """
    lc = config.loss
    if lc.adversarial and discriminator is None:
        raise ValueError("config.loss.adversarial is on but no discriminator was given")
    if teacher is not None and out["semantic_pred"] is None:
        raise ValueError("teacher features given but the codec has no semantic head")
    recon = out["recon"]
    metrics = {
        "wave_l1": wave_l1(recon, wav),
        "mel": mel_loss(recon, wav, config),
        "commit": out["commit_loss"],
    }
    total = (
        lc.lambda_wave * metrics["wave_l1"]
        + lc.lambda_mel * metrics["mel"]
        + lc.lambda_commit * metrics["commit"]
    )
    if lc.lambda_log_mel:
        metrics["log_mel"] = log_mel_l1(recon, wav)
        total = total + lc.lambda_log_mel * metrics["log_mel"]
    if teacher is not None:
        metrics["distill"] = d_axis_distill_loss(out["semantic_pred"], teacher)
        total = total + lc.lambda_distill * metrics["distill"]
    if lc.adversarial:
        fake_logits, fake_fmaps = discriminator(recon)
        _, real_fmaps = discriminator(wav)
        metrics["adv"] = hinge_generator_loss(fake_logits)
        metrics["fm"] = feature_matching_loss(real_fmaps, fake_fmaps)
        total = total + lc.lambda_adv * metrics["adv"] + lc.lambda_fm * metrics["fm"]
    metrics["total"] = total
    return total, metrics


def discriminator_loss(
    discriminator: MultiScaleSTFTDiscriminator, wav: jax.Array, recon: jax.Array
) -> jax.Array:
    """Hinge loss of the discriminator on real `wav` vs (detached) reconstructions."""
    real_logits, _ = discriminator(wav)
    fake_logits, _ = discriminator(jax.lax.stop_gradient(recon))
    return hinge_discriminator_loss(real_logits, fake_logits)
