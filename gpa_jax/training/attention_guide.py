"""The band guided attention steers towards, built from a packed LM batch.

A decoder-only LM must learn by itself which input position each output token reads: the
text character a speech frame says (TTS), the audio a word was spoken in (ASR), the source
frame a converted frame follows (VC). On small budgets it does not (the conditioning
report, `gpa_jax.evaluation.conditioning`, shows outputs that barely depend on their
input), and a DC-TTS-style prior is the classic remedy: output position t of T should
attend near position t/T of the conditioning input. `attention_guide` returns, per row,

    band[i, j]  = exp(-(t_i - n_j)^2 / (2 sigma^2))  for a guided query i and a
                  conditioning key j of the same packed example, else 0
    queries[i]  = 1 on the guided queries: every loss position of an example that has a
                  conditioning input

with t_i = (rank of i among its example's loss positions + 0.5) / their count and n_j the
same over its conditioning keys. What is the conditioning input is read off the token
layout (`gpa_jax.tasks.layout`): content tokens (text or audio ids) of the prefix whose
segment was opened by <|text|> (the TTS text) or <|src_audio|> (the ASR / VC source). The
reference clip and the control tokens are not part of it, so the guided heads stay free
of the voice prompt and the other heads of any constraint.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from gpa_jax.tasks.ids import DELIM_END, DELIM_START, TEXT_OFFSET, delimiter_id

# The delimiters that open a conditioning input (fixed ids: see gpa_jax.tasks.vocab).
CONDITIONING_DELIMITERS = (delimiter_id("text"), delimiter_id("src_audio"))


def rank_and_count(mask: jax.Array, segments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per position of one row: its rank among the `mask` positions of its segment, and
    how many `mask` positions the segment has."""
    num = segments.shape[0] + 1
    before = jnp.cumsum(mask) - mask
    base = jax.ops.segment_min(before, segments, num_segments=num)
    total = jax.ops.segment_sum(mask, segments, num_segments=num)
    return before - base[segments], total[segments]


def conditioning_keys(tokens: jax.Array, segments: jax.Array, loss: jax.Array) -> jax.Array:
    """[b, l] bool: the conditioning-input positions (module docstring) of input `tokens`."""
    length = tokens.shape[1]
    is_delim = (tokens >= DELIM_START) & (tokens < DELIM_END)
    last = jax.lax.cummax(jnp.where(is_delim, jnp.arange(length), -1), axis=1)
    opener = jnp.where(last >= 0, jnp.take_along_axis(tokens, jnp.maximum(last, 0), axis=1), -1)
    opened = jnp.isin(opener, jnp.asarray(CONDITIONING_DELIMITERS))
    return (tokens >= TEXT_OFFSET) & ~loss & (segments > 0) & opened


def attention_guide(batch: Mapping[str, jax.Array], sigma: float) -> tuple[jax.Array, jax.Array]:
    """(band [b, l, l] float32, queries [b, l] float32) of a packed batch (module docstring)."""
    tokens = batch["decoder_input_tokens"]
    segments = batch["decoder_segment_ids"].astype(jnp.int32)
    loss = (batch["decoder_loss_weights"] > 0) & (segments > 0)
    keys = conditioning_keys(tokens, segments, loss)
    ranks = jax.vmap(rank_and_count)
    n_rank, n_count = ranks(keys.astype(jnp.float32), segments)
    t_rank, t_count = ranks(loss.astype(jnp.float32), segments)
    n = (n_rank + 0.5) / jnp.maximum(n_count, 1.0)
    t = (t_rank + 0.5) / jnp.maximum(t_count, 1.0)
    queries = loss & (n_count > 0)
    pair = queries[:, :, None] & keys[:, None, :] & (segments[:, :, None] == segments[:, None, :])
    band = jnp.exp(-jnp.square(t[:, :, None] - n[:, None, :]) / (2.0 * sigma**2))
    return jnp.where(pair, band, 0.0), queries.astype(jnp.float32)
