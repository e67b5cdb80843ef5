"""The XLA:CPU attention ('cpu', layers.blocked_attention) against jax.nn.dot_product_attention."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpa_jax.models import LMConfig
from gpa_jax.models.layers import attention_core, blocked_attention, make_attention_mask
from tests.models.helpers import numpy_model

# Row 0: two packed segments and padding; row 1: one segment, no padding; row 2: all
# padding but the first 3 positions (rows that attend nothing exist in every block).
_SEGMENTS = np.array([[1] * 17 + [2] * 15 + [0] * 8, [1] * 40, [1] * 3 + [0] * 37], dtype=np.int32)
_PREFIX = np.array(
    [[1] * 5 + [0] * 12 + [1] * 4 + [0] * 19, [1] * 9 + [0] * 31, [1] * 2 + [0] * 38]
)


def _qkv(dtype, b=3, t=40, heads=4, kv_heads=2, d=16, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, heads, d))
    k = rng.standard_normal((b, t, kv_heads, d))
    v = rng.standard_normal((b, t, kv_heads, d))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _loss(attn, q, k, v, mask, cotangent):
    return jnp.sum(attn(q, k, v, mask).astype(jnp.float32) * cotangent)


def _value_and_grads(attn, q, k, v, mask, cotangent):
    fn = jax.jit(
        jax.value_and_grad(lambda q, k, v: _loss(attn, q, k, v, mask, cotangent), (0, 1, 2))
    )
    out = jax.jit(attn)(q, k, v, mask)
    return out, fn(q, k, v)[1]


def _reference(q, k, v, mask):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


@pytest.mark.parametrize(
    "causal, use_prefix, q_block",
    [(True, False, 16), (True, False, 7), (False, True, 16), (False, False, 64)],
)
def test_blocked_attention_matches_reference_forward_and_gradients(causal, use_prefix, q_block):
    q, k, v = _qkv(jnp.float32)
    seg = jnp.asarray(_SEGMENTS)
    mask = make_attention_mask(seg, jnp.asarray(_PREFIX) if use_prefix else None)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)

    def ours(q, k, v, m):
        return blocked_attention(q, k, v, m, causal=causal, q_block=q_block)

    # The loss reads the rows that attend something (padding rows carry no loss weight).
    attends = np.asarray(mask).any(axis=-1)[:, 0]  # [b, t]
    assert not attends.all()
    cot = cot * jnp.asarray(attends, jnp.float32)[:, :, None, None]
    out, grads = _value_and_grads(ours, q, k, v, mask, cot)
    ref_out, ref_grads = _value_and_grads(_reference, q, k, v, mask, cot)
    np.testing.assert_allclose(out[attends], ref_out[attends], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[~attends], 0.0)  # rows that attend nothing
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, err_msg=f"d{name}")
        assert float(jnp.max(jnp.abs(r))) > 1e-2  # the gradient is not trivially zero


def test_blocked_attention_bfloat16_close_to_reference():
    q, k, v = _qkv(jnp.bfloat16, seed=3)
    mask = make_attention_mask(jnp.asarray(_SEGMENTS))
    attends = np.asarray(mask).any(axis=-1)[:, 0]
    cot = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)
    cot = cot * jnp.asarray(attends, jnp.float32)[:, :, None, None]

    def ours(q, k, v, m):
        return blocked_attention(q, k, v, m, causal=True, q_block=16)

    out, grads = _value_and_grads(ours, q, k, v, mask, cot)
    # The float32 reference on the same bf16 inputs bounds both bf16 implementations.
    exact_out, exact_grads = _value_and_grads(
        _reference, *(x.astype(jnp.float32) for x in (q, k, v)), mask, cot
    )
    ref_out, ref_grads = _value_and_grads(_reference, q, k, v, mask, cot)

    def err(a, b):
        return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))

    out, ref_out, exact_out = (x[attends] for x in (out, ref_out, exact_out))
    assert err(out, exact_out) <= 1.5 * err(ref_out, exact_out) + 1e-2
    for g, r, e in zip(grads, ref_grads, exact_grads, strict=True):
        scale = float(jnp.max(jnp.abs(e)))
        assert err(g, e) <= 1.5 * err(r, e) + 1e-2 * scale


def test_per_head_mask_and_cross_lengths():
    """A [b, heads, t, s] mask and t != s (decode over a cache) take the unblocked path."""
    q, _, _ = _qkv(jnp.float32, t=5)
    _, k, v = _qkv(jnp.float32, t=12, seed=4)
    rng = np.random.default_rng(5)
    mask = jnp.asarray(rng.random((3, 4, 5, 12)) < 0.6).at[..., 0].set(True)
    out = blocked_attention(q, k, v, mask, causal=True, q_block=2)  # causal ignored: t != s
    np.testing.assert_allclose(out, _reference(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_auto_is_cpu_on_the_cpu_backend_and_bad_shapes_fail():
    q, k, v = _qkv(jnp.float32)
    mask = make_attention_mask(jnp.asarray(_SEGMENTS))
    auto = attention_core(q, k, v, mask, implementation="auto", causal=True, q_block=16)
    cpu = attention_core(q, k, v, mask, implementation="cpu", causal=True, q_block=16)
    np.testing.assert_array_equal(auto, cpu)
    with pytest.raises(ValueError, match="do not group"):
        blocked_attention(q[:, :, :3], k, v, mask)
    with pytest.raises(ValueError, match="attention mask shape"):
        blocked_attention(q, k, v, mask[:, :, :, :, None])


@pytest.mark.parametrize("prefix_bidirectional", [False, True])
def test_decoder_with_cpu_attention_matches_xla(prefix_bidirectional):
    """The whole LM: same logits and parameter gradients with 'cpu' and 'xla' attention."""
    base = LMConfig(
        vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
        mlp_dim=64, dtype="float32", scan_layers=False, attention_q_block=8,
        prefix_bidirectional=prefix_bidirectional,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, 64, _SEGMENTS.shape), jnp.int32)
    seg = jnp.asarray(_SEGMENTS)
    positions = jnp.asarray(
        np.concatenate([np.arange(17), np.arange(15), np.zeros(8)])[None].repeat(3, 0), jnp.int32
    )
    prefix = jnp.asarray(_PREFIX)

    def logits_and_grads(impl):
        model = numpy_model(dataclasses.replace(base, attention_impl=impl))

        def loss(m):
            out = m(tokens, seg, positions, prefix)
            # Padding (segment 0) carries no loss weight, as in training.
            return jnp.sum(jnp.where(seg[..., None] > 0, out * jnp.cos(out), 0.0)), out

        grads, out = nnx.jit(nnx.grad(loss, has_aux=True))(model)
        return out, nnx.to_pure_dict(grads)

    out, grads = logits_and_grads("cpu")
    ref, ref_grads = logits_and_grads("xla")
    real = np.asarray(_SEGMENTS) > 0
    np.testing.assert_allclose(out[real], ref[real], rtol=1e-4, atol=1e-4)
    flat, ref_flat = jax.tree.leaves(grads), jax.tree.leaves(ref_grads)
    assert len(flat) == len(ref_flat) > 0
    for g, r in zip(flat, ref_flat, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4)
