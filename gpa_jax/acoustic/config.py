"""The acoustic stage's hyper-parameters: one typed home for the model, builders for configs.

Top-level layout of an acoustic config (`kind='acoustic'`, trained by the LM trainer
through `gpa_jax.training.model_kinds`):

    kind            "acoustic"
    seed            params init, dropout, data order, stage draws
    model           AcousticConfig fields (below); `variant` picks the stage:
                      'nar'      USLM-style NAR model: predicts RVQ layer k (2..N) of every
                                 target frame from the known layers 1..k-1 + voice prompt
                      'vocoder'  LauraGPT-style one-step codec vocoder: regresses the
                                 codec's quantized latent (sum of all N codebook vectors)
                                 per frame from RVQ-1 + voice prompt (L1 + L2 loss)
    mesh, sharding_rules   as the LM (gpa_jax.models.config)
    optimizer       gpa_jax.training.config.optimizer_config
    train           gpa_jax.training.config.train_config; seq_len must hold
                    data.prompt_max_frames + data.target_max_frames
    data            token shards and example shaping (`data_config`)
    codec           the frozen codec: its config file and checkpoint directory (the
                    vocoder's regression target and evaluation's decoder)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from gpa_jax.models.config import (
    DEFAULT_SHARDING_RULES,
    check_block_fields,
    dataclass_config_dict,
    dataclass_from_config,
    mesh_config,
)

VARIANTS = ("nar", "vocoder")


@dataclasses.dataclass(frozen=True)
class AcousticConfig:
    """Acoustic transformer shape and numerics (the LM's block fields keep their names, so
    `gpa_jax.models.layers.Attention` / `MLP` take this config as they take an LMConfig).
    """

    variant: str = "nar"
    # The codec's RVQ: layers, codes per layer, and its latent size D (vocoder output).
    n_q: int = 8
    codebook_size: int = 1024
    latent_dim: int = 1024
    num_layers: int = 6
    embed_dim: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    mlp_dim: int = 1024
    rope_theta: float = 10_000.0
    max_len: int = 2048
    norm_eps: float = 1e-6
    qk_norm: bool = True
    dropout_rate: float = 0.0
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "xla"
    init_std: float = 0.02
    # Vocoder loss: l1_weight * mean|pred - z| + l2_weight * mean (pred - z)^2 per frame.
    l1_weight: float = 1.0
    l2_weight: float = 1.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"model.variant={self.variant!r}; expected one of {VARIANTS}")
        if self.n_q < 2:
            raise ValueError(f"model.n_q={self.n_q}: the acoustic stage needs >= 2 RVQ layers")
        check_block_fields(self)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> AcousticConfig:
        """From `config.model`; unknown keys are an error naming the valid ones."""
        return dataclass_from_config(cls, config, "acoustic model")


def model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.model` with AcousticConfig's defaults and `overrides` (validated)."""
    return dataclass_config_dict(AcousticConfig, **overrides)


def stage_task_names(n_q: int, variant: str) -> tuple[str, ...]:
    """Names of the per-stage metrics: task id k (1..n_q-1) = predicting RVQ layer k + 1
    ('rvq2'..'rvqN') for the NAR model; one 'latent' task for the vocoder."""
    if variant == "vocoder":
        return ("latent",)
    return tuple(f"rvq{k + 1}" for k in range(1, n_q))


def data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.data`: token shards, splits and how examples are cut.

    token_dir          token shards of the corpus (launch.tokenize output), all n_q layers
    train_split / eval_split   splits of those shards
    prompt_max_frames  voice prompt: a crop of a *different* utterance of the target's
                       speaker (another text, so never the target itself), <= this long
    prompt_min_frames  shorter references are used whole; none at all -> example dropped
    target_max_frames  longer targets are cropped (random start, fixed per example by
                       the seed); the NAR model is non-causal, so crops lose nothing
    eval_prompt_split  split the eval examples' prompts come from ('' = eval_split
                       itself); the default 'train' lets a held-out split with one
                       utterance per speaker still be evaluated (other sentences, so
                       never the target utterance)
    task_names         per-stage metric names (stage_task_names), set by acoustic_config
    namespace          SeqIO registry prefix: task <namespace>_<variant>
    verify_checksums   check shard sha256s on load
    source             'tasks' (the SeqIO task) or 'cache' (its batches cached once by
                       launch.cache_batches and read with Grain: gpa_jax.data.batch_cache)
    cache_dir / cache_workers  the cache's folder ('' = <workdir>/batch_cache) and its
                       Grain worker processes (0 = threads)
    """
    values = dict(
        token_dir="",
        train_split="train",
        eval_split="validation",
        prompt_max_frames=150,
        prompt_min_frames=25,
        target_max_frames=250,
        eval_prompt_split="train",
        task_names=stage_task_names(8, "nar"),
        namespace="acoustic",
        verify_checksums=True,
        source="tasks",
        cache_dir="",
        cache_workers=0,
    )
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"unknown acoustic data keys {unknown}; valid: {sorted(values)}")
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def codec_section(config: str = "configs/codec_tiny.py", checkpoint_dir: str = ""):
    """`config.codec`: the codec config file (path[:arg]) and its checkpoint directory
    ('' = the `codec_checkpoint` recorded in the token shards' manifest)."""
    return ml_collections.ConfigDict(dict(config=config, checkpoint_dir=checkpoint_dir))


def acoustic_config(
    *,
    model: ml_collections.ConfigDict,
    data: ml_collections.ConfigDict | None = None,
    codec: ml_collections.ConfigDict | None = None,
    mesh: ml_collections.ConfigDict | None = None,
    sharding_rules: tuple[tuple[str, Any], ...] = DEFAULT_SHARDING_RULES,
    seed: int = 0,
    train: ml_collections.ConfigDict | None = None,
    optimizer: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
    """The top-level acoustic config (see module docstring)."""
    from gpa_jax.training.config import optimizer_config, train_config

    cfg = AcousticConfig.from_config(model)
    config = ml_collections.ConfigDict()
    config.kind = "acoustic"
    config.seed = seed
    config.model = model
    config.mesh = mesh if mesh is not None else mesh_config()
    config.sharding_rules = tuple(tuple(rule) for rule in sharding_rules)
    config.train = train if train is not None else train_config()
    config.optimizer = optimizer if optimizer is not None else optimizer_config(z_loss=0.0)
    data = data if data is not None else data_config()
    data.task_names = stage_task_names(cfg.n_q, cfg.variant)
    config.data = data
    config.codec = codec if codec is not None else codec_section()
    return config


def check_config(config: ml_collections.ConfigDict) -> AcousticConfig:
    """Cross-field checks of an acoustic config; returns its AcousticConfig."""
    cfg = AcousticConfig.from_config(config.model)
    d = config.data
    need = int(d.prompt_max_frames) + int(d.target_max_frames)
    if need > int(config.train.seq_len):
        raise ValueError(
            f"train.seq_len={config.train.seq_len} cannot hold data.prompt_max_frames="
            f"{d.prompt_max_frames} + data.target_max_frames={d.target_max_frames}"
        )
    if int(config.train.seq_len) > cfg.max_len:
        raise ValueError(
            f"train.seq_len={config.train.seq_len} exceeds model.max_len={cfg.max_len}"
        )
    if not 0 < int(d.prompt_min_frames) <= int(d.prompt_max_frames):
        raise ValueError(
            f"need 0 < data.prompt_min_frames ({d.prompt_min_frames}) <= prompt_max_frames "
            f"({d.prompt_max_frames})"
        )
    expected = stage_task_names(cfg.n_q, cfg.variant)
    if tuple(d.task_names) != expected:
        raise ValueError(
            f"data.task_names={tuple(d.task_names)} but model.variant={cfg.variant!r} with "
            f"n_q={cfg.n_q} reports stages {expected}"
        )
    return cfg
