"""The continuous audio-input variant (LauraGPT): what the LM reads at audio input positions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpa_jax.models import LMConfig
from tests.models.helpers import numpy_model

CFG = LMConfig(
    vocab_size=64, num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16,
    mlp_dim=64, rope_theta=10_000.0, dtype="float32", scan_layers=False,
    audio_input="continuous", audio_encoder_layers=1, audio_feature_dim=6, init_std=1.0,
)  # fmt: skip
B, L, F = 2, 16, 6

# Two packed examples per row: [tag, delim, audio x4, delim, text x1] + [tag, delim, audio
# x3, delim, text...]; audio rows are the mask's ones.
SEGMENTS = np.array([[1] * 8 + [2] * 8] * B, np.int32)
POSITIONS = np.concatenate([np.arange(8), np.arange(8)])[None].repeat(B, 0).astype(np.int32)
MASK = np.array([[0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]] * B, np.int32)


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, (B, L)).astype(np.int32)
    features = rng.standard_normal((B, L, F)).astype(np.float32)
    return tokens, features


@nnx.jit
def forward(model, tokens, features, mask):
    return model(tokens, SEGMENTS, POSITIONS, None, audio_features=features, audio_mask=mask)


def test_audio_positions_read_the_features_not_the_token_ids():
    model = numpy_model(CFG)
    tokens, features = inputs()
    base = forward(model, tokens, features, MASK)
    # Other codec ids at the audio positions: nothing changes (they are placeholders).
    other = np.where(MASK > 0, (tokens + 7) % CFG.vocab_size, tokens)
    np.testing.assert_allclose(forward(model, other, features, MASK), base, atol=1e-5)
    # Other features at non-audio positions: nothing changes.
    noise = np.where(MASK[..., None] > 0, features, features + 5.0)
    np.testing.assert_allclose(forward(model, tokens, noise, MASK), base, atol=1e-5)
    # Other features at one audio row of example 1: example 1 changes from that row on
    # (the encoder is bidirectional, so earlier audio rows too), example 2 does not.
    edited = features.copy()
    edited[:, 4] = 3.0
    changed = forward(model, tokens, edited, MASK)
    assert float(jnp.max(jnp.abs(changed[:, 2:8] - base[:, 2:8]))) > 1e-3
    np.testing.assert_allclose(changed[:, 8:], base[:, 8:], atol=1e-5)


def test_features_of_one_packed_example_never_reach_the_other():
    model = numpy_model(CFG)
    tokens, features = inputs()
    base = forward(model, tokens, features, MASK)
    later = np.where(np.arange(L)[None, :, None] >= 8, features * -2.0, features)
    out = forward(model, tokens, later, MASK)
    np.testing.assert_allclose(out[:, :8], base[:, :8], atol=1e-5)
    assert float(jnp.max(jnp.abs(out[:, 10:] - base[:, 10:]))) > 1e-3


def test_missing_features_are_named():
    model = numpy_model(CFG)
    tokens, _ = inputs()
    with pytest.raises(ValueError, match="decoder_audio_features"):
        model(tokens)


def test_the_encoder_trains_with_the_lm():
    model = numpy_model(CFG)
    tokens, features = inputs()

    def loss(m):
        logits = m(tokens, SEGMENTS, POSITIONS, None, audio_features=features, audio_mask=MASK)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = nnx.grad(loss)(model)
    encoder = jax.tree.leaves(nnx.state(grads.audio_encoder, nnx.Param))
    assert encoder and all(float(jnp.max(jnp.abs(g))) > 0 for g in encoder)


def test_prefill_reads_the_features_as_training_does():
    model = numpy_model(dataclasses.replace(CFG, prefix_bidirectional=True))
    tokens, features = inputs()
    segments = np.ones((B, L), np.int32)
    positions = np.arange(L, dtype=np.int32)[None].repeat(B, 0)
    prefix = (np.arange(L) < 8)[None].repeat(B, 0).astype(np.int32)
    mask = np.where(np.arange(L) < 8, MASK, 0).astype(np.int32)
    full = model(tokens, segments, positions, prefix, audio_features=features, audio_mask=mask)
    hidden, _ = model.prefill(tokens, segments, positions, prefix, L, audio_features=features,
                              audio_mask=mask)  # fmt: skip
    np.testing.assert_allclose(model.logits(hidden), full, atol=1e-4)


def test_tokens_variant_has_no_encoder_and_unknown_variants_are_named():
    assert numpy_model(dataclasses.replace(CFG, audio_input="tokens")).audio_encoder is None
    with pytest.raises(ValueError, match="audio_input='mel'"):
        dataclasses.replace(CFG, audio_input="mel")


def test_zero_encoder_layers_read_rows_through_the_convolution_only():
    """audio_encoder_layers=0 (rows that already carry context, e.g. the CTC teacher's):
    no blocks; a row reaches the embeddings of its neighbours only, so the causal LM's
    logits before the row's left neighbour do not move."""
    model = numpy_model(dataclasses.replace(CFG, audio_encoder_layers=0))
    assert model.audio_encoder.blocks is None
    tokens, features = inputs()
    base = forward(model, tokens, features, MASK)
    edited = features.copy()
    edited[:, 4] = 3.0
    changed = forward(model, tokens, edited, MASK)
    np.testing.assert_allclose(changed[:, :3], base[:, :3], atol=1e-5)
    assert float(jnp.max(jnp.abs(changed[:, 3:8] - base[:, 3:8]))) > 1e-3
    np.testing.assert_allclose(changed[:, 8:], base[:, 8:], atol=1e-5)
