"""gpa_1b: ~1.1 B params, Qwen3-style (our own shape between GPA-0.3B and Qwen3-1.7B).

28 layers, d 1536, 16 query / 8 kv heads of 128, SwiGLU 4608 (3x d), tied, QK-norm,
rope_theta 1e6, GPA's vocab (180,480 padded). Weights are fsdp-sharded inside a host
(mesh (data=-1, fsdp=8, tensor=1)): 1 B params + AdamW is ~16 GB of fp32 state.
"""

import ml_collections

from gpa_jax.models.config import lm_model_config, mesh_config
from gpa_jax.training.config import lm_config, optimizer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    model = lm_model_config(
        vocab_size=180_480,
        num_layers=28,
        embed_dim=1536,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=4608,
        rope_theta=1_000_000.0,
        max_len=4096,
        remat_policy="dots_with_no_batch_dims_saveable",
    )
    config = lm_config(model=model, mesh=mesh_config(shape=(-1, 8, 1)))
    config.optimizer = optimizer_config(learning_rate=3e-4, warmup_steps=2000)
    return config
