"""gpa_8b_pod: ~8.4 B params shaped like Qwen3-8B, for TPU pods / multi-host GPU.

Qwen3-8B: 36 layers, hidden 4096, 32 query / 8 kv heads of 128, intermediate 12288,
untied embeddings, QK-norm, rope_theta 1e6 (8.2 B with its 151,936 vocab; 8.4 B with
ours, GPA's 180,480). Mesh: fsdp over a whole slice (ZeRO-3 weights; `-1` = all chips
of the slice), tensor 1, data parallel across slices over DCN. E.g. two v5p-128 slices:
`--config.mesh.dcn_shape="(2, 1, 1)"`. Full remat keeps activations to one layer.
`arg` = "tp4" moves 4-way tensor parallelism into the slice (for long sequences).
"""

import ml_collections

from gpa_jax.models.config import lm_model_config, mesh_config
from gpa_jax.training.config import lm_config, optimizer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    model = lm_model_config(
        vocab_size=180_480,
        num_layers=36,
        embed_dim=4096,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=12288,
        rope_theta=1_000_000.0,
        max_len=8192,
        tie_embeddings=False,
        remat_policy="full",
    )
    shape = (1, -1, 4) if arg == "tp4" else (1, -1, 1)
    config = lm_config(model=model, mesh=mesh_config(shape=shape, dcn_shape=(1, 1, 1)))
    config.optimizer = optimizer_config(learning_rate=3e-4, warmup_steps=2000, z_loss=1e-4)
    return config
