"""DecoderLM behaviour: masks (causal, packing, prefix), GQA, QK-norm, scan, tying, bf16.

XLA:CPU compiles are the cost here, so tests share one model and one input signature
(batch 2 x length 16, segment ids / positions / prefix always passed) where they can.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpa_jax.models import DecoderLM, LMConfig
from tests.models.helpers import numpy_model

BASE = LMConfig(
    vocab_size=128,
    num_layers=2,
    embed_dim=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    rope_theta=10_000.0,
    dtype="float32",
    scan_layers=False,
    prefix_bidirectional=True,
    init_std=1.0,  # embedding std of the numpy init; logits visibly depend on every input
)
B, L = 2, 16


@functools.cache
def build(**overrides) -> DecoderLM:
    """One model per distinct config (seed 0); tests must not mutate shared models."""
    return numpy_model(dataclasses.replace(BASE, **overrides))


@nnx.jit
def forward(model, tokens, segment_ids, positions, prefix_mask):
    return model(tokens, segment_ids, positions, prefix_mask)


def run(model, tokens, segment_ids=None, positions=None, prefix_mask=None):
    """Forward with defaults filled in, so every call shares one compiled signature."""
    segment_ids = jnp.ones((B, L), jnp.int32) if segment_ids is None else segment_ids
    positions = jnp.broadcast_to(jnp.arange(L), (B, L)) if positions is None else positions
    prefix_mask = jnp.zeros((B, L), jnp.int32) if prefix_mask is None else prefix_mask
    return forward(model, tokens, segment_ids, positions, prefix_mask)


def tokens(seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, BASE.vocab_size, (B, L)), jnp.int32)


def bump(toks, index):
    return toks.at[:, index].set(toks[:, index] % (BASE.vocab_size - 1) + 1)


def maxdiff(a, b):
    return float(jnp.max(jnp.abs(a - b)))


def with_params_of(src: nnx.Module, **overrides) -> DecoderLM:
    """A fresh model with `overrides` whose shared params are copied from `src`."""
    model = numpy_model(dataclasses.replace(src.cfg, **overrides), seed=1)
    src_vars = dict(nnx.to_flat_state(nnx.state(src, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path in src_vars and src_vars[path].shape == var.shape:
            var[...] = src_vars[path][...]
    return model


def test_shapes_dtypes_and_padding_is_finite():
    model = build()
    seg = jnp.ones((B, L), jnp.int32).at[:, -3:].set(0)  # trailing padding
    logits = run(model, tokens(), seg)
    assert logits.shape == (B, L, BASE.vocab_size)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_causal_future_tokens_do_not_leak():
    model = build()
    toks = tokens()
    a, b = run(model, toks), run(model, bump(toks, 10))
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert maxdiff(a[:, 10:], b[:, 10:]) > 1e-3


def test_packed_segments_equal_separate_runs():
    """Row 0 packs segments of 7 and 6 tokens + 3 padding; row 1 holds each one alone."""
    model = build()
    toks = tokens(1)
    seg_packed = jnp.array([1] * 7 + [2] * 6 + [0] * 3)
    pos_packed = jnp.array(list(range(7)) + list(range(6)) + [0] * 3)
    packed = run(model, toks, jnp.stack([seg_packed] * 2), jnp.stack([pos_packed] * 2))
    for start, size in ((0, 7), (7, 6)):
        alone_toks = jnp.zeros((B, L), jnp.int32).at[:, :size].set(toks[:, start : start + size])
        alone_seg = jnp.zeros((B, L), jnp.int32).at[:, :size].set(1)
        alone = run(model, alone_toks, alone_seg)
        np.testing.assert_allclose(
            packed[:, start : start + size], alone[:, :size], atol=1e-5, rtol=1e-5
        )


def test_prefix_is_bidirectional_within_its_segment_only():
    model = build()
    toks = tokens()
    seg = jnp.array([[1] * 8 + [2] * 8] * B)
    pos = jnp.array([list(range(8)) * 2] * B)
    prefix = jnp.array([[1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]] * B)
    a = run(model, toks, seg, pos, prefix)
    b = run(model, bump(toks, 3), seg, pos, prefix)  # last prefix token of segment 1
    assert maxdiff(a[:, :3], b[:, :3]) > 1e-3  # earlier prefix positions see it
    np.testing.assert_allclose(a[:, 8:], b[:, 8:], atol=1e-6)  # the next segment does not
    # A token after the prefix stays causal: position 5 does not reach positions 0..4.
    c = run(model, bump(toks, 5), seg, pos, prefix)
    np.testing.assert_allclose(a[:, :5], c[:, :5], atol=1e-6)
    # The same model without a prefix mask is strictly causal.
    d, e = run(model, toks, seg, pos), run(model, bump(toks, 3), seg, pos)
    np.testing.assert_allclose(d[:, :3], e[:, :3], atol=1e-6)


def test_prefix_mask_is_ignored_unless_configured():
    causal = with_params_of(build(), prefix_bidirectional=False)
    toks = tokens()
    prefix = jnp.ones((B, L), jnp.int32)
    a, b = run(causal, toks, prefix_mask=prefix), run(causal, bump(toks, 3), prefix_mask=prefix)
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-6)
    np.testing.assert_allclose(a, run(build(), toks), atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = build()
    mha = with_params_of(build(num_kv_heads=BASE.num_heads))
    state = nnx.to_pure_dict(nnx.state(gqa, nnx.Param))
    group = BASE.num_heads // BASE.num_kv_heads
    for layer in state["decoder"]["layers"].values():
        for name in ("k_proj", "v_proj"):
            kernel = layer["attn"][name]["kernel"]
            layer["attn"][name]["kernel"] = jnp.repeat(kernel, group, axis=1)
    mha_state = nnx.state(mha, nnx.Param)
    nnx.replace_by_pure_dict(mha_state, state)
    nnx.update(mha, mha_state)
    assert mha.decoder.layers[0].attn.k_proj.kernel.shape == (32, 4, 8)
    assert gqa.decoder.layers[0].attn.k_proj.kernel.shape == (32, 2, 8)
    toks = tokens()
    np.testing.assert_allclose(run(gqa, toks), run(mha, toks), atol=1e-5, rtol=1e-5)


def test_qk_norm_on_and_off():
    with_norm = build()
    without = with_params_of(with_norm, qk_norm=False)
    assert with_norm.decoder.layers[0].attn.q_norm is not None
    assert without.decoder.layers[0].attn.q_norm is None
    n_with = sum(x.size for x in jax.tree.leaves(nnx.state(with_norm, nnx.Param)))
    n_without = sum(x.size for x in jax.tree.leaves(nnx.state(without, nnx.Param)))
    assert n_with - n_without == BASE.num_layers * 2 * BASE.head_dim
    toks = tokens()
    a, b = run(with_norm, toks), run(without, toks)
    assert bool(jnp.all(jnp.isfinite(b)))
    assert maxdiff(a, b) > 1e-3  # same weights, a different function


def test_scan_and_unrolled_agree_for_the_same_params():
    unrolled = build()
    scanned = numpy_model(dataclasses.replace(BASE, scan_layers=True), seed=1)
    src = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
    layers = [src["decoder"]["layers"][i] for i in range(BASE.num_layers)]
    dst_state = nnx.state(scanned, nnx.Param)
    dst = nnx.to_pure_dict(dst_state)
    dst["embedder"] = src["embedder"]
    dst["decoder"]["final_norm"] = src["decoder"]["final_norm"]
    dst["decoder"]["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    nnx.replace_by_pure_dict(dst_state, dst)
    nnx.update(scanned, dst_state)
    assert scanned.decoder.layers.attn.q_proj.kernel.shape == (2, 32, 4, 8)
    toks = tokens()
    np.testing.assert_allclose(run(unrolled, toks), run(scanned, toks), atol=1e-5, rtol=1e-5)


def test_tied_and_untied_output():
    tied = build()
    untied = with_params_of(tied, tie_embeddings=False)
    assert tied.lm_head is None
    assert untied.lm_head.kernel.shape == (BASE.embed_dim, BASE.vocab_size)
    toks = tokens()
    assert maxdiff(run(tied, toks), run(untied, toks)) > 1e-3  # its own head
    untied.lm_head.kernel[...] = tied.embedder.embedding[...].T
    np.testing.assert_allclose(run(tied, toks), run(untied, toks), atol=1e-5, rtol=1e-5)


def test_bf16_compute_is_close_to_fp32():
    fp32 = build()
    bf16 = with_params_of(fp32, dtype="bfloat16")
    assert bf16.embedder.embedding.dtype == jnp.float32  # params stay fp32
    toks = tokens()
    a, b = run(fp32, toks), run(bf16, toks)
    assert b.dtype == jnp.float32
    assert maxdiff(a, b) < 0.05 * float(jnp.max(jnp.abs(a)))
    assert float(jnp.mean(jnp.argmax(a, -1) == jnp.argmax(b, -1))) > 0.9


def test_extra_embeddings_add_at_their_positions():
    model = build()
    toks = tokens()

    @nnx.jit
    def fwd_extra(m, t, extra):
        return m(t, extra_embeddings=extra)

    zeros = jnp.zeros((B, L, BASE.embed_dim))
    base = fwd_extra(model, toks, zeros)
    np.testing.assert_allclose(base, run(model, toks), atol=1e-5)
    out = fwd_extra(model, toks, zeros.at[:, 4].set(1.0))  # e.g. an audio feature at 4
    np.testing.assert_allclose(out[:, :4], base[:, :4], atol=1e-5)
    assert maxdiff(out[:, 4:], base[:, 4:]) > 1e-3


def test_dropout_needs_rngs_and_is_reproducible():
    model = with_params_of(build(), dropout_rate=0.2)
    toks = tokens()
    with pytest.raises(ValueError, match="needs rngs"):
        model(toks, deterministic=False)

    @nnx.jit
    def train_fwd(m, t, key):
        return m(t, deterministic=False, rngs=key)

    a = train_fwd(model, toks, jax.random.key(1))
    b = train_fwd(model, toks, jax.random.key(1))
    c = train_fwd(model, toks, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert maxdiff(a, c) > 1e-3
    assert maxdiff(a, run(model, toks)) > 1e-3


@pytest.mark.parametrize("scan", [False, True])
def test_remat_policy_wraps_each_block(scan):
    """Structural check (no compile): the forward holds one checkpoint per block call.

    Numerically, remat + scan is exercised by the sharded train-step test.
    """

    def jaxpr(**overrides) -> str:
        cfg = dataclasses.replace(BASE, scan_layers=scan, **overrides)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0))))
        return str(jax.make_jaxpr(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens()))

    remat = jaxpr(remat_policy="dots_saveable")
    assert remat.count("remat2[") == (1 if scan else BASE.num_layers)
    assert "DotsSaveable" in remat
    assert "remat2[" not in jaxpr()
