"""Building blocks: norms, RoPE, the attention mask, config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpa_jax.models import LMConfig, lm_model_config
from gpa_jax.models.layers import RMSNorm, apply_rope, make_attention_mask


def test_rmsnorm_matches_formula():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8)) * 3.0, jnp.float32)
    norm = RMSNorm(8, eps=1e-6)
    norm.scale[...] = jnp.arange(1.0, 9.0)
    expected = x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(norm(x), expected * np.arange(1.0, 9.0), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
    rope = jax.jit(apply_rope, static_argnums=2)

    def score(m, n):
        qm = rope(q, jnp.array([[m]]), 10_000.0)
        kn = rope(k, jnp.array([[n]]), 10_000.0)
        return float(jnp.sum(qm * kn))

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-4, abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)
    # Position 0 is the identity rotation.
    np.testing.assert_allclose(rope(q, jnp.zeros((1, 1), jnp.int32), 1e4), q, atol=1e-6)


def test_attention_mask_causal_segments_prefix_padding():
    seg = jnp.array([[1, 1, 1, 2, 2, 0]])
    prefix = jnp.array([[1, 1, 0, 1, 0, 0]])
    causal = np.asarray(make_attention_mask(seg)[0, 0]).astype(int)
    np.testing.assert_array_equal(
        causal,
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0],  # padding attends nothing and is never attended
        ],
    )
    with_prefix = np.asarray(make_attention_mask(seg, prefix)[0, 0]).astype(int)
    expected = causal.copy()
    expected[0, 1] = 1  # prefix positions 0 and 1 see each other
    np.testing.assert_array_equal(with_prefix, expected)


def test_config_validation_and_unknown_keys():
    assert LMConfig.from_config(lm_model_config()).num_layers == LMConfig().num_layers
    with pytest.raises(ValueError, match="unknown model config keys"):
        LMConfig.from_config({"num_layer": 3})
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        LMConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="remat_policy"):
        LMConfig(remat_policy="sometimes")


@pytest.mark.gpu
def test_cudnn_attention_matches_xla_with_packing_and_prefix():
    """The 'cudnn' knob gives the XLA result for the same boolean mask (GPU only)."""
    from gpa_jax.models.layers import attention_core

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 64, 4, 64)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((2, 64, 2, 64)), jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((2, 64, 2, 64)), jnp.bfloat16)
    seg = jnp.asarray([[1] * 40 + [2] * 20 + [0] * 4] * 2)
    prefix = jnp.asarray([[1] * 8 + [0] * 32 + [1] * 5 + [0] * 19] * 2)
    mask = make_attention_mask(seg, prefix)
    xla = attention_core(q, k, v, mask, implementation="xla")
    cudnn = attention_core(q, k, v, mask, implementation="cudnn")
    valid = np.asarray(seg > 0)
    np.testing.assert_allclose(
        np.asarray(cudnn, np.float32)[valid], np.asarray(xla, np.float32)[valid], atol=2e-2
    )
