"""AcousticModel: shapes, stage conditioning (adaLN), no leak of unknown layers, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpa_jax.acoustic.config import AcousticConfig
from gpa_jax.acoustic.model import AcousticModel, AdaLNBlock, known_layers

from .conftest import CODEBOOK, N_Q

CFG = AcousticConfig(
    n_q=N_Q, codebook_size=CODEBOOK, latent_dim=8, num_layers=2, embed_dim=32, num_heads=2,
    num_kv_heads=1, head_dim=16, mlp_dim=64, max_len=64, scan_layers=False, init_std=0.5,
)  # fmt: skip
B, L, P = 2, 20, 6


def random_params(model, seed=0):
    """Random values for every Param (the adaLN projections included), so that stage and
    prompt effects show in an untrained model."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var.set_value(np.asarray(0.3 * rng.standard_normal(var.shape), var.dtype))
    return model


@pytest.fixture(scope="module")
def nar():
    return random_params(AcousticModel(CFG, rngs=nnx.Rngs(0)))


def make_batch(stage=2, seed=0):
    rng = np.random.default_rng(seed)
    seg = np.ones((B, L), np.int32)
    seg[1, 15:] = 0
    pm = np.zeros((B, L), np.int32)
    pm[:, :P] = 1
    return {
        "codes": jnp.asarray(rng.integers(0, CODEBOOK, (B, L, N_Q)), jnp.int32),
        "decoder_segment_ids": jnp.asarray(seg),
        "prompt_mask": jnp.asarray(pm),
        "stage": jnp.asarray(stage * seg),
    }


def test_shapes_nar_and_vocoder():
    batch = make_batch()
    nar = AcousticModel(CFG, rngs=nnx.Rngs(0))
    assert nar(batch).shape == (B, L, CODEBOOK)
    assert nar(batch).dtype == jnp.float32
    books = np.random.default_rng(0).standard_normal((N_Q, CODEBOOK, 8)).astype(np.float32)
    cfg = AcousticConfig(**{**CFG.__dict__, "variant": "vocoder"})
    voc = AcousticModel(cfg, rngs=nnx.Rngs(0), codebooks=books)
    assert voc(batch).shape == (B, L, 8)
    # The regression target is the codec's quantized latent: sum of the codebook vectors.
    codes = np.asarray(batch["codes"])
    expected = sum(books[q][codes[..., q]] for q in range(N_Q))
    np.testing.assert_allclose(np.asarray(voc.target_latent(batch["codes"])), expected, rtol=1e-5)
    # Codebooks are frozen state, not trainable params.
    assert not any("codebooks" in str(p) for p, _ in nnx.to_flat_state(nnx.state(voc, nnx.Param)))
    with pytest.raises(ValueError, match="codebooks"):
        AcousticModel(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shape"):
        AcousticModel(cfg, rngs=nnx.Rngs(0), codebooks=books[:, :, :4])


def test_known_layers_mask():
    batch = make_batch(stage=2)
    known = np.asarray(
        known_layers(jnp.array([2, 2]), batch["prompt_mask"], batch["decoder_segment_ids"], N_Q)
    )
    assert (known[:, :P] == 1).all()  # prompt: every layer
    np.testing.assert_array_equal(known[0, P:], np.tile([1, 1, 0, 0], (L - P, 1)))
    assert (known[1, 15:] == 0).all()  # padding: nothing


def test_stage_conditioning_changes_the_output(nar):
    # adaLN alone: same input, different condition vectors -> different block output.
    block = random_params(AdaLNBlock(CFG, rngs=nnx.Rngs(1)), seed=1)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 5, 32)), jnp.float32)
    pos = jnp.arange(5)[None]
    mask = jnp.ones((1, 1, 5, 5), bool)
    c1, c2 = jnp.ones((1, 32)), -jnp.ones((1, 32))
    assert not np.allclose(block(x, c1, pos, mask), block(x, c2, pos, mask), atol=1e-4)
    # Full model: the stage embedding alone changes the hidden states even when the
    # known-layer inputs are identical (force them equal by zeroing the codes of layer 2).
    batch = make_batch(stage=2)
    codes = batch["codes"].at[..., 2].set(0)
    h2 = nar.hidden(codes, jnp.array([2, 2]), batch["prompt_mask"], batch["decoder_segment_ids"])
    h3 = nar.hidden(codes, jnp.array([3, 3]), batch["prompt_mask"], batch["decoder_segment_ids"])
    assert np.abs(np.asarray(h2 - h3))[:, P:15].mean() > 1e-3
    # And the stage picks the output head.
    assert not np.allclose(
        nar.stage_logits(h2, jnp.array([2, 2])), nar.stage_logits(h2, jnp.array([3, 3]))
    )


def test_target_layers_at_and_above_the_stage_never_leak(nar):
    """Prompt independence: the output never depends on the target's unknown layers."""
    k = 2
    batch = make_batch(stage=k)
    base = np.asarray(nar(batch))
    rng = np.random.default_rng(5)
    tgt = (np.arange(L) >= P)[None, :, None]
    # Change the target frames' layers >= k (what is being predicted, and above).
    noise = rng.integers(0, CODEBOOK, (B, L, N_Q))
    layer_ge_k = (np.arange(N_Q) >= k)[None, None, :]
    leaked = np.where(tgt & layer_ge_k, noise, np.asarray(batch["codes"]))
    out = np.asarray(nar({**batch, "codes": jnp.asarray(leaked)}))
    np.testing.assert_allclose(out, base, atol=1e-5)
    # Controls: a known target layer (< k) and the prompt both do matter.
    known_changed = np.asarray(batch["codes"]).copy()
    known_changed[:, P:, 1] = (known_changed[:, P:, 1] + 1) % CODEBOOK
    assert not np.allclose(nar({**batch, "codes": jnp.asarray(known_changed)}), base, atol=1e-4)
    prompt_changed = np.asarray(batch["codes"]).copy()
    prompt_changed[:, :P, 3] = (prompt_changed[:, :P, 3] + 1) % CODEBOOK
    out = np.asarray(nar({**batch, "codes": jnp.asarray(prompt_changed)}))
    assert np.abs(out - base)[:, P:15].max() > 1e-4


def test_padding_and_other_rows_do_not_change_real_frames(nar):
    batch = make_batch(stage=2)
    base = np.asarray(nar(batch))
    codes = np.asarray(batch["codes"]).copy()
    codes[1, 15:] = (codes[1, 15:] + 7) % CODEBOOK  # padding frames of row 1
    out = np.asarray(nar({**batch, "codes": jnp.asarray(codes)}))
    np.testing.assert_allclose(out[1, :15], base[1, :15], atol=1e-5)
    np.testing.assert_allclose(out[0], base[0], atol=1e-5)


def test_scanned_and_unrolled_layers_agree():
    import dataclasses

    scanned = AcousticModel(dataclasses.replace(CFG, scan_layers=True), rngs=nnx.Rngs(0))
    unrolled = AcousticModel(CFG, rngs=nnx.Rngs(0))
    batch = make_batch()
    # Same init keys -> identical params; only the layer layout differs.
    flat = nnx.to_flat_state(nnx.state(unrolled, nnx.Param))
    assert len(flat) > 0
    sc = nnx.state(scanned, nnx.Param)
    layers = [nnx.state(b, nnx.Param) for b in unrolled.layers]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    nnx.update(scanned.layers, stacked)
    for name in ("code_embed", "type_embed", "stage_embed", "final_norm", "final_modulation"):
        nnx.update(getattr(scanned, name), nnx.state(getattr(unrolled, name)))
    scanned.heads.set_value(unrolled.heads[...])
    del sc
    np.testing.assert_allclose(np.asarray(scanned(batch)), np.asarray(unrolled(batch)), atol=1e-4)


def test_long_targets_are_completed_in_chunks(nar):
    """A target longer than the model's rows is filled chunk by chunk with the same prompt."""
    from gpa_jax.acoustic.api import AcousticStage

    stage = AcousticStage(nar, prompt_frames=8, chunk_frames=20)
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, CODEBOOK, (N_Q, 30))  # longer than prompt_frames: cropped
    long = rng.integers(0, CODEBOOK, 50)  # 3 chunks: 20 + 20 + 10
    out = stage.complete(long, prompt)
    assert out.shape == (N_Q, 50)
    np.testing.assert_array_equal(out[0], long)  # RVQ-1 is kept as given
    pieces = stage.complete([long[:20], long[20:40], long[40:]], [prompt[:, :8]] * 3)
    np.testing.assert_array_equal(out, np.concatenate(pieces, axis=1))


def test_expected_decoding_is_the_posterior_mean_latent(nar):
    """nar_decoding="expected": RVQ-1's code vector + sum_k E_{p_k}[e_k], where p_k is the
    model's distribution for layer k given the greedy codes of layers < k."""
    from gpa_jax.acoustic.api import AcousticStage

    rng = np.random.default_rng(5)
    books = rng.standard_normal((N_Q, CODEBOOK, CFG.latent_dim)).astype(np.float32)
    greedy = AcousticStage(nar)
    expected = AcousticStage(nar, nar_decoding="expected", codebooks=books)
    assert (greedy.output, expected.output) == ("codes", "latent")
    prompt, tokens = rng.integers(0, CODEBOOK, (N_Q, 7)), rng.integers(0, CODEBOOK, 12)
    codes = greedy.complete(tokens, prompt)
    latent = expected.complete(tokens, prompt)
    assert latent.shape == (12, CFG.latent_dim) and latent.dtype == np.float32
    # The reference: one forward pass per layer on the greedy row, by hand.
    row, pm, seg, _ = greedy._rows([tokens], [prompt])
    row[0, 7:19] = codes.T  # layers >= k are invisible at stage k (the leak test)
    want = books[0][tokens]
    for k in range(1, N_Q):
        stage = jnp.full((row.shape[0],), k, jnp.int32)
        h = nar.hidden(jnp.asarray(row), stage, jnp.asarray(pm), jnp.asarray(seg))
        p = np.asarray(jax.nn.softmax(nar.stage_logits(h, stage), axis=-1))[0, 7:19]
        want = want + p @ books[k]
    np.testing.assert_allclose(latent, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="codebooks"):
        AcousticStage(nar, nar_decoding="expected")
    with pytest.raises(ValueError, match="nar_decoding"):
        AcousticStage(nar, nar_decoding="beam")
