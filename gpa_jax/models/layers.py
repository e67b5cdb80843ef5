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

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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
    causal: bool = False,
    q_block: int = 128,
) -> jax.Array:
    """Grouped-query attention: q [b, t, heads, d]; k, v [b, s, kv_heads, d] -> [b, t, heads, d].

    mask: bool broadcastable to [b, heads, t, s] (shape [b, 1 | heads, t, s]). The mask
    carries causality, packing and the prefix, so the same call serves training, prefill
    and (with a KV cache) decode.

    implementation:
      'xla' / 'cudnn': `jax.nn.dot_product_attention` (the accelerator path). On 'cudnn'
        (GPU), jax 0.10.2's public API only expresses per-row padding and `is_causal`;
        packed segments exist only in the private cuDNN entry point, so the boolean mask
        becomes an additive bias: still the fused kernel, without skipping masked blocks.
      'cpu': `blocked_attention` below, written for XLA:CPU (grouped heads as one matmul,
        causal query blocks, hand-written backward).
      'auto': 'cpu' when tracing for the CPU backend, else jax's own choice (cuDNN where
        it applies, XLA otherwise).
    causal: the caller promises that the mask never lets a query see a later key, with q
      and k at the same positions (t == s). Only 'cpu' uses it (to skip the key blocks
      above the diagonal); it is never needed for correctness.
    q_block: query rows per block for 'cpu'.
    """
    if implementation == "auto":
        implementation = "cpu" if jax.default_backend() == "cpu" else None
    if implementation == "cpu":
        return blocked_attention(q, k, v, mask, causal=causal, q_block=q_block)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


# --- attention for XLA:CPU -------------------------------------------------------------------
#
# Why a second implementation: on CPU, `jax.nn.dot_product_attention` (XLA path) builds the
# full [b, heads, t, s] score tensor per query-head group, and its autodiff backward runs
# the generic softmax/select gradients over that tensor several times; XLA:CPU spends most
# of an LM step there (`launch.bench_train --compare=model.attention_impl=xla` times both).
# `blocked_attention` computes the same function with
# (1) the g = heads / kv_heads query heads of a kv head stacked into one [g * t, d] x [d, s]
#     matmul per (batch, kv head), in a heads-major layout,
# (2) when `causal`, query blocks of `q_block` rows that only visit the keys up to their
#     last row (a (n + 1) / 2n share of the square for n blocks), each block's softmax
#     complete (no online rescaling: a block sees all keys it may attend),
# (3) a custom VJP that keeps the probabilities and uses the closed form
#     dS = P * (dP - rowsum(dO * O)), masked, instead of differentiating the softmax ops.
# Matmuls take the compute dtype and accumulate in float32; the softmax is float32.

_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def _query_blocks(t: int, s: int, causal: bool, q_block: int) -> list[tuple[int, int, int]]:
    """(row start, row stop, keys visited) per query block."""
    if not causal or t != s or t <= q_block:
        return [(0, t, s)]
    return [(a, min(a + q_block, t), min(a + q_block, t)) for a in range(0, t, q_block)]


def _q_heads_major(x: jax.Array, kv: int) -> jax.Array:
    """[b, t, kv * g, d] -> [b, kv, g, t, d]."""
    b, t, n, d = x.shape
    return jnp.transpose(x.reshape(b, t, kv, n // kv, d), (0, 2, 3, 1, 4))


def _heads_major(q, k, v, mask):
    """q -> [b, kv, g, t, d]; k, v -> [b, kv, s, d]; mask -> [b, 1 | kv, 1 | g, t, s]."""
    n, kv = q.shape[2], k.shape[2]
    if mask.ndim != 4 or mask.shape[1] not in (1, n):
        raise ValueError(f"attention mask shape {mask.shape}; expected [b, 1 or {n}, t, s]")
    if mask.shape[1] == 1:
        mh = mask[:, :, None]
    else:
        mh = mask.reshape(mask.shape[0], kv, n // kv, *mask.shape[2:])
    kh = jnp.transpose(k, (0, 2, 1, 3))
    vh = jnp.transpose(v, (0, 2, 1, 3))
    return _q_heads_major(q, kv), kh, vh, mh.astype(bool)


def _from_heads_major(x: jax.Array, dtype) -> jax.Array:
    """[b, kv, g, t, d] -> [b, t, kv * g, d]."""
    b, kv, g, t, d = x.shape
    return jnp.transpose(x, (0, 3, 1, 2, 4)).reshape(b, t, kv * g, d).astype(dtype)


def _blocked_forward(q, k, v, mask, causal, q_block):
    b, t, n, d = q.shape
    scale = d**-0.5
    qh, kh, vh, mh = _heads_major(q, k, v, mask)
    outs, probs = [], []
    for a, z, keys in _query_blocks(t, k.shape[1], causal, q_block):
        s = jnp.einsum(
            "bkgtd,bksd->bkgts",
            qh[:, :, :, a:z],
            kh[:, :, :keys],
            preferred_element_type=jnp.float32,
        )
        s = jnp.where(mh[..., a:z, :keys], s * scale, _MASK_VALUE)
        row_max = jnp.max(s, axis=-1, keepdims=True)
        e = jnp.exp(s - row_max)
        # Rows that may attend nothing (padding) get all-zero weights: their max is the
        # mask value itself. Masked entries of other rows underflow to exactly 0.
        inv = jnp.where(row_max > _MASK_VALUE, 1.0 / jnp.sum(e, axis=-1, keepdims=True), 0.0)
        p = e * inv
        o = jnp.einsum(
            "bkgts,bksd->bkgtd",
            p.astype(v.dtype),
            vh[:, :, :keys],
            preferred_element_type=jnp.float32,
        )
        outs.append(o)
        probs.append(p)
    o = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    out = _from_heads_major(o, q.dtype)
    return out, (q, k, v, out, tuple(probs))


def _blocked_backward(causal, q_block, residuals, d_out):
    q, k, v, out, probs = residuals
    b, t, n, d = q.shape
    s_len, kv = k.shape[1], k.shape[2]
    scale = d**-0.5
    qh = _q_heads_major(q, kv)
    kh = jnp.transpose(k, (0, 2, 1, 3))
    vh = jnp.transpose(v, (0, 2, 1, 3))
    do = _q_heads_major(d_out.astype(q.dtype), kv)
    oh = _q_heads_major(out, kv)
    # rowsum(dO * O) = rowsum(dP * P): the softmax-backward term, from [t, d] not [t, s].
    delta = jnp.sum(do.astype(jnp.float32) * oh.astype(jnp.float32), axis=-1, keepdims=True)
    dqs = []
    dk = jnp.zeros((b, kv, s_len, d), jnp.float32)
    dv = jnp.zeros((b, kv, s_len, d), jnp.float32)
    for (a, z, keys), p in zip(_query_blocks(t, s_len, causal, q_block), probs, strict=True):
        do_blk = do[:, :, :, a:z]
        dv_blk = jnp.einsum(
            "bkgts,bkgtd->bksd", p.astype(v.dtype), do_blk, preferred_element_type=jnp.float32
        )
        dp = jnp.einsum(
            "bkgtd,bksd->bkgts", do_blk, vh[:, :, :keys], preferred_element_type=jnp.float32
        )
        # P is exactly 0 wherever the mask is off, so dS needs no mask of its own.
        ds = (p * (dp - delta[:, :, :, a:z])).astype(q.dtype)
        dqs.append(
            jnp.einsum("bkgts,bksd->bkgtd", ds, kh[:, :, :keys], preferred_element_type=jnp.float32)
        )
        dk_blk = jnp.einsum(
            "bkgts,bkgtd->bksd", ds, qh[:, :, :, a:z], preferred_element_type=jnp.float32
        )
        if keys == s_len:
            dk, dv = dk + dk_blk, dv + dv_blk
        else:
            dk = dk.at[:, :, :keys].add(dk_blk)
            dv = dv.at[:, :, :keys].add(dv_blk)
    dq = dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=3)
    dq = _from_heads_major(dq * scale, q.dtype)
    dk = jnp.transpose(dk * scale, (0, 2, 1, 3)).astype(k.dtype)
    dv = jnp.transpose(dv, (0, 2, 1, 3)).astype(v.dtype)
    return dq, dk, dv, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blocked_attention(q, k, v, mask, causal, q_block):
    return _blocked_forward(q, k, v, mask, causal, q_block)[0]


_blocked_attention.defvjp(_blocked_forward, _blocked_backward)


def blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    causal: bool = False,
    q_block: int = 128,
) -> jax.Array:
    """`jax.nn.dot_product_attention(q, k, v, mask=mask)` for XLA:CPU (see the notes above).

    Same shapes and semantics as `attention_core`, except for rows that may attend
    nothing (padding queries): they output zeros and pass no gradient, where the
    reference spreads their weights uniformly over all keys. Such rows carry no loss
    weight and are never attended, so the losses and gradients agree.
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention shapes q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{q.shape[2]} query heads do not group over {k.shape[2]} kv heads")
    if q_block < 1:
        raise ValueError(f"q_block={q_block} must be >= 1")
    return _blocked_attention(q, k, v, mask, bool(causal), int(q_block))


def guided_attention_penalty(
    q: jax.Array, k: jax.Array, mask: jax.Array, guide: jax.Array, queries: jax.Array, heads: int
) -> jax.Array:
    """Sum over guided queries of (1 - attention mass inside `guide`), mean over the first
    `heads` heads.

    q [b, l, h, d] and k [b, l, kv, d] as the attention sees them (normed, rotated); mask
    [b, 1, l, l] bool; guide [b, l, l] in [0, 1] (0 off the band); queries [b, l] (1 on the
    guided query rows). The probabilities are recomputed in float32 for these heads only,
    so the fused attention kernels stay as they are.
    """
    group = q.shape[2] // k.shape[2]
    k_heads = jnp.repeat(k[:, :, : -(-heads // group)], group, axis=2)[:, :, :heads]
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk", q[:, :, :heads].astype(jnp.float32), k_heads.astype(jnp.float32)
    ) / np.sqrt(q.shape[-1])
    probs = jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1)
    mass = jnp.einsum("bhqk,bqk->bhq", probs, guide.astype(jnp.float32))
    return jnp.sum(queries.astype(jnp.float32)[:, None, :] * (1.0 - mass)) / heads


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

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        *,
        causal: bool = False,
        guide: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """causal: `mask` never lets a query see a later position (see `attention_core`).

        guide: (band [b, l, l], query rows [b, l]); then returns (output, penalty) with
        `guided_attention_penalty` of the first cfg.guide_heads heads.
        """
        q, k, v = self.project_qkv(x, positions)
        penalty = None
        if guide is not None:
            penalty = guided_attention_penalty(q, k, mask, *guide, heads=self.cfg.guide_heads)
        o = attention_core(
            q,
            k,
            v,
            mask,
            implementation=self.cfg.attention_impl,
            causal=causal,
            q_block=getattr(self.cfg, "attention_q_block", 128),
        )
        out = self.project_out(o)
        return out if penalty is None else (out, penalty)


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

    def logits(self, h: jax.Array, rows: int | None = None) -> jax.Array:
        """[b, l, embed] -> float32 [b, l, vocab] against the (tied) table; against its
        first `rows` rows only when given ([b, l, rows])."""
        table = self.embedding[...] if rows is None else self.embedding[:rows]
        table = table.astype(self.dtype)
        out = jnp.einsum(
            "bld,vd->blv", h.astype(self.dtype), table, preferred_element_type=jnp.float32
        )
        return with_logical_constraint(out, ("batch", "length", "vocab"), self.rules)
