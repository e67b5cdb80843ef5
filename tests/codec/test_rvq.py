"""RVQ: EMA update vs a NumPy reference, k-means init, dead codes, straight-through, state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpa_jax.codec.rvq import (
    CodebookState,
    ResidualVectorQuantizer,
    SplitQuantizer,
    TeacherCodeQuantizer,
    kmeans,
)

# Jitted entry points: one compile per quantizer shape instead of eager op-by-op dispatch
# (which compiles every primitive separately and costs seconds on CPU).
_train = nnx.jit(lambda rvq, x: rvq.quantize(x, train=True))
_eval = nnx.jit(lambda rvq, x: rvq.quantize(x, layer_outputs=True))


def _rvq(**kw) -> ResidualVectorQuantizer:
    # Shared defaults (D=2, K=4, one layer, 5 k-means iterations) so that several tests
    # hit the same compiled step.
    args = dict(
        dimension=2, n_q=1, codebook_size=4, kmeans_init=False, kmeans_iters=5, rngs=nnx.Rngs(0)
    )
    args.update(kw)
    return ResidualVectorQuantizer(**args)


def _numpy_ema_step(embed, cluster_size, embed_sum, x, decay, eps):
    """Independent float64 reference of one EMA codebook step."""
    d2 = ((x[:, None, :] - embed[None, :, :]) ** 2).sum(-1)
    codes = d2.argmin(-1)
    k = embed.shape[0]
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    sums = np.zeros_like(embed_sum)
    np.add.at(sums, codes, x)
    size = decay * cluster_size + (1 - decay) * counts
    total_sum = decay * embed_sum + (1 - decay) * sums
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
    return codes, size, total_sum, total_sum / smoothed[:, None]


def test_ema_update_matches_numpy_reference():
    rvq = _rvq()
    # Large cluster sizes: no code is dead, so this step is the pure EMA update.
    rvq.cluster_size[...] = jnp.full((1, 4), 50.0, jnp.float32)  # not weak-typed: same compile
    x = np.random.default_rng(0).normal(size=(1, 160, 2)).astype(np.float32)
    embed0 = np.asarray(rvq.embed[0], np.float64)
    size0 = np.asarray(rvq.cluster_size[0], np.float64)
    sum0 = np.asarray(rvq.embed_sum[0], np.float64)

    _, codes, _ = _train(rvq, jnp.asarray(x))

    ref_codes, ref_size, ref_sum, ref_embed = _numpy_ema_step(
        embed0, size0, sum0, x.reshape(-1, 2).astype(np.float64), 0.99, 1e-5
    )
    np.testing.assert_array_equal(np.asarray(codes[:, 0]).reshape(-1), ref_codes)
    np.testing.assert_allclose(rvq.cluster_size[0], ref_size, rtol=1e-6)
    np.testing.assert_allclose(rvq.embed_sum[0], ref_sum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rvq.embed[0], ref_embed, rtol=1e-5, atol=1e-6)


def _blobs(seed=0, per=40):
    centers = np.array([[10.0, 10.0], [-10.0, 10.0], [10.0, -10.0], [-10.0, -10.0]])
    rng = np.random.default_rng(seed)
    pts = np.concatenate([c + 0.1 * rng.normal(size=(per, 2)) for c in centers])
    return centers, pts[rng.permutation(len(pts))].astype(np.float32)


def test_kmeans_recovers_separated_clusters_deterministically():
    centers, pts = _blobs()
    run = jax.jit(kmeans, static_argnums=(1, 2))
    means, counts = run(jnp.asarray(pts), 4, 5, jax.random.key(3))
    dist = np.linalg.norm(centers[:, None] - np.asarray(means)[None], axis=-1)
    assert dist.min(axis=1).max() < 0.1  # every true centre has a centroid on it
    np.testing.assert_array_equal(np.sort(np.asarray(counts)), [40, 40, 40, 40])
    again, _ = run(jnp.asarray(pts), 4, 5, jax.random.key(3))
    np.testing.assert_array_equal(means, again)


def test_first_training_batch_runs_kmeans_init():
    centers, pts = _blobs(seed=1)
    rvq = _rvq(kmeans_init=True, rngs=nnx.Rngs(1))
    assert not bool(rvq.initialized[0])
    quantized, _, aux = _train(rvq, jnp.asarray(pts)[None])
    assert bool(rvq.initialized[0])
    dist = np.linalg.norm(centers[:, None] - np.asarray(rvq.embed[0])[None], axis=-1)
    assert dist.min(axis=1).max() < 0.1
    assert float(aux["commit_loss"]) < 0.05  # each point sits next to its centroid
    np.testing.assert_allclose(
        quantized[0],
        centers[np.argmin(np.linalg.norm(pts[:, None] - centers[None], axis=-1), axis=1)],
        atol=0.1,
    )


def test_dead_codes_are_replaced_by_batch_vectors():
    rvq = _rvq()  # dead_code_threshold defaults to 2
    rng = np.random.default_rng(0)
    x = (np.array([5.0, 5.0]) + 0.01 * rng.normal(size=(1, 160, 2))).astype(np.float32)
    old = np.asarray(rvq.embed[0])
    _, codes, _ = _train(rvq, jnp.asarray(x))
    used = np.unique(np.asarray(codes))
    unused = np.setdiff1d(np.arange(4), used)
    assert len(unused) == 3
    new = np.asarray(rvq.embed[0])
    flat = x.reshape(-1, 2)
    for k in unused:  # every unused code now equals one of this batch's vectors
        assert not np.allclose(new[k], old[k])
        assert np.min(np.abs(flat - new[k]).sum(-1)) < 1e-6
    np.testing.assert_allclose(np.asarray(rvq.cluster_size[0])[unused], 2.0)
    np.testing.assert_allclose(np.asarray(rvq.embed_sum[0])[unused], 2.0 * new[unused], rtol=1e-6)


def test_straight_through_and_commitment_gradients():
    rvq = _rvq(n_q=3)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 2)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 2)), jnp.float32)

    @nnx.jit
    def grads(rvq, x):
        def ste(rvq, x):
            q = rvq.quantize(x, train=True)[0]
            return jnp.sum(w * q**2), q

        def commit(rvq, x):
            return rvq.quantize(x, train=True)[2]["commit_loss"]

        (_, q), g_ste = nnx.value_and_grad(ste, argnums=1, has_aux=True)(rvq, x)
        return q, g_ste, nnx.grad(commit, argnums=1)(rvq, x)

    q, grad_x, grad_commit = grads(rvq, x)
    np.testing.assert_allclose(grad_x, 2 * w * q, rtol=1e-5, atol=1e-6)  # dL/dx == dL/dq
    assert np.all(np.isfinite(grad_commit)) and float(jnp.abs(grad_commit).sum()) > 0


def test_buffers_are_not_params():
    rvq = _rvq()
    assert jax.tree.leaves(nnx.state(rvq, nnx.Param)) == []
    names = {str(p[0]) for p, _ in nnx.to_flat_state(nnx.state(rvq, CodebookState))}
    assert names == {"embed", "embed_sum", "cluster_size", "initialized"}


def test_eval_decode_codes_with_fewer_layers_and_roundtrip():
    rvq = _rvq(n_q=3)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 7, 2)), jnp.float32)
    before = jax.tree.map(np.asarray, nnx.state(rvq, CodebookState))
    q, codes, aux = _eval(rvq, x)
    after = jax.tree.map(np.asarray, nnx.state(rvq, CodebookState))
    jax.tree.map(np.testing.assert_array_equal, before, after)  # eval: no codebook update
    assert codes.shape == (2, 3, 7) and codes.dtype == jnp.int32
    decode = nnx.jit(lambda r, c: r.decode_codes(c))
    np.testing.assert_allclose(decode(rvq, codes), q, rtol=1e-6)
    np.testing.assert_allclose(decode(rvq, codes[:, :1]), aux["layer_outputs"][0], rtol=1e-6)
    encode2 = nnx.jit(lambda r, x: r.encode_codes(x, n_q=2))
    np.testing.assert_array_equal(encode2(rvq, x), codes[:, :2])


def test_quantizer_dropout_masks_layers_under_jit():
    rvq = _rvq(n_q=4, quantizer_dropout=1.0, dead_code_threshold=0.0)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(1, 6, 2)), jnp.float32)

    @nnx.jit
    def step(rvq, x, key):
        q, codes, aux = rvq.quantize(x, train=True, rng=key)
        return q, codes, aux["n_active"]

    seen = set()
    for i in range(6):
        before = np.asarray(rvq.embed[...])
        q, codes, n = step(rvq, x, jax.random.key(i))
        n = int(n)
        seen.add(n)
        expect = before[np.arange(n)[None, :, None], np.asarray(codes)[:, :n]].sum(1)
        np.testing.assert_allclose(q, expect, rtol=1e-5, atol=1e-5)
        # Inactive layers keep their codebooks.
        np.testing.assert_array_equal(np.asarray(rvq.embed[...])[n:], before[n:])
    assert len(seen) > 1 and all(1 <= n <= 4 for n in seen)


def test_split_quantizer_codes_layer1_from_its_projection_and_decodes_its_sum():
    split = SplitQuantizer(
        dimension=4, semantic_dim=2, n_q=3, codebook_size=8, kmeans_iters=3, rngs=nnx.Rngs(1)
    )
    x = jax.random.normal(jax.random.key(2), (2, 16, 4))
    _train(split, x)  # k-means init of all three books, then one EMA step
    quantized, codes, aux = _eval(split, x)
    assert codes.shape == (2, 3, 16) and aux["layer_outputs"].shape == (3, 2, 16, 4)
    assert aux["semantic"].shape == (2, 16, 2)
    # Layer 1 is the nearest semantic code of project_in(x), nothing else.
    s = np.asarray(split.project_in(x))
    book = np.asarray(split.semantic.embed[0])
    want = ((s[..., None, :] - book) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(np.asarray(codes[:, 0]), want)
    # Every layer adds one vector of `codebooks()`; decode_codes is that sum, per depth.
    books = np.asarray(split.codebooks())
    assert books.shape == (3, 8, 4)
    for depth in (1, 2, 3):
        summed = sum(books[i][np.asarray(codes[:, i])] for i in range(depth))
        decoded = np.asarray(split.decode_codes(codes[:, :depth]))
        np.testing.assert_allclose(decoded, summed, rtol=1e-5, atol=1e-5)
        padded = np.asarray(split.decode_codes(codes, num_layers=jnp.asarray(depth)))
        np.testing.assert_allclose(padded, summed, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(quantized), summed, rtol=1e-5, atol=1e-5)
    # Acoustic layers quantize what the semantic vector leaves.
    residual = np.asarray(x) - books[0][np.asarray(codes[:, 0])]
    acoustic = np.asarray(split.acoustic.encode_codes(jnp.asarray(residual)))
    np.testing.assert_array_equal(acoustic, np.asarray(codes[:, 1:]))


def test_split_quantizer_distillation_gradient_reaches_projection_and_latent():
    split = SplitQuantizer(
        dimension=4, semantic_dim=2, n_q=2, codebook_size=4, kmeans_iters=2, rngs=nnx.Rngs(3)
    )
    x = jax.random.normal(jax.random.key(4), (1, 8, 4))
    _train(split, x)

    def loss(model, x):
        _, _, aux = model.quantize(x, train=True)
        return jnp.sum(aux["semantic"] ** 2)

    grads_model, grads_x = nnx.grad(loss, argnums=(0, 1))(split, x)
    assert float(jnp.abs(grads_model.project_in.kernel[...]).sum()) > 0
    assert float(jnp.abs(grads_x).sum()) > 0


def test_teacher_code_quantizer_takes_layer1_as_given_and_quantizes_the_latent_after():
    q = TeacherCodeQuantizer(dimension=4, n_q=3, codebook_size=8, kmeans_iters=3, rngs=nnx.Rngs(5))
    x = jax.random.normal(jax.random.key(6), (2, 16, 4))
    given = jax.random.randint(jax.random.key(7), (2, 20), 0, 8)  # may cover more frames

    run = nnx.jit(
        lambda q, x, given, train: q.quantize(x, train=train, layer_outputs=True, first_codes=given),
        static_argnums=3,
    )
    run(q, x, given, True)  # k-means init of the acoustic books
    quantized, codes, aux = run(q, x, given, False)
    assert codes.shape == (2, 3, 16) and aux["layer_outputs"].shape == (3, 2, 16, 4)
    np.testing.assert_array_equal(np.asarray(codes[:, 0]), np.asarray(given[:, :16]))
    # The acoustic layers quantize the latent itself, not latent minus the given vector.
    np.testing.assert_array_equal(
        np.asarray(q.acoustic.encode_codes(x)), np.asarray(codes[:, 1:])
    )
    books = np.asarray(q.codebooks())
    assert books.shape == (3, 8, 4)
    for depth in (1, 3):
        summed = sum(books[i][np.asarray(codes[:, i])] for i in range(depth))
        np.testing.assert_allclose(np.asarray(q.decode_codes(codes[:, :depth])), summed, atol=1e-5)
    np.testing.assert_allclose(np.asarray(quantized), summed, atol=1e-5)
    assert float(aux["commit_per_layer"][0]) == 0.0
    # The given layer's vectors learn from the decoder's gradient; the latent gets the
    # straight-through gradient.
    def loss(model, x):
        out, _, _ = model.quantize(x, train=True, first_codes=given)
        return jnp.sum(out**2)

    grads_model, grads_x = nnx.grad(loss, argnums=(0, 1))(q, x)
    assert float(jnp.abs(grads_model.first_embed[...]).sum()) > 0
    assert float(jnp.abs(grads_x).sum()) > 0
    with pytest.raises(ValueError, match="first_codes"):
        q.quantize(x)
    with pytest.raises(ValueError, match="n_q >= 2"):
        TeacherCodeQuantizer(dimension=4, n_q=1, codebook_size=8, rngs=nnx.Rngs(0))
