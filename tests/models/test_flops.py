"""MaxText-style training FLOPs per token, checked against a hand count."""

import pytest

from gpa_jax import config_utils
from gpa_jax.models import LMConfig, count_params
from gpa_jax.models import flops as flops_lib


def test_gpa_tiny_flops_by_hand():
    cfg = LMConfig.from_config(config_utils.load_config("configs/gpa_tiny.py").model)
    # Per layer: q 256x4x64, k and v 256x2x64, o 4x64x256, SwiGLU 3 x 256x1024.
    per_layer = 65_536 + 2 * 32_768 + 65_536 + 786_432
    weights = 6 * per_layer + 4096 * 256  # + the (tied) logits projection
    assert flops_lib.matmul_weight_params(cfg) == weights == 6_946_816
    # Causal attention, forward: 4 * seq * heads * head_dim / 2 per layer; x3 to train.
    attention = 3 * 6 * (4 * 512 * 4 * 64 / 2)
    got = flops_lib.training_flops_per_token(cfg, seq_len=512)
    assert got.weight_flops == 6 * weights
    assert got.attention_flops == attention == 4_718_592
    assert got.total == 41_680_896 + 4_718_592


def test_weight_count_is_params_minus_norm_scales():
    """Every param but the norm scales takes part in a matmul per token (tied: the table
    once); the training-only CTC head runs on ASR source positions only, so it is not
    counted per token."""
    config = config_utils.load_config("configs/gpa_tiny.py")
    cfg = LMConfig.from_config(config.model)
    norms = cfg.num_layers * (2 * cfg.embed_dim + 2 * cfg.head_dim) + cfg.embed_dim
    ctc_head = cfg.embed_dim * cfg.embed_dim if cfg.ctc_weight > 0 else 0
    assert flops_lib.matmul_weight_params(cfg) == count_params(config) - norms - ctc_head


def test_mfu_and_peak_table():
    assert flops_lib.mfu(1e9, 1000.0, 2e12) == pytest.approx(0.5)
    assert flops_lib.peak_tflops_for("TPU v5 lite") == 197.0
    assert flops_lib.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert flops_lib.peak_tflops_for("cpu") is None
    with pytest.raises(ValueError, match="peak"):
        flops_lib.mfu(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="seq_len"):
        flops_lib.training_flops_per_token(LMConfig(), 0)
