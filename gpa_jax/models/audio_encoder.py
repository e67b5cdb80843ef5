"""LauraGPT's continuous audio input: token-aligned feature rows -> LM input embeddings.

With `model.audio_input = "continuous"` the LM does not read codec-token embeddings at
the audio *input* positions of an example (ASR / VC source, TTS / VC reference); it reads
this encoder's output there instead. Its outputs stay discrete codec tokens.

Input rows are `gpa_jax.audio.features.token_aligned_log_mel` (the two 10 ms log-mel
frames of each 20 ms codec frame, concatenated: a stride-2 subsampling of Whisper's
100 Hz front end to the codec's 50 Hz, one row per token position) or the codec's CTC
content teacher's features (`data.token_features`), carried in the packed
batch as `decoder_audio_features` [b, l, F] with `decoder_audio_mask` [b, l] (1 where a
row is read), both aligned with `decoder_input_tokens`.

    rows --(kernel-3 convolution over neighbouring audio rows)--> embed
         --> RMSNorm --> `audio_encoder_layers` transformer blocks of the LM's own shape,
             bidirectional over the audio rows of the same packed example
         --> RMSNorm --> linear into the LM's embedding

The convolution reads a row's neighbours only when they are audio rows of the same
example, and attention only sees audio rows of the same example (segment), so packing
never leaks between examples and text/delimiter positions never enter the encoder. The
blocks are the LM's `DecoderStack` with its logical axis names, so the LM's sharding
rules shard the encoder too.

`causal=True` is the same encoder for the hybrid variant (WHISPER-GPT,
`gpa_jax.models.transformer.DecoderLM`): the convolution reads rows t-2, t-1, t and the
blocks attend causally, so row t's output depends on no later row and the causal LM
stays causal in the mel it reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gpa_jax.models.config import LMConfig
from gpa_jax.models.layers import DenseGeneral, RMSNorm
from gpa_jax.models.stack import DecoderStack

CONV_WIDTH = 3  # rows: the frame itself and one on each side (60 ms of mel frames)


def _shift(x: jax.Array, offset: int, fill: Any = 0) -> jax.Array:
    """x [b, l, ...] -> row t holds x[t + offset] (`fill` past the ends)."""
    if offset == 0:
        return x
    pad = [(0, 0)] * x.ndim
    if offset > 0:
        pad[1] = (0, offset)
        return jnp.pad(x[:, offset:], pad, constant_values=fill)
    pad[1] = (-offset, 0)
    return jnp.pad(x[:, :offset], pad, constant_values=fill)


def _offsets(causal: bool) -> tuple[int, ...]:
    """Row offsets the convolution reads: centred, or the row and the two before it."""
    return tuple(range(1 - CONV_WIDTH, 1)) if causal else tuple(range(-1, CONV_WIDTH - 1))


def _neighbours(x: jax.Array, keep: jax.Array, causal: bool = False) -> jax.Array:
    """[b, l, f] -> [b, l, CONV_WIDTH, f]: rows t+o for each of `_offsets(causal)`, zeroed
    where `keep` [b, l, CONV_WIDTH] is False (not an audio row of the same example, or
    past the row's ends)."""
    stacked = jnp.stack([_shift(x, o) for o in _offsets(causal)], axis=2)
    return stacked * keep[..., None].astype(x.dtype)


def _neighbour_mask(mask: jax.Array, segment_ids: jax.Array, causal: bool = False) -> jax.Array:
    """bool [b, l, CONV_WIDTH]: whether rows t+o (`_offsets`) are audio rows of row t's
    example."""
    seg = jnp.where(mask, segment_ids, -1)
    same = [_shift(seg, o, fill=-2) == seg for o in _offsets(causal)]
    return jnp.stack(same, axis=-1) & mask[..., None]


class AudioEncoder(nnx.Module):
    """Token-aligned log-mel rows [b, l, F] -> embeddings [b, l, embed] (module docstring)."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, rules: Any = None, causal: bool = False):
        self.cfg = cfg
        self.causal = causal
        dims = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.conv = DenseGeneral(
            (CONV_WIDTH, cfg.audio_feature_dim), (cfg.embed_dim,), (None, None, "embed"), **dims
        )
        self.in_norm = RMSNorm(
            cfg.embed_dim, eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype
        )
        # The LM's block shape, bidirectional unless causal, without the LM-only extras.
        block_cfg = dataclasses.replace(
            cfg,
            num_layers=cfg.audio_encoder_layers,
            prefix_bidirectional=not causal,
            guide_weight=0.0,
            audio_input="tokens",
        )
        # Ends in RMSNorm. None for 0 layers: rows that already carry context (the CTC
        # teacher's features) need only the convolution and the projection.
        self.blocks = (
            DecoderStack(block_cfg, rngs=rngs, rules=rules) if cfg.audio_encoder_layers else None
        )
        self.out = DenseGeneral((cfg.embed_dim,), (cfg.embed_dim,), ("embed", None), **dims)

    def __call__(
        self,
        features: jax.Array,
        mask: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        *,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """features [b, l, F], mask [b, l] (nonzero = audio row), segment_ids / positions
        [b, l] of the packed batch -> [b, l, embed]; rows where mask is 0 are meaningless."""
        mask = mask.astype(bool)
        keep = _neighbour_mask(mask, segment_ids, self.causal)
        x = self.in_norm(self.conv(_neighbours(features.astype(jnp.float32), keep, self.causal)))
        # Segment 0 is padding to the attention mask: non-audio rows see nothing, and
        # every audio row of an example sees all of them (all lie in the "prefix"), or,
        # causal, the ones up to itself.
        if self.blocks is None:
            return self.out(x)
        audio_segments = jnp.where(mask, segment_ids, 0)
        prefix = None if self.causal else mask
        h = self.blocks(x, audio_segments, positions, prefix, dropout_key=dropout_key)
        return self.out(h)
