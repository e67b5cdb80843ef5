"""Which model a config trains: `config.kind` -> model factory, loss sums, batch layout, data.

The trainer (`trainer.py`) and the checkpoint helpers (`checkpoint.py`) build the model,
reduce its loss and read its batches through the `ModelKind` registered for
`config.kind`, so another model family (the acoustic stage, `gpa_jax.acoustic`) trains
with the same loop, sharding, Orbax checkpoints, resume and metrics by registering a kind
here. Kinds are imported lazily ("module:attribute"), so the training package never
imports the models it does not run.

Contract of `batch_sums(model, batch, dropout_key, config)`: loss-weighted *sums* over the
(micro-)batch, float32 scalars, with at least

    loss_sum     the objective's numerator (the trainer divides it by the batch's
                 sum of decoder_loss_weights, then differentiates)
    nll_sum      the eval objective's numerator (eval/loss ranks checkpoints)
    weight_sum   sum of decoder_loss_weights

and optionally z_sum, correct_sum (-> accuracy), task_nll_sum / task_correct_sum /
task_weight_sum ([num_tasks + 1] per decoder_task_ids, names from data_iter.task_names)
and any other `<name>_sum`, which the trainer reports as `<split>/<name>` (its mean over
weight_sum).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx

from gpa_jax import paths


def _dropout_rng(config: ml_collections.ConfigDict) -> bool:
    return float(config.model.dropout_rate) > 0.0


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """How the trainer builds, feeds and scores one family of models."""

    # config -> (rngs -> the model, an nnx.Module with logical-axis-named params). The
    # outer call does any host-side preparation (reading files); the inner one may run
    # under jax.eval_shape / jit (abstract state, sharded init) and must be pure.
    model_factory: Callable[[ml_collections.ConfigDict], Callable[[nnx.Rngs], nnx.Module]]
    # (model, batch, dropout_key | None, config) -> sums (module docstring).
    batch_sums: Callable[..., dict[str, jax.Array]]
    # (config, *, workdir, process_index, process_count) -> (train iterator, eval iterator
    # | None); workdir (the run's) locates default data paths under it.
    make_iterators: Callable[..., tuple[Any, Any]]
    # Keys every batch must carry; each array is [rows, seq_len, ...] (trailing dims free).
    batch_keys: tuple[str, ...]
    # Keys moved to the device when present.
    optional_keys: tuple[str, ...] = ()
    # Keys kept as float32 when they arrive as floats (everything else becomes int32).
    float_keys: tuple[str, ...] = ("decoder_loss_weights",)
    # config -> whether a training forward draws random numbers (then batch_sums gets a
    # key per step and micro-batch, else None); default: model.dropout_rate > 0.
    needs_train_rng: Callable[[ml_collections.ConfigDict], bool] = _dropout_rng

    @property
    def device_keys(self) -> tuple[str, ...]:
        return (*self.batch_keys, *self.optional_keys)


def _lm_model_factory(config: ml_collections.ConfigDict) -> Callable[[nnx.Rngs], nnx.Module]:
    from gpa_jax.models import make_lm

    return lambda rngs: make_lm(config, rngs=rngs)


def _lm_batch_sums(model, batch, dropout_key, config):
    from gpa_jax.training.data_iter import task_names
    from gpa_jax.training.train_step import token_sums

    return token_sums(
        model, batch, dropout_key, float(config.optimizer.z_loss), len(task_names(config))
    )


def _lm_needs_train_rng(config: ml_collections.ConfigDict) -> bool:
    from gpa_jax.models import LMConfig

    return LMConfig.from_config(config.model).needs_train_rng()


def _lm_make_iterators(config, *, workdir=None, process_index: int = 0, process_count: int = 1):
    from gpa_jax.training import data_iter

    return data_iter.make_iterators(
        config, workdir=workdir, process_index=process_index, process_count=process_count
    )


def _lm_kind() -> ModelKind:
    from gpa_jax.training.data_iter import AUDIO_FEATURES_KEY, AUDIO_MASK_KEY, TASK_IDS_KEY
    from gpa_jax.training.train_step import BATCH_KEYS, PREFIX_KEY

    return ModelKind(
        model_factory=_lm_model_factory,
        batch_sums=_lm_batch_sums,
        make_iterators=_lm_make_iterators,
        batch_keys=BATCH_KEYS,
        optional_keys=(PREFIX_KEY, TASK_IDS_KEY, AUDIO_FEATURES_KEY, AUDIO_MASK_KEY),
        float_keys=("decoder_loss_weights", AUDIO_FEATURES_KEY),
        needs_train_rng=_lm_needs_train_rng,
    )


# config.kind -> "module:attribute" of a ModelKind or of a () -> ModelKind factory.
KINDS: Mapping[str, str] = {
    "lm": "gpa_jax.training.model_kinds:_lm_kind",
    "acoustic": "gpa_jax.acoustic.kind:acoustic_kind",
}


def needs_train_rng(config: ml_collections.ConfigDict) -> bool:
    """Whether the train step passes the loss a random key: the model kind decides
    (dropout; the hybrid LM's mel dropout). Eval never gets one."""
    return get_kind(config).needs_train_rng(config)


def get_kind(config: ml_collections.ConfigDict | str) -> ModelKind:
    """The ModelKind of `config.kind` (default 'lm') or of a kind name; unknown kinds name
    the known ones."""
    name = config if isinstance(config, str) else config.get("kind", "lm")
    if name not in KINDS:
        raise ValueError(f"config.kind={name!r} has no trainer model kind; known: {sorted(KINDS)}")
    module, _, attr = KINDS[name].partition(":")
    kind = getattr(importlib.import_module(module), attr)
    if not isinstance(kind, ModelKind):
        kind = kind()
    return kind


def write_batch_cache(config: ml_collections.ConfigDict, workdir: str | os.PathLike | None) -> str:
    """Runs the SeqIO data of `config` (through its kind's `make_iterators`: the LM's task
    mixture, or an acoustic stage's task) once and caches what training reads: the
    `train.num_steps` train batches and the `train.eval_steps` eval batches (when evals
    are on), for config.data.source='cache' (gpa_jax.data.batch_cache). Returns the
    cache folder. An existing cache for this config is kept; one made for another config
    is replaced."""
    from gpa_jax.data import batch_cache
    from gpa_jax.training.data_iter import cache_dir, cache_fingerprint

    directory = cache_dir(config, workdir)
    value = cache_fingerprint(config, workdir)
    with_eval = bool(config.train.eval_every)
    try:
        manifest = batch_cache.read_manifest(directory)
    except batch_cache.CacheError:
        manifest = None
    wanted = {"train": int(config.train.num_steps)}
    if with_eval:
        wanted["eval"] = int(config.train.eval_steps)
    if (manifest and manifest["fingerprint"] == value
            and all(manifest["splits"].get(s, {}).get("batches") == n for s, n in wanted.items())):  # fmt: skip
        logging.info("batch cache %s is up to date", directory)
        return directory
    for name in paths.listdir(directory):  # another config's cache: its files go first
        if name.endswith(".array_record") or name == batch_cache.MANIFEST:
            paths.remove(paths.join(directory, name))
    source = config.copy_and_resolve_references()
    with source.unlocked():
        source.data.source = "tasks"
    train, evals = get_kind(source).make_iterators(source, workdir=workdir)
    splits = {"train": batch_cache.write_split(directory, "train", train, wanted["train"])}
    meta: dict[str, Any] = {"fingerprint": value}
    if with_eval:
        splits["eval"] = batch_cache.write_split(directory, "eval", evals, wanted["eval"])
        meta["reference_losses"] = dict(getattr(evals, "reference_losses", None) or {})
    batch_cache.write_manifest(directory, {**meta, "splits": splits})
    return directory
