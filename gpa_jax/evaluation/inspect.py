"""Looking inside a generation: which segment each token belongs to, and the LM's attention.

    spans = token_segments(tokens, vocab)            # [(start, end, kind), ...]
    probs = attention_maps(model, tokens, prefix_length=len(prompt))   # [layers, heads, l, l]

Segment kinds: "tag" (task tag), "delimiter", "text", "audio<k>" (RVQ layer k + 1 ids),
"eos", "pad", "other" (any other control id). The notebook colours them.

`attention_maps` re-runs the LM's blocks once on one sequence (unrolled layers) and, at
every layer, forms the softmax of the same q·k the model's attention uses (its own
projections, QK-norm, RoPE and mask), so the maps are the model's, computed outside its
fused attention kernel. One row, no packing; the prompt is the bidirectional prefix when
the model was trained with one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gpa_jax.models.layers import make_attention_mask
from gpa_jax.tasks.vocab import (
    DELIM_END,
    DELIM_START,
    EOS_ID,
    PAD_ID,
    TAG_END,
    TAG_START,
    TEXT_OFFSET,
    SpeechVocabulary,
)


def token_kind(token: int, vocab: SpeechVocabulary) -> str:
    token = int(token)
    if token == PAD_ID:
        return "pad"
    if token == EOS_ID:
        return "eos"
    for k in range(vocab.num_audio_streams):
        lo, hi = vocab.audio_range(k)
        if lo <= token < hi:
            return f"audio{k + 1}"
    if TEXT_OFFSET <= token < TEXT_OFFSET + vocab.text_size:
        return "text"
    if TAG_START <= token < TAG_END:
        return "tag"
    if DELIM_START <= token < DELIM_END:
        return "delimiter"
    return "other"


def token_segments(tokens: np.ndarray, vocab: SpeechVocabulary) -> list[tuple[int, int, str]]:
    """Runs of one kind: [(start, end, kind)] covering `tokens` in order."""
    spans: list[tuple[int, int, str]] = []
    for i, token in enumerate(np.asarray(tokens).reshape(-1)):
        kind = token_kind(token, vocab)
        if spans and spans[-1][2] == kind:
            spans[-1] = (spans[-1][0], i + 1, kind)
        else:
            spans.append((i, i + 1, kind))
    return spans


def attention_maps(model, tokens: np.ndarray, prefix_length: int = 0) -> np.ndarray:
    """Attention probabilities float32 [layers, heads, l, l] of one sequence (module doc)."""
    cfg = model.cfg
    if cfg.scan_layers:
        raise ValueError("attention_maps needs unrolled layers (model.scan_layers=False)")
    tokens = jnp.asarray(np.asarray(tokens, np.int32).reshape(1, -1))
    length = tokens.shape[1]
    positions = jnp.arange(length, dtype=jnp.int32)[None]
    segment_ids = jnp.ones_like(tokens)
    prefix = (jnp.arange(length) < prefix_length)[None] if cfg.prefix_bidirectional else None
    mask = make_attention_mask(segment_ids, prefix)  # [1, 1, l, l]
    x = model.embed(tokens).astype(jnp.float32)
    maps = []
    for block in model.decoder.layers:
        q, k, _ = block.attn.project_qkv(block.pre_attn_norm(x), positions)
        group = q.shape[2] // k.shape[2]
        k = jnp.repeat(k, group, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
        scores = scores / np.sqrt(q.shape[-1])
        maps.append(jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1)[0])
        x = block(x, positions, mask)
    return np.asarray(jnp.stack(maps), np.float32)
