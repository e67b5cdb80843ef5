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

from gpa_jax.training.data_iter import AUDIO_FEATURES_KEY, AUDIO_MASK_KEY

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


def optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.optimizer` defaults (AdamW, linear warmup then cosine decay to 10%)."""
    values = dict(
        learning_rate=3e-4,
        warmup_steps=1000,
        total_steps=100_000,
        # Final LR as a fraction of the peak, reached at total_steps.
        end_lr_fraction=0.1,
        weight_decay=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        clip_norm=1.0,
        # Coefficient of the z-loss, z_loss * logsumexp(logits)**2 per token (PaLM: 1e-4).
        z_loss=1e-4,
    )
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"unknown optimizer keys {unknown}; valid: {sorted(values)}")
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def train_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.train` defaults: loop length, batch shape, cadence of logs/evals/checkpoints.

    batch_size is global (sequences per optimizer step over all hosts); with
    grad_accum_steps = k each step runs k micro-batches of batch_size / k, so the
    effective batch never changes with k. eval_every / checkpoint_every = 0 turn periodic
    evals / saves off (a final save still happens). keep_checkpoints newest checkpoints
    are kept (0 = all); keep_best > 0 also keeps the keep_best checkpoints with the lowest
    eval loss (only checkpoints saved at eval steps carry one: make checkpoint_every a
    multiple of eval_every). async_checkpointing: write files in a background thread.
    divergence_factor: a finite train loss above this times its running average is a
    spike; checkpoints saved around it are marked diverged and never push the newest good
    one out (gpa_jax.recovery; 0 = off).
    """
    values = dict(
        num_steps=1000,
        batch_size=8,
        seq_len=512,
        grad_accum_steps=1,
        log_every=10,
        eval_every=200,
        eval_steps=4,
        checkpoint_every=500,
        keep_checkpoints=3,
        keep_best=0,
        async_checkpointing=True,
        divergence_factor=4.0,
    )
    return _section("train", values, overrides)


def data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.data`: where batches come from (gpa_jax.training.data_iter.SOURCES).

    source: 'tasks' (the SeqIO mixture of `config.tasks` over token shards; what the
    configs/gpa_*.py files train on), 'cache' (the same batches, cached once to
    ArrayRecord by `launch.cache_batches` and read with Grain: no TensorFlow on the
    training host; gpa_jax.data.batch_cache) or 'synthetic' (random packed batches,
    needing no data: the default, for tests, benchmarks and smoke runs). Task ids in
    batches name gpa_jax.tasks.config.TASK_NAMES (not configurable: the same table fixes
    the tasks' tag tokens).
    cache_dir: the cache's folder ("" = <workdir>/batch_cache); cache_workers: Grain
    worker processes reading it (0 = threads in the training process).
    """
    values = dict(source="synthetic", cache_dir="", cache_workers=0)
    return _section("data", values, overrides)


def _section(name: str, values: dict[str, Any], overrides: dict[str, Any]):
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"unknown {name} keys {unknown}; valid: {sorted(values)}")
    values.update(overrides)
    return ml_collections.ConfigDict(values)


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
    model: nnx.Module, batch: Batch, dropout_key: jax.Array | None = None, guide: Any = None
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The model's logits on a packed batch (dropout on iff `dropout_key` is given); with
    `guide` (`attention_guide.attention_guide`) also the guided-attention penalty."""
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
    )


def needs_train_rng(config: ml_collections.ConfigDict) -> bool:
    """Whether the train step passes the loss a random key: the model kind decides
    (dropout; the hybrid LM's mel dropout). Eval never gets one."""
    from gpa_jax.training.model_kinds import get_kind

    return get_kind(config).needs_train_rng(config)
