"""The LM: config, layers, the shared block stack and the decoder-only transformer.

Modules, bottom to top: `config` (LMConfig), `layers` (attention, MLP, norms, embedder),
`stack` (DecoderBlock / DecoderStack and the KV cache), `audio_encoder` (LauraGPT /
WHISPER-GPT audio input, on the stack), `transformer` (DecoderLM, make_lm), `flops`.
"""

from gpa_jax.models.config import (
    DEFAULT_SHARDING_RULES,
    LMConfig,
    lm_model_config,
    mesh_config,
)
from gpa_jax.models.stack import DecoderBlock, DecoderStack
from gpa_jax.models.transformer import DecoderLM, count_params, create_sharded_model, make_lm

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
