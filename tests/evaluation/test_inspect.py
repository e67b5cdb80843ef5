"""Attention maps are the model's own attention; token segments follow the vocabulary."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from gpa_jax.evaluation.inspect import attention_maps, token_segments
from gpa_jax.models.layers import make_attention_mask
from gpa_jax.tasks import layout
from gpa_jax.tasks.vocab import EOS_ID, SpeechVocabulary, make_text_vocabulary
from tests.models.helpers import numpy_model
from tests.sampling.helpers import BASE


@pytest.mark.parametrize("prefix", [False, True])
def test_maps_reproduce_the_attention_output(prefix):
    cfg = dataclasses.replace(BASE, prefix_bidirectional=prefix)
    model = numpy_model(cfg)
    tokens = np.random.default_rng(0).integers(4, cfg.vocab_size, 12)
    maps = attention_maps(model, tokens, prefix_length=5)
    assert maps.shape == (cfg.num_layers, cfg.num_heads, 12, 12)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    upper = np.triu(np.ones((12, 12), bool), 1)
    if prefix:
        upper[:5, :5] = False
    assert np.all(maps[:, :, upper] == 0)
    if prefix:
        assert maps[0, :, 0, 4].min() > 0  # the prefix attends forwards within itself
    # Layer 0: P @ V through o_proj equals the block's attention branch.
    block = model.decoder.layers[0]
    x = model.embed(jnp.asarray(tokens[None], jnp.int32))
    positions = jnp.arange(12)[None]
    mask = make_attention_mask(jnp.ones((1, 12), jnp.int32), (jnp.arange(12) < 5)[None] if prefix else None)
    h = block.pre_attn_norm(x)
    _, _, v = block.attn.project_qkv(h, positions)
    v = jnp.repeat(v, cfg.num_heads // cfg.num_kv_heads, axis=2)
    o = jnp.einsum("hqk,khd->qhd", jnp.asarray(maps[0]), v[0])[None]
    np.testing.assert_allclose(
        np.asarray(block.attn.project_out(o)), np.asarray(block.attn(h, positions, mask)), atol=1e-4
    )


def test_token_segments_label_a_tts_prompt():
    vocab = SpeechVocabulary(make_text_vocabulary("byte"), num_audio_streams=1, codebook_size=16)
    ref = layout.reference_ids(np.array([[1, 2, 3]]), vocab)
    text = np.asarray(vocab.encode("hi"), np.int32)
    prompt = layout.join(layout.input_segments("tts", vocab, text=text, reference=ref))
    tokens = np.concatenate([prompt, vocab.audio_to_ids([5, 6], 0), [EOS_ID]])
    kinds = [kind for _, _, kind in token_segments(tokens, vocab)]
    assert kinds == ["tag", "delimiter", "audio1", "delimiter", "text", "delimiter", "audio1", "eos"]
    spans = token_segments(tokens, vocab)
    assert spans[0][0] == 0 and spans[-1][1] == len(tokens)
