"""Loss and optimizer of the LM (the trainer's step, `trainer.make_step_fns`, builds on these).

Batch layout (what the SeqIO-style feature converter emits; SeqIO/T5X decoder names):
    decoder_input_tokens   int32 [batch, length]  tokens fed to the model (shifted right)
    decoder_target_tokens  int32 [batch, length]  next-token targets
    decoder_segment_ids    int32 [batch, length]  packed-example id, 0 = padding
    decoder_positions      int32 [batch, length]  position within its segment
    decoder_loss_weights   int32/float [batch, length]  1 on output tokens (e.g. speech
                           tokens for TTS, text for ASR), 0 on prompts/prefix/padding
    decoder_prefix_mask    optional bool/int [batch, length]  1 on the positions of each
                           segment's conditioning prefix (bidirectional attention when
                           config.model.prefix_bidirectional)

The trainer's jitted, sharded step (`trainer.make_step_fns`) differentiates the
loss-weighted sums of `token_sums` (the LM kind's `batch_sums`, `model_kinds`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from gpa_jax.training import asr_ctc, attention_guide
from gpa_jax.training.data_iter import AUDIO_FEATURES_KEY, AUDIO_MASK_KEY, TASK_IDS_KEY

Batch = Mapping[str, jax.Array]
BATCH_KEYS = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
)
PREFIX_KEY = "decoder_prefix_mask"
# fold_in constant that separates the dropout stream from the params init (both from seed).
_DROPOUT_STREAM = 1


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate per optimizer update from `config.optimizer`: linear warmup, cosine decay.

    `schedule(count)` is the rate of update count + 1 (optax counts updates from 0), so
    with W = warmup_steps the first update already uses learning_rate / W, update k
    (1-based) uses learning_rate * k / W up to update W, which reaches the peak; the
    cosine then decays to learning_rate * end_lr_fraction at update total_steps. (A
    warmup from 0 would spend the first update at rate 0.) Separate from
    `make_optimizer` so the trainer logs the rate the optimizer really uses.
    """
    opt = config.optimizer
    base = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=opt.warmup_steps,
        decay_steps=max(opt.total_steps, opt.warmup_steps + 1),
        end_value=opt.learning_rate * opt.end_lr_fraction,
    )

    def schedule(count):
        return base(count + 1)

    return schedule


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with warmup-cosine schedule and global-norm clipping from `config.optimizer`."""
    opt = config.optimizer
    return optax.chain(
        optax.clip_by_global_norm(opt.clip_norm),
        optax.adamw(
            make_schedule(config),
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            mask=_weight_decay_mask,
        ),
    )


def _weight_decay_mask(params: Any) -> Any:
    """Decay kernels and embeddings, not norm scales (vectors, or [layers, dim] if scanned).

    Norm scales are the only params named '.../scale'; matching by name keeps the rule
    right for stacked (scanned) layers where a scale is 2-D.
    """

    def decide(path, _):
        return not any(getattr(p, "key", None) == "scale" for p in path)

    return jax.tree_util.tree_map_with_path(decide, params)


def token_cross_entropy(
    logits: jax.Array, targets: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token (nll, z-loss term, correct) in float32, each [batch, length], unweighted.

    The one place the token loss is defined: `cross_entropy_loss` reduces it, and the
    trainer reduces it per task (decoder_task_ids) without a second softmax.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
    nll = lse - target_logit[..., 0]
    z = z_loss * jnp.square(lse)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return nll, z, correct


def cross_entropy_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    z_loss: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted token cross-entropy in float32, with optional z-loss.

    loss = sum_t w_t * (logsumexp(logits_t) - logits_t[target_t] + z_loss * lse_t**2)
           / max(sum_t w_t, 1)
    Returns (loss, aux) with aux = {nll, z_loss, accuracy, denominator} (nll, z_loss and
    accuracy are weighted means over the same denominator).
    """
    nll, z, correct = token_cross_entropy(logits, targets, z_loss)
    weights = weights.astype(jnp.float32)
    denominator = jnp.sum(weights)
    safe = jnp.maximum(denominator, 1.0)
    aux = {
        "nll": jnp.sum(weights * nll) / safe,
        "z_loss": jnp.sum(weights * z) / safe,
        "accuracy": jnp.sum(weights * correct) / safe,
        "denominator": denominator,
    }
    return jnp.sum(weights * (nll + z)) / safe, aux


def model_logits(
    model: nnx.Module,
    batch: Batch,
    dropout_key: jax.Array | None = None,
    guide: Any = None,
    return_hidden: bool = False,
) -> jax.Array | tuple[jax.Array, ...]:
    """The model's logits on a packed batch (dropout on iff `dropout_key` is given); with
    `guide` (`attention_guide.attention_guide`) also the guided-attention penalty, with
    `return_hidden` also the final hidden states (`DecoderLM.__call__`)."""
    return model(
        batch["decoder_input_tokens"],
        batch["decoder_segment_ids"],
        batch["decoder_positions"],
        batch.get(PREFIX_KEY),
        deterministic=dropout_key is None,
        rngs=dropout_key,
        guide=guide,
        audio_features=batch.get(AUDIO_FEATURES_KEY),
        audio_mask=batch.get(AUDIO_MASK_KEY),
        return_hidden=return_hidden,
    )


def token_sums(
    model: nnx.Module,
    batch: Mapping[str, jax.Array],
    dropout_key: jax.Array | None,
    z_loss: float,
    num_tasks: int,
) -> dict[str, jax.Array]:
    """The LM's loss-weighted sums over a (micro-)batch (the LM kind's `batch_sums`,
    `model_kinds`): totals and per task id (0 = unknown/padding); with guided attention
    on (model.cfg.guide_weight > 0) also guide_sum, the penalty summed over output
    tokens, added to loss_sum times the weight; with the auxiliary ASR CTC on
    (model.cfg.ctc_weight > 0) also ctc_sum (`asr_ctc.ctc_sums`, nats summed over ASR
    examples, so a transcript weighs as its characters' NLL does), added likewise."""
    cfg = model.cfg
    weight = float(getattr(cfg, "guide_weight", 0.0))
    ctc_weight = float(getattr(cfg, "ctc_weight", 0.0))
    guide = None
    if weight > 0:
        guide = attention_guide.attention_guide(batch, float(cfg.guide_sigma))
    if ctc_weight > 0 and TASK_IDS_KEY not in batch:
        raise ValueError(f"model.ctc_weight > 0 needs the batch's {TASK_IDS_KEY} (task mixture data)")
    out = model_logits(model, batch, dropout_key, guide, return_hidden=ctc_weight > 0)
    out = out if isinstance(out, tuple) else (out,)
    logits = out[0]
    penalty = out[1] if guide is not None else None
    nll, z, correct = token_cross_entropy(logits, batch["decoder_target_tokens"], z_loss)
    w = batch["decoder_loss_weights"].astype(jnp.float32)
    task_ids = batch.get(TASK_IDS_KEY)
    if task_ids is None:
        task_ids = jnp.zeros(w.shape, jnp.int32)
    onehot = jax.nn.one_hot(task_ids, num_tasks + 1, dtype=jnp.float32)  # [b, l, tasks + 1]

    def per_task(x):
        return jnp.einsum("bl,blt->t", x, onehot)

    sums = {
        "loss_sum": jnp.sum(w * (nll + z)),
        "nll_sum": jnp.sum(w * nll),
        "z_sum": jnp.sum(w * z),
        "correct_sum": jnp.sum(w * correct),
        "weight_sum": jnp.sum(w),
        "task_nll_sum": per_task(w * nll),
        "task_correct_sum": per_task(w * correct),
        "task_weight_sum": per_task(w),
    }
    if penalty is not None:
        sums["guide_sum"] = penalty
        sums["loss_sum"] = sums["loss_sum"] + weight * penalty
    if ctc_weight > 0:
        ctc = asr_ctc.ctc_sums(
            out[-1], batch, model.ctc_logits, int(cfg.ctc_examples_per_row), int(cfg.ctc_max_frames)
        )
        sums.update(ctc)
        sums["loss_sum"] = sums["loss_sum"] + ctc_weight * ctc["ctc_sum"]
    return sums
