"""The LM's hyper-parameters: one typed home for their defaults, ConfigDict builders on top.

`LMConfig` is the single source of truth for every model field and its default; the
ml_collections builders below are generated from it, so a config file only states what
differs from the defaults, and `LMConfig.from_config` rejects unknown keys (a typo in a
config or sweep fails loudly instead of being ignored).

The top-level LM config that holds `model`, `mesh` and `sharding_rules` is
`gpa_jax.training.config.lm_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Read in order; for each array dimension the first rule whose
# mesh axes are still unused by earlier dimensions of the same array wins (flax-linen
# semantics). That lets one name serve params and activations: a kernel's "embed" goes
# to fsdp (ZeRO-3 style weight sharding), while an activation [batch, length, embed]
# already spent fsdp on "batch", so its "embed" stays replicated.
DEFAULT_SHARDING_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)

REMAT_POLICIES = (
    "none",  # no rematerialisation
    "full",  # save nothing; recompute the whole block in the backward pass
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "everything_saveable",
)
# 'xla' / 'cudnn': jax.nn.dot_product_attention (the accelerator path); 'cpu': the
# XLA:CPU implementation in layers.blocked_attention; 'auto': 'cpu' on the CPU backend,
# else jax's own choice (cuDNN where it applies).
ATTENTION_IMPLS = ("xla", "cudnn", "cpu", "auto")
DTYPES = ("float32", "bfloat16", "float16")
# model.audio_input values (LMConfig).
AUDIO_INPUTS = ("tokens", "continuous", "hybrid")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Decoder-only LM shape and numerics. Defaults are the `gpa_tiny` CPU shape."""

    vocab_size: int = 4096
    num_layers: int = 6
    embed_dim: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    mlp_dim: int = 1024
    # Qwen3 uses 1e6 for 32k contexts; small models on short sequences may use 1e4.
    rope_theta: float = 1_000_000.0
    # Longest packed sequence the data pipeline may build (positions stay below it).
    max_len: int = 2048
    norm_eps: float = 1e-6
    qk_norm: bool = True
    tie_embeddings: bool = True
    # Whether `prefix_mask` (bidirectional attention within each segment's prefix) is
    # honoured. False keeps the model strictly causal even when the batch carries one.
    prefix_bidirectional: bool = False
    dropout_rate: float = 0.0
    scan_layers: bool = True
    remat_policy: str = "none"
    # Compute dtype (activations, matmul inputs); params are stored in `param_dtype`
    # and cast at use. Logits and the loss are always float32.
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    # 'xla' runs everywhere; 'cudnn' asks for cuDNN flash attention (GPU only); 'cpu' and
    # 'auto' see ATTENTION_IMPLS.
    attention_impl: str = "xla"
    # Query rows per block of the 'cpu' attention (causal blocks skip later keys).
    attention_q_block: int = 128
    # Std of the token-embedding init (also the tied output projection), as in Qwen.
    init_std: float = 0.02
    # Guided attention (DC-TTS's diagonal prior, here on a decoder-only LM): the first
    # `guide_heads` heads of every layer are pushed to attend, from output position t of T,
    # to the conditioning input (TTS text, ASR / VC source) near position t/T of it, within
    # a Gaussian of width `guide_sigma` (in fractions of the lengths). The penalty, 1 - the
    # attention mass inside that band per output token, is added to the loss times
    # `guide_weight` (0 = off). gpa_jax.training.attention_guide builds the band.
    guide_weight: float = 0.0
    guide_heads: int = 1
    guide_sigma: float = 0.2
    # Auxiliary CTC on the ASR source (hybrid CTC/attention, as in ESPnet's joint
    # training): the final hidden states at an ASR example's source-audio positions,
    # through `ctc_proj` and the tied output table (blank = <pad>), are trained by CTC
    # towards its transcript, added to the loss times `ctc_weight` (0 = off). It teaches
    # the source positions to carry what was said, which the transcript positions then
    # read. At most `ctc_examples_per_row` ASR examples of a packed row with at most
    # `ctc_max_frames` source frames take part (gpa_jax.training.asr_ctc builds the layout;
    # its cost is [batch, examples_per_row * max_frames] positions through the output
    # table). The defaults fit the default corpus: 4.4 s (222 frames) per utterance on
    # average, so a 512-token row holds about two ASR examples.
    # `ctc_classes` > 0: the CTC softmax spans only the vocabulary's first ids [0,
    # ctc_classes), the control ids and the text range (the only labels CTC ever has):
    # through the whole 4096-id table of gpa_tiny, the [batch, examples_per_row *
    # max_frames, vocab] logits made the CTC 1.6 s of a 5.8 s step; over the text ids it
    # is 0.3 s of 4.4 s (launch.bench_train, 2 CPU cores). 0 (or >= vocab_size,
    # e.g. a small test vocabulary under gpa_tiny's setting) = the whole vocabulary.
    ctc_weight: float = 0.0
    ctc_examples_per_row: int = 2
    ctc_max_frames: int = 512
    ctc_classes: int = 0
    # How audio *inputs* (ASR / VC source, TTS / VC reference) enter the LM; outputs are
    # codec tokens in every variant. "tokens": their RVQ ids' embeddings (GPA / USLM).
    # "continuous" (LauraGPT): token-aligned feature rows of `audio_feature_dim` (log-mel,
    # or the codec's CTC teacher features: data.token_features) through an encoder of
    # `audio_encoder_layers` blocks of this shape (0: the convolution and projection only,
    # for rows that already carry context) (gpa_jax.models.audio_encoder) replace the
    # embeddings at those positions.
    # "hybrid" (WHISPER-GPT): every position reads Linear(concat(a causal encoding of the
    # feature rows up to it, RMSNorm(token embedding))); positions without a recorded row
    # (text, control tokens, every generated position) read a learned null row instead.
    audio_input: str = "tokens"
    audio_encoder_layers: int = 2
    audio_feature_dim: int = 160
    # Hybrid only: in training each recorded row is replaced by the null row with this
    # probability, so the LM also learns to read tokens where no mel exists (decoding).
    mel_dropout: float = 0.15

    def __post_init__(self):
        check_block_fields(self)
        if self.audio_input not in AUDIO_INPUTS:
            raise ValueError(f"audio_input={self.audio_input!r}; expected one of {AUDIO_INPUTS}")
        if not 0.0 <= self.mel_dropout < 1.0:
            raise ValueError(f"mel_dropout={self.mel_dropout} must be in [0, 1) (a probability)")
        if self.audio_encoder_layers < 0 or self.audio_feature_dim < 1:
            raise ValueError(
                f"audio_encoder_layers={self.audio_encoder_layers} must be >= 0 and "
                f"audio_feature_dim={self.audio_feature_dim} >= 1"
            )
        if self.attention_q_block < 1:
            raise ValueError(f"attention_q_block={self.attention_q_block} must be >= 1")
        if self.guide_weight < 0 or self.guide_sigma <= 0:
            raise ValueError(
                f"guide_weight={self.guide_weight} must be >= 0 and guide_sigma="
                f"{self.guide_sigma} > 0"
            )
        if self.ctc_weight < 0 or self.ctc_examples_per_row < 1 or self.ctc_max_frames < 1:
            raise ValueError(
                f"ctc_weight={self.ctc_weight} must be >= 0, ctc_examples_per_row="
                f"{self.ctc_examples_per_row} and ctc_max_frames={self.ctc_max_frames} >= 1"
            )
        if not (self.ctc_classes == 0 or self.ctc_classes >= 2):
            raise ValueError(
                f"ctc_classes={self.ctc_classes}: expected 0 (the whole vocabulary) or >= 2"
            )
        if not 1 <= self.guide_heads <= self.num_heads:
            raise ValueError(f"guide_heads={self.guide_heads}; expected 1..num_heads={self.num_heads}")

    def needs_train_rng(self) -> bool:
        """Whether a training forward draws random numbers (dropout, or the hybrid
        variant's mel dropout): the train step passes a key iff this holds."""
        mel = self.audio_input == "hybrid" and self.mel_dropout > 0.0
        return self.dropout_rate > 0.0 or mel

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> LMConfig:
        """Builds from `config.model`; unknown keys are an error naming the valid ones."""
        return dataclass_from_config(cls, config, "model config")


def check_block_fields(cfg: Any) -> None:
    """The transformer-block fields an LMConfig and an AcousticConfig share: GQA heads,
    RoPE head_dim, remat policy, attention implementation, dtypes, dropout."""
    if cfg.num_heads % cfg.num_kv_heads:
        raise ValueError(
            f"num_heads={cfg.num_heads} must be a multiple of num_kv_heads="
            f"{cfg.num_kv_heads} (grouped-query attention)"
        )
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim={cfg.head_dim} must be even for RoPE")
    if cfg.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"remat_policy={cfg.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if cfg.attention_impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"attention_impl={cfg.attention_impl!r}; expected one of {ATTENTION_IMPLS}"
        )
    for field in ("dtype", "param_dtype"):
        if getattr(cfg, field) not in DTYPES:
            raise ValueError(f"{field}={getattr(cfg, field)!r}; expected one of {DTYPES}")
    if not 0.0 <= cfg.dropout_rate < 1.0:
        raise ValueError(f"dropout_rate={cfg.dropout_rate} must be in [0, 1)")


def dataclass_from_config(cls: type, config: Any, what: str) -> Any:
    """`cls(**config)` for a ConfigDict or mapping; unknown keys are an error naming `what`
    and the valid keys."""
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; valid keys: {sorted(known)}")
    return cls(**values)


def dataclass_config_dict(cls: type, **overrides: Any) -> ml_collections.ConfigDict:
    """A ConfigDict of `cls`'s defaults with `overrides` applied (validated by `cls`)."""
    values = dataclasses.asdict(cls(**overrides))
    # Store float fields as floats even when given as ints (rope_theta=10_000), so
    # command-line overrides parse them as floats.
    for field in dataclasses.fields(cls):
        if field.type == "float":
            values[field.name] = float(values[field.name])
    return ml_collections.ConfigDict(values)


def lm_model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.model` with LMConfig's defaults, `overrides` applied (and validated)."""
    return dataclass_config_dict(LMConfig, **overrides)


def mesh_config(
    shape: tuple[int, ...] = (-1, 1, 1), dcn_shape: tuple[int, ...] = (1, 1, 1)
) -> ml_collections.ConfigDict:
    """`config.mesh`: per-slice `shape` (one -1 = infer) and across-slice `dcn_shape`."""
    if len(shape) != len(MESH_AXES) or len(dcn_shape) != len(MESH_AXES):
        raise ValueError(f"mesh shapes need {len(MESH_AXES)} entries for axes {MESH_AXES}")
    mesh = ml_collections.ConfigDict()
    mesh.axes = MESH_AXES
    mesh.shape = tuple(shape)
    mesh.dcn_shape = tuple(dcn_shape)
    return mesh
