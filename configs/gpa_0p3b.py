"""gpa_0p3b: ~0.31 B params, the shape of GPA's 0.3 B Qwen3 backbone (AutoArk GPA-0.3B).

GPA-0.3B-preview is a Qwen3ForCausalLM with 28 layers, hidden 512, intermediate 3072,
16 query / 8 kv heads, max positions 32768 and a 180,445-token vocabulary (text +
audio + control). head_dim 128, tied embeddings and rope_theta 1e6 are Qwen3's values
and reproduce the published 0.31 B total. Our vocab is 180,480 = 180,445 padded up to
a multiple of 128 so the vocab axis shards evenly; the tokenizer issue sets the real
size. bf16 compute, scanned layers (accelerator config).
"""

import ml_collections

from gpa_jax.models.config import lm_model_config, mesh_config
from gpa_jax.training.config import lm_config, optimizer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    model = lm_model_config(
        vocab_size=180_480,
        num_layers=28,
        embed_dim=512,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=3072,
        rope_theta=1_000_000.0,
        max_len=4096,
    )
    config = lm_config(model=model, mesh=mesh_config(shape=(-1, 1, 1)))
    config.optimizer = optimizer_config(learning_rate=5e-4, warmup_steps=2000)
    return config
