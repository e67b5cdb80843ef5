"""The LM: config, layers and the decoder-only transformer."""

from gpa_jax.models.config import (
    DEFAULT_SHARDING_RULES,
    LMConfig,
    lm_model_config,
    mesh_config,
)
from gpa_jax.models.transformer import (
    DecoderBlock,
    DecoderLM,
    DecoderStack,
    count_params,
    create_sharded_model,
    make_lm,
)

__all__ = [
    "DEFAULT_SHARDING_RULES",
    "DecoderBlock",
    "DecoderLM",
    "DecoderStack",
    "LMConfig",
    "count_params",
    "create_sharded_model",
    "lm_model_config",
    "make_lm",
    "mesh_config",
]
