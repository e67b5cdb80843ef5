"""The transformer block stack shared by the LM and the audio encoder: `DecoderBlock`,
`DecoderStack` and the KV cache (`init_cache`, `cache_logical_axes`).

The stack consumes embeddings [batch, length, embed] and returns final-normed hidden
states, so any model that makes embeddings (the LM's `Embedder`, LauraGPT's audio
encoder, WHISPER-GPT's fusion) reuses it; it sits below both `transformer` and
`audio_encoder`, which build on it.

Layers are either unrolled (`nnx.List`) or stacked along a leading 'layers' axis and run
with `nnx.scan` (one compiled block; fast compiles for deep models). The stacked params
are made by `nnx.vmap` over the block constructor with `nnx.split_rngs`, and
`transform_metadata={nnx.PARTITION_NAME: 'layers'}` prepends 'layers' to every param's
logical axes, so the sharding rules see [layers, embed, heads, head_dim] etc.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gpa_jax.models.config import LMConfig
from gpa_jax.models.layers import (
    MLP,
    Attention,
    RMSNorm,
    attention_core,
    dropout,
    make_attention_mask,
    to_dtype,
)
from gpa_jax.sharding import with_logical_constraint

# Logical axes of the activations between blocks.
ACTIVATION_AXES = ("batch", "length", "embed")


class DecoderBlock(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)); dropout on each branch."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, rules: Any = None):
        self.cfg = cfg
        self.rules = rules
        norm_kw = dict(eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.pre_attn_norm = RMSNorm(cfg.embed_dim, **norm_kw)
        self.attn = Attention(cfg, rngs=rngs, rules=rules)
        self.pre_mlp_norm = RMSNorm(cfg.embed_dim, **norm_kw)
        self.mlp = MLP(cfg, rngs=rngs, rules=rules)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        dropout_key: jax.Array | None = None,
        guide: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """x -> x, or (x, guided-attention penalty) when `guide` is given (Attention)."""
        attn_key = mlp_key = None
        if dropout_key is not None:
            attn_key, mlp_key = jax.random.split(dropout_key)
        # Without a bidirectional prefix the stack's mask is causal (DecoderStack drops
        # prefix_mask), which lets the 'cpu' attention skip the blocks above the diagonal.
        h = self.attn(
            self.pre_attn_norm(x), positions, mask, causal=not self.cfg.prefix_bidirectional,
            guide=guide,
        )  # fmt: skip
        penalty = None
        if guide is not None:
            h, penalty = h
        x = x + dropout(h, self.cfg.dropout_rate, attn_key)
        h = self.mlp(self.pre_mlp_norm(x))
        x = x + dropout(h, self.cfg.dropout_rate, mlp_key)
        x = with_logical_constraint(x, ACTIVATION_AXES, self.rules)
        return x if penalty is None else (x, penalty)

    # --- KV-cache inference (deterministic: no dropout) -----------------------------------

    def _finish(self, x: jax.Array, attn_out: jax.Array) -> jax.Array:
        x = x + attn_out
        x = x + self.mlp(self.pre_mlp_norm(x))
        return with_logical_constraint(x, ACTIVATION_AXES, self.rules)

    def prefill(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The block over a whole prompt; also returns its k/v [b, l, kv_heads, d] for a cache."""
        q, k, v = self.attn.project_qkv(self.pre_attn_norm(x), positions)
        o = attention_core(q, k, v, mask, implementation=self.cfg.attention_impl)
        return self._finish(x, self.attn.project_out(o)), k, v

    def decode(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache_k: jax.Array,
        cache_v: jax.Array,
        index: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [b, t, embed] at cache slots index..index+t-1 (same for every row).

        Writes the new k/v into `cache_k`/`cache_v` [b, kv_heads, S, d] at `index`, then
        attends over the whole cache with `mask` [b, 1, t, S] (which hides empty slots and
        padding). Returns (x, cache_k, cache_v).
        """
        q, k, v = self.attn.project_qkv(self.pre_attn_norm(x), positions)
        cache_k = _write_cache(cache_k, k, index, self.rules)
        cache_v = _write_cache(cache_v, v, index, self.rules)
        o = attention_core(
            q,
            _read_cache(cache_k, q.dtype),
            _read_cache(cache_v, q.dtype),
            mask,
            implementation=self.cfg.attention_impl,
        )
        return self._finish(x, self.attn.project_out(o)), cache_k, cache_v


# One layer's k or v: [batch, kv_heads, length, head_dim]. Heads before length, so the
# decode attention's q.k and p.v products read the cache as batched matmuls without
# transposing the whole cache every step (measured: the [b, length, kv, d] layout made
# XLA:CPU copy each layer's cache per token).
CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")
STACKED_CACHE_AXES = ("layers", *CACHE_AXES)


def _write_cache(cache: jax.Array, new: jax.Array, index: jax.Array, rules: Any) -> jax.Array:
    """Writes new [b, t, kv_heads, d] at length slots index..index+t-1 of cache."""
    new = jnp.swapaxes(new, 1, 2).astype(cache.dtype)
    cache = jax.lax.dynamic_update_slice_in_dim(cache, new, index, axis=2)
    return with_logical_constraint(cache, CACHE_AXES, rules)


def _read_cache(cache: jax.Array, dtype: Any) -> jax.Array:
    """The cache as attention_core's k/v layout [b, length, kv_heads, d]."""
    return jnp.swapaxes(cache, 1, 2).astype(dtype)


def init_cache(cfg: LMConfig, batch: int, length: int, dtype: Any = None) -> dict[str, Any]:
    """An empty KV cache for `batch` rows of `length` slots.

    {"k": ..., "v": ...}: with unrolled layers each is a tuple of per-layer arrays
    [batch, kv_heads, length, head_dim] (logical axes CACHE_AXES), so a decode step updates
    each in place; with scanned layers one array [layers, batch, kv_heads, length, head_dim]
    (STACKED_CACHE_AXES). The dtype defaults to the compute dtype.
    """
    dtype = to_dtype(cfg.dtype) if dtype is None else to_dtype(dtype)
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    if cfg.scan_layers:
        zeros = jnp.zeros((cfg.num_layers, *shape), dtype)
        return {"k": zeros, "v": zeros}
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return {"k": zeros, "v": zeros}


def cache_logical_axes(cfg: LMConfig) -> dict[str, Any]:
    """Logical axis names of `init_cache`'s arrays (a pytree of tuples), for shardings."""
    if cfg.scan_layers:
        return {"k": STACKED_CACHE_AXES, "v": STACKED_CACHE_AXES}
    per_layer = tuple(CACHE_AXES for _ in range(cfg.num_layers))
    return {"k": per_layer, "v": per_layer}


def _block_caller(remat_policy: str, prevent_cse: bool) -> Callable[..., jax.Array]:
    """block(x, ...) wrapped in nnx.remat according to the config's policy name."""

    def call(block, x, positions, mask, key, guide=None):
        return block(x, positions, mask, key, guide)

    if remat_policy == "none":
        return call
    policy = None if remat_policy == "full" else getattr(jax.checkpoint_policies, remat_policy)
    return nnx.remat(call, policy=policy, prevent_cse=prevent_cse)


def _layer(call, block, carry, positions, mask, key, guide):
    """One block on the carry (x, penalty sum); the sum grows only when a guide is given."""
    x, total = carry
    out = call(block, x, positions, mask, key, guide)
    return (out, total) if guide is None else (out[0], total + out[1])


class DecoderStack(nnx.Module):
    """Embeddings [b, l, embed] (+ packing/prefix info) -> final-normed hidden states."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, rules: Any = None):
        self.cfg = cfg
        self.rules = rules
        self.dtype = to_dtype(cfg.dtype)
        if cfg.scan_layers:

            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_layers(layer_rngs: nnx.Rngs) -> DecoderBlock:
                return DecoderBlock(cfg, rngs=layer_rngs, rules=rules)

            self.layers = make_layers(rngs)
        else:
            self.layers = nnx.List(
                [DecoderBlock(cfg, rngs=rngs, rules=rules) for _ in range(cfg.num_layers)]
            )
        self.final_norm = RMSNorm(
            cfg.embed_dim, eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype
        )

    def __call__(
        self,
        x: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        prefix_mask: jax.Array | None = None,
        *,
        dropout_key: jax.Array | None = None,
        guide: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """x: [b, l, embed]; segment_ids/positions/prefix_mask: [b, l] (None = one segment
        per row, positions 0..l-1, strictly causal). Returns [b, l, embed] (compute dtype),
        and with `guide` also the guided-attention penalty, the mean over layers.

        `prefix_mask` is honoured only when `cfg.prefix_bidirectional`; `dropout_key`
        None means deterministic.
        """
        cfg = self.cfg
        batch, length = x.shape[:2]
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if not cfg.prefix_bidirectional:
            prefix_mask = None
        mask = make_attention_mask(segment_ids, prefix_mask)
        x = with_logical_constraint(x.astype(self.dtype), ACTIVATION_AXES, self.rules)

        keys = None
        if dropout_key is not None and cfg.dropout_rate > 0.0:
            keys = jax.random.split(dropout_key, cfg.num_layers)
        # Inside scan, CSE across iterations is impossible anyway; prevent_cse=False lets
        # XLA optimise the rematerialised block (JAX's recommendation for remat in scan).
        call = _block_caller(cfg.remat_policy, prevent_cse=not cfg.scan_layers)

        total = jnp.zeros((), jnp.float32)  # guided-attention penalty, summed over layers
        if cfg.scan_layers:
            key_axis = None if keys is None else 0

            @nnx.scan(in_axes=(nnx.Carry, 0, None, None, key_axis, None), out_axes=nnx.Carry)
            def run(carry, block, positions, mask, key, guide):
                return _layer(call, block, carry, positions, mask, key, guide)

            x, total = run((x, total), self.layers, positions, mask, keys, guide)
        else:
            for i, block in enumerate(self.layers):
                key = None if keys is None else keys[i]
                x, total = _layer(call, block, (x, total), positions, mask, key, guide)
        x = self.final_norm(x)
        return x if guide is None else (x, total / cfg.num_layers)

    def prefill(
        self,
        x: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        prefix_mask: jax.Array | None,
        cache_length: int,
        cache_dtype: Any = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        """Prompt embeddings [b, l, embed] -> (final-normed hidden [b, l, embed], KV cache).

        Masks as in `__call__` (segment id 0 = padding, e.g. a left-padded prompt's lead;
        `prefix_mask` honoured iff cfg.prefix_bidirectional). The cache (see `init_cache`)
        has `cache_length` >= l slots; the prompt fills slots 0..l-1.
        """
        cfg = self.cfg
        batch, length = x.shape[:2]
        if cache_length < length:
            raise ValueError(f"cache_length={cache_length} < prompt length {length}")
        if not cfg.prefix_bidirectional:
            prefix_mask = None
        mask = make_attention_mask(segment_ids, prefix_mask)
        x = with_logical_constraint(x.astype(self.dtype), ACTIVATION_AXES, self.rules)
        cache = init_cache(cfg, batch, cache_length, cache_dtype)
        zero = jnp.zeros((), jnp.int32)
        if cfg.scan_layers:

            @nnx.scan(in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0))
            def run(h, block, ck, cv):
                h, k, v = block.prefill(h, positions, mask)
                return h, (_write_cache(ck, k, zero, self.rules), _write_cache(cv, v, zero, self.rules))

            x, (ks, vs) = run(x, self.layers, cache["k"], cache["v"])
            cache = {"k": ks, "v": vs}
        else:
            ks, vs = [], []
            for block, ck, cv in zip(self.layers, cache["k"], cache["v"], strict=True):
                x, k, v = block.prefill(x, positions, mask)
                ks.append(_write_cache(ck, k, zero, self.rules))
                vs.append(_write_cache(cv, v, zero, self.rules))
            cache = {"k": tuple(ks), "v": tuple(vs)}
        return self.final_norm(x), cache

    def decode(
        self,
        x: jax.Array,
        positions: jax.Array,
        kv_mask: jax.Array,
        cache: dict[str, Any],
        index: jax.Array,
    ) -> tuple[jax.Array, dict[str, Any]]:
        """New embeddings [b, t, embed] at cache slots index..index+t-1 -> (hidden, cache).

        kv_mask: bool [b, t, S] (or [b, S] for t = 1): which cache slots each new token may
        attend (its own slot included; the caller hides padding and empty slots).
        """
        if kv_mask.ndim == 2:
            kv_mask = kv_mask[:, None, :]
        mask = kv_mask[:, None, :, :]
        x = with_logical_constraint(x.astype(self.dtype), ACTIVATION_AXES, self.rules)
        if self.cfg.scan_layers:

            @nnx.scan(in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0))
            def run(h, block, ck, cv):
                h, ck, cv = block.decode(h, positions, mask, ck, cv, index)
                return h, (ck, cv)

            x, (ks, vs) = run(x, self.layers, cache["k"], cache["v"])
            cache = {"k": ks, "v": vs}
        else:
            ks, vs = [], []
            for block, ck, cv in zip(self.layers, cache["k"], cache["v"], strict=True):
                x, ck, cv = block.decode(x, positions, mask, ck, cv, index)
                ks.append(ck)
                vs.append(cv)
            cache = {"k": tuple(ks), "v": tuple(vs)}
        return self.final_norm(x), cache
