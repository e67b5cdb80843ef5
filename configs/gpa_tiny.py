"""gpa_tiny: the CPU-trainable LM (~7 M params), PERFORMANCE.md's reference shape.

vocab 4096, d 256, 6 layers, 4 heads / 2 kv heads (head_dim 64), SwiGLU 1024, tied,
QK-norm: the HF Qwen3 baseline's shape, so JAX and PyTorch throughput compare 1:1.
Float32 compute and unrolled layers: faster on a 2-core CPU (PERFORMANCE.md), and
compile time is no issue at 6 layers. `arg` = "bf16" switches compute to bfloat16.
"""

import ml_collections

from gpa_jax.models.config import lm_config, lm_model_config, mesh_config
from gpa_jax.training.train_step import optimizer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    model = lm_model_config(
        vocab_size=4096,
        num_layers=6,
        embed_dim=256,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        mlp_dim=1024,
        rope_theta=10_000.0,
        max_len=512,
        scan_layers=False,
        dtype="bfloat16" if arg == "bf16" else "float32",
        # 'cpu' attention on the CPU backend (layers.blocked_attention), jax's own on GPU/TPU.
        attention_impl="auto",
    )
    config = lm_config(model=model, mesh=mesh_config(shape=(-1, 1, 1)))
    config.optimizer = optimizer_config(
        learning_rate=1e-3, warmup_steps=200, total_steps=5000, weight_decay=0.01
    )
    return config
