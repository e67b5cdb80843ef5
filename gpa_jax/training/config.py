"""The trainer's config sections and the top-level LM config that holds them.

Config files (configs/*.py) build their `get_config()` from these: `lm_config` with a
`model` section (gpa_jax.models.config.lm_model_config) and an `optimizer` section
(`optimizer_config`); each builder lists the valid keys when an override is unknown.

Top-level LM config layout (what `lm_config` returns; config files add `optimizer`):

    kind            "lm"
    model           gpa_jax.models.LMConfig fields (models.config.lm_model_config)
    mesh.axes       ("data", "fsdp", "tensor")
    mesh.shape      per-slice (ICI) mesh shape; one -1 means "all remaining devices"
    mesh.dcn_shape  mesh shape across slices (multi-slice / multi-pod); all 1 = one slice
    sharding_rules  ((logical_axis, mesh_axis | (mesh_axes...) | None), ...)
    seed            root of every random choice (params init, dropout, data order)
    train           loop, batch shape and checkpoint cadence (`train_config`)
    data            batch source (`data_config`)
    tasks           SeqIO tasks/mixture over token shards (gpa_jax.tasks.config.tasks_config)
    optimizer       AdamW, schedule, clipping and z-loss (`optimizer_config`)
"""

from __future__ import annotations

from typing import Any

import ml_collections

from gpa_jax.models.config import DEFAULT_SHARDING_RULES, mesh_config
from gpa_jax.tasks.config import tasks_config


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



def lm_config(
    *,
    model: ml_collections.ConfigDict,
    mesh: ml_collections.ConfigDict | None = None,
    sharding_rules: tuple[tuple[str, Any], ...] = DEFAULT_SHARDING_RULES,
    seed: int = 0,
    train: ml_collections.ConfigDict | None = None,
    data: ml_collections.ConfigDict | None = None,
    tasks: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
    """The top-level LM config (kind 'lm') with the trainer's `train`, `data`, `tasks` sections.

    Config files add `optimizer` (`optimizer_config`).
    """
    config = ml_collections.ConfigDict()
    config.kind = "lm"
    config.seed = seed
    config.model = model
    config.mesh = mesh if mesh is not None else mesh_config()
    config.sharding_rules = tuple(tuple(rule) for rule in sharding_rules)
    config.train = train if train is not None else train_config()
    config.data = data if data is not None else data_config()
    config.tasks = tasks if tasks is not None else tasks_config()
    return config
