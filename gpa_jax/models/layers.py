"""Transformer building blocks (Qwen3-style): RMSNorm, RoPE, SwiGLU, GQA attention, embedding.

Conventions shared by every module here:
- Params are stored in `param_dtype` and cast to the compute `dtype` where they are used,
  so bf16 compute keeps fp32 master weights for the optimizer.
- Every param gets logical axis names via `nnx.with_partitioning(..., eager_sharding=False)`
  (flax 0.12 stores them as the Variable's `out_sharding` metadata). Eager sharding is
  off because the names are *logical*: `gpa_jax.sharding` maps them through the config's
  rules when it builds jit shardings, and the same module still builds without a mesh.
- Projections keep heads as their own kernel axis ([embed, heads, head_dim]) so tensor
  parallelism can shard heads without reshapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gpa_jax.sharding import with_logical_constraint

Initializer = Callable[..., jax.Array]
Rules = Any  # normalized sharding rules (see gpa_jax.sharding.normalize_rules) or None

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name: str | jnp.dtype) -> jnp.dtype:
    """'bfloat16' -> jnp.bfloat16 (dtype objects pass through)."""
    if isinstance(name, str):
        return jnp.dtype(_DTYPES[name])
    return jnp.dtype(name)


def partitioned(init: Initializer, logical_axes: Sequence[str | None]) -> Initializer:
    """`init` whose values carry logical axis names (not applied eagerly; see module doc)."""
    return nnx.with_partitioning(init, tuple(logical_axes), eager_sharding=False)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale; statistics in float32 for stability."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-6,
        dtype: str | jnp.dtype = "float32",
        param_dtype: str | jnp.dtype = "float32",
        logical_axes: Sequence[str | None] = ("norm",),
    ):
        self.eps = eps
        self.dtype = to_dtype(dtype)
        init = partitioned(nnx.initializers.ones, logical_axes)
        self.scale = nnx.Param(init(jax.random.key(0), (dim,), to_dtype(param_dtype)))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class DenseGeneral(nnx.Module):
    """Bias-free projection contracting the trailing `in_shape` dims of x with a kernel
    of shape in_shape + out_shape (fan-in scaled truncated normal init)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        logical_axes: Sequence[str | None],
        *,
        rngs: nnx.Rngs,
        dtype: str | jnp.dtype = "float32",
        param_dtype: str | jnp.dtype = "float32",
        out_dtype: str | jnp.dtype | None = None,
    ):
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        shape = in_shape + out_shape
        if len(logical_axes) != len(shape):
            raise ValueError(f"logical axes {logical_axes} do not match kernel shape {shape}")
        self.num_in = len(in_shape)
        self.dtype = to_dtype(dtype)
        # Accumulate/return in another dtype (float32 logits from bf16 inputs).
        self.out_dtype = None if out_dtype is None else to_dtype(out_dtype)
        init = nnx.initializers.variance_scaling(
            1.0,
            "fan_in",
            "truncated_normal",
            in_axis=tuple(range(len(in_shape))),
            out_axis=tuple(range(len(in_shape), len(shape))),
        )
        init = partitioned(init, logical_axes)
        self.kernel = nnx.Param(init(rngs.params(), shape, to_dtype(param_dtype)))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        x = x.astype(self.dtype)
        contract_x = tuple(range(x.ndim - self.num_in, x.ndim))
        contract_k = tuple(range(self.num_in))
        return jax.lax.dot_general(
            x, kernel, ((contract_x, contract_k), ((), ())), preferred_element_type=self.out_dtype
        )


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when `key` is None or `rate` is 0 (eval / no dropout)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding, split-halves layout (as in Qwen/Llama HF checkpoints).

    x: [batch, length, heads, head_dim]; positions: [batch, length] int (restart per
    packed segment). Angles are computed in float32 and the result cast back.
    """
    head_dim = x.shape[-1]
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, half]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def make_attention_mask(segment_ids: jax.Array, prefix_mask: jax.Array | None = None) -> jax.Array:
    """Boolean [batch, 1, q_len, kv_len] mask: True where attention is allowed.

    query q may attend key k iff both are in the same packed segment, k's segment is not
    padding (id 0), and k <= q (causal) -- or, when `prefix_mask` is given, both q and k
    lie in their segment's prefix (bidirectional prefix-LM attention). Padding queries
    attend nothing; the softmax then spreads uniformly (finite, and their loss weight is 0).
    """
    q_seg = segment_ids[:, :, None]
    k_seg = segment_ids[:, None, :]
    same_segment = (q_seg == k_seg) & (k_seg != 0)
    length = segment_ids.shape[1]
    idx = jnp.arange(length)
    allowed = (idx[:, None] >= idx[None, :])[None]
    if prefix_mask is not None:
        prefix = prefix_mask.astype(bool)
        allowed = allowed | (prefix[:, :, None] & prefix[:, None, :])
    return (same_segment & allowed)[:, None, :, :]


def attention_core(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    implementation: str = "xla",
) -> jax.Array:
    """Grouped-query attention through `jax.nn.dot_product_attention`.

    q: [b, t, heads, d]; k, v: [b, s, kv_heads, d]; mask: bool broadcastable to
    [b, heads, t, s]. The mask carries causality, packing and the prefix, so the same
    call serves training, prefill and (with a KV cache) decode.

    On 'cudnn' (GPU): jax 0.10.2's public API only expresses per-row padding
    (query_seq_lengths / key_value_seq_lengths) and `is_causal`; packed segments exist
    only in the private cuDNN entry point (q_offsets / kv_offsets). A boolean mask is
    accepted but becomes an additive bias, which still runs the fused kernel but without
    skipping masked blocks. That keeps one code path for packing + prefix everywhere.
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


class Attention(nnx.Module):
    """GQA self-attention with optional QK-norm (Qwen3) and RoPE.

    Split into `project_qkv` -> `attention_core` -> `project_out` so a KV-cache decode
    path can write k/v into a cache between the first two steps.
    """

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs, rules: Rules = None):
        self.cfg = cfg
        self.rules = rules
        e, h, kv, d = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.q_proj = DenseGeneral((e,), (h, d), ("embed", "heads", "head_dim"), **kw)
        self.k_proj = DenseGeneral((e,), (kv, d), ("embed", "kv_heads", "head_dim"), **kw)
        self.v_proj = DenseGeneral((e,), (kv, d), ("embed", "kv_heads", "head_dim"), **kw)
        self.o_proj = DenseGeneral((h, d), (e,), ("heads", "head_dim", "embed"), **kw)
        if cfg.qk_norm:
            norm_kw = dict(eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
            self.q_norm = RMSNorm(d, **norm_kw)
            self.k_norm = RMSNorm(d, **norm_kw)
        else:
            self.q_norm = None
            self.k_norm = None

    def project_qkv(
        self, x: jax.Array, positions: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [b, l, embed] -> q [b, l, heads, d], k/v [b, l, kv_heads, d] (normed, rotated)."""
        q = self.q_proj(x)
        k = self.k_proj(x)
        v = self.v_proj(x)
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q = apply_rope(q, positions, self.cfg.rope_theta)
        k = apply_rope(k, positions, self.cfg.rope_theta)
        q = with_logical_constraint(q, ("batch", "length", "heads", "head_dim"), self.rules)
        k = with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"), self.rules)
        v = with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"), self.rules)
        return q, k, v

    def project_out(self, o: jax.Array) -> jax.Array:
        """[b, l, heads, d] -> [b, l, embed]."""
        o = with_logical_constraint(o, ("batch", "length", "heads", "head_dim"), self.rules)
        return self.o_proj(o)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        q, k, v = self.project_qkv(x, positions)
        o = attention_core(q, k, v, mask, implementation=self.cfg.attention_impl)
        return self.project_out(o)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs, rules: Rules = None):
        self.rules = rules
        e, m = cfg.embed_dim, cfg.mlp_dim
        kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.gate_proj = DenseGeneral((e,), (m,), ("embed", "mlp"), **kw)
        self.up_proj = DenseGeneral((e,), (m,), ("embed", "mlp"), **kw)
        self.down_proj = DenseGeneral((m,), (e,), ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        h = with_logical_constraint(h, ("batch", "length", "mlp"), self.rules)
        return self.down_proj(h)


class Embedder(nnx.Module):
    """Token table [vocab, embed]: ids -> embeddings, and `logits` for a tied output layer."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        *,
        rngs: nnx.Rngs,
        init_std: float = 0.02,
        dtype: str | jnp.dtype = "float32",
        param_dtype: str | jnp.dtype = "float32",
        rules: Rules = None,
    ):
        self.dtype = to_dtype(dtype)
        self.rules = rules
        init = partitioned(nnx.initializers.normal(init_std), ("vocab", "embed"))
        self.embedding = nnx.Param(
            init(rngs.params(), (vocab_size, embed_dim), to_dtype(param_dtype))
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """[b, l] int -> [b, l, embed] in the compute dtype (gather first, then cast)."""
        table = with_logical_constraint(self.embedding[...], ("vocab", None), self.rules)
        x = jnp.take(table, tokens, axis=0).astype(self.dtype)
        return with_logical_constraint(x, ("batch", "length", "embed"), self.rules)

    def logits(self, h: jax.Array) -> jax.Array:
        """[b, l, embed] -> float32 [b, l, vocab] against the (tied) table."""
        table = self.embedding[...].astype(self.dtype)
        out = jnp.einsum(
            "bld,vd->blv", h.astype(self.dtype), table, preferred_element_type=jnp.float32
        )
        return with_logical_constraint(out, ("batch", "length", "vocab"), self.rules)
