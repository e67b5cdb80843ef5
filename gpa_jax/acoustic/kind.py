"""The acoustic stage as a trainer model kind (`config.kind == 'acoustic'`).

`gpa_jax.training.model_kinds` imports `acoustic_kind` lazily; the trainer then builds
`AcousticModel`, reads `gpa_jax.acoustic.data` batches and reduces the losses below.

Losses (sums over the batch's target frames, weights = decoder_loss_weights):
- NAR: cross-entropy of RVQ layer k's code per target frame (+ optional z-loss from
  config.optimizer.z_loss), token accuracy, both per stage via decoder_task_ids.
- vocoder: l1_weight * mean_D |pred - z| + l2_weight * mean_D (pred - z)^2 per frame, z
  the codec's quantized latent (sum of the codebook vectors of all n_q codes); 'l1', 'l2'
  and 'rel_l2' (||pred - z||^2 / ||z||^2 per frame) are reported beside the loss.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from gpa_jax.acoustic import rows as rows_lib
from gpa_jax.acoustic.config import AcousticConfig, check_config
from gpa_jax.acoustic.model import AcousticModel, row_stage
from gpa_jax.training.model_kinds import ModelKind
from gpa_jax.training.train_step import token_cross_entropy


def codec_checkpoint_dir(config: ml_collections.ConfigDict) -> str:
    """config.codec.checkpoint_dir, else the codec checkpoint named in the shards' manifest."""
    if config.codec.checkpoint_dir:
        return config.codec.checkpoint_dir
    from gpa_jax.tasks import token_shards

    directory = rows_lib.token_dir(config)
    recorded = token_shards.read_manifest(directory).get("metadata", {}).get("codec_checkpoint")
    if not recorded:
        raise ValueError(
            f"config.codec.checkpoint_dir is empty and {directory}/manifest.json records no "
            "codec_checkpoint: set --config.codec.checkpoint_dir"
        )
    return recorded


@functools.lru_cache(maxsize=4)
def _load_codec(config_spec: str, checkpoint_dir: str):
    from gpa_jax.codec.train import restore_codec
    from gpa_jax.config_utils import load_config

    codec_config = load_config(config_spec)
    codec, step = restore_codec(codec_config, checkpoint_dir)
    return codec, step


_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _resolve_spec(spec: str) -> str:
    """A config path[:arg] relative to the working directory, else to the repository."""
    path, sep, arg = spec.partition(":")
    if not os.path.isfile(path) and os.path.isfile(os.path.join(_REPO, path)):
        path = os.path.join(_REPO, path)
    return path + sep + arg


def load_codec(config: ml_collections.ConfigDict):
    """(codec, step): the frozen codec of `config.codec` (cached per process).

    config.codec.config must be the codec config the checkpoint was trained with (a
    different shape fails in the restore, naming the mismatching array).
    """
    return _load_codec(
        _resolve_spec(config.codec.config), os.path.abspath(codec_checkpoint_dir(config))
    )


def codec_codebooks(codec) -> np.ndarray:
    """float32 [n_q, codebook_size, D] of a codec's RVQ."""
    return np.asarray(jax.device_get(codec.quantizer.codebooks()), np.float32)


def model_factory(config: ml_collections.ConfigDict):
    """config -> (rngs -> AcousticModel); the vocoder's codebooks are read here, once."""
    cfg = check_config(config)
    codebooks = codec_codebooks(load_codec(config)[0]) if cfg.variant == "vocoder" else None
    rules = config.sharding_rules

    def make(rngs: nnx.Rngs) -> AcousticModel:
        return AcousticModel(cfg, rngs=rngs, sharding_rules=rules, codebooks=codebooks)

    return make


def _per_task(x: jax.Array, task_ids: jax.Array | None, num_tasks: int) -> jax.Array:
    if task_ids is None:
        task_ids = jnp.zeros(x.shape, jnp.int32)
    onehot = jax.nn.one_hot(task_ids, num_tasks + 1, dtype=jnp.float32)
    return jnp.einsum("bl,blt->t", x, onehot)


def nar_targets(batch) -> jax.Array:
    """int32 [b, l]: each frame's code of its row's stage layer."""
    stage = row_stage(batch["stage"]).astype(jnp.int32)
    codes = batch["codes"].astype(jnp.int32)
    return jnp.take_along_axis(codes, stage[:, None, None], axis=-1)[..., 0]


def batch_sums(model: AcousticModel, batch, dropout_key, config) -> dict[str, jax.Array]:
    """Loss-weighted sums in the model_kinds contract (module docstring)."""
    cfg: AcousticConfig = model.cfg
    num_tasks = len(config.data.task_names)
    w = batch["decoder_loss_weights"].astype(jnp.float32)
    task_ids = batch.get(rows_lib.TASK_IDS_KEY)
    out = model(batch, dropout_key=dropout_key)
    if cfg.variant == "nar":
        nll, z, correct = token_cross_entropy(
            out, nar_targets(batch), float(config.optimizer.z_loss)
        )
        return {
            "loss_sum": jnp.sum(w * (nll + z)),
            "nll_sum": jnp.sum(w * nll),
            "z_sum": jnp.sum(w * z),
            "correct_sum": jnp.sum(w * correct),
            "weight_sum": jnp.sum(w),
            "task_nll_sum": _per_task(w * nll, task_ids, num_tasks),
            "task_correct_sum": _per_task(w * correct, task_ids, num_tasks),
            "task_weight_sum": _per_task(w, task_ids, num_tasks),
        }
    target = model.target_latent(batch["codes"])
    diff = out - target
    l1 = jnp.mean(jnp.abs(diff), axis=-1)
    l2 = jnp.mean(jnp.square(diff), axis=-1)
    rel = jnp.sum(jnp.square(diff), -1) / jnp.maximum(jnp.sum(jnp.square(target), -1), 1e-8)
    loss = cfg.l1_weight * l1 + cfg.l2_weight * l2
    return {
        "loss_sum": jnp.sum(w * loss),
        "nll_sum": jnp.sum(w * loss),
        "l1_sum": jnp.sum(w * l1),
        "l2_sum": jnp.sum(w * l2),
        "rel_l2_sum": jnp.sum(w * rel),
        "weight_sum": jnp.sum(w),
        "task_nll_sum": _per_task(w * loss, task_ids, num_tasks),
        "task_weight_sum": _per_task(w, task_ids, num_tasks),
    }


def make_iterators(config, *, workdir=None, process_index: int = 0, process_count: int = 1):
    """The acoustic rows' (train, eval) iterators: the SeqIO task (gpa_jax.acoustic.data,
    TensorFlow) or, with data.source='cache', its batches cached once and read with Grain."""
    kw = dict(workdir=workdir, process_index=process_index, process_count=process_count)
    if config.data.get("source", "tasks") == "cache":
        from gpa_jax.training.data_iter import cached_iterators

        return cached_iterators(config, workdir, bool(config.train.eval_every),
                                process_index=process_index, process_count=process_count)  # fmt: skip
    from gpa_jax.acoustic import data as data_lib

    return data_lib.make_iterators(config, **kw)


def acoustic_kind() -> ModelKind:
    return ModelKind(
        model_factory=model_factory,
        batch_sums=batch_sums,
        make_iterators=make_iterators,
        batch_keys=rows_lib.ROW_KEYS,
        optional_keys=(rows_lib.TASK_IDS_KEY,),
    )
