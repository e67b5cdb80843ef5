"""The auxiliary CTC loss of ASR examples, built from a packed LM batch.

The LM learns ASR slowly because two things must be learnt at once: what each source
frame says, and which frame the next transcript character should read. A CTC loss on the
source positions' final hidden states (hybrid CTC/attention training, Watanabe et al.
2017) teaches the first directly: an ASR example's source-audio positions, in order, are
CTC's input frames and its transcript's text ids its labels (blank = <pad>, which is never
a label). The transcript positions then read source positions that already carry what was
said.

A packed row holds several examples, so the layout is per (row, slot): slot k is the
row's k-th ASR example. `ctc_layout` returns, for [b, slots, frames] / [b, slots, labels]:

    frame_index   the row position of each input frame (0 where padded)
    frame_pad     1.0 where there is no frame
    labels        the transcript's text ids (0 where padded)
    label_pad     1.0 where there is no label
    active        [b, slots] 1.0 for a slot whose example takes part: it fits the frame
                  budget and has enough frames for its labels (else CTC has no path)

The source positions are `attention_guide.conditioning_keys` of ASR examples, the labels
their loss positions whose target is a text id (the closing <eos> is not a label).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from gpa_jax.tasks.config import TASK_NAMES
from gpa_jax.tasks.ids import PAD_ID, TEXT_OFFSET
from gpa_jax.training.attention_guide import conditioning_keys, rank_and_count
from gpa_jax.training.data_iter import TASK_IDS_KEY

ASR_TASK_ID = TASK_NAMES.index("asr") + 1  # decoder_task_ids numbering (0 = padding)


def _scatter(values: jax.Array, rows, slots, ranks, keep, shape) -> jax.Array:
    """[b, l] values -> `shape` [b, slots, n] at (row, slot, rank) where `keep`; the rest 0
    (out-of-range writes are dropped)."""
    slots = jnp.where(keep, slots, shape[1])  # out of range: dropped
    return jnp.zeros(shape, values.dtype).at[rows, slots, ranks].set(values, mode="drop")


def ctc_layout(
    batch: Mapping[str, jax.Array], slots: int, max_frames: int
) -> dict[str, jax.Array]:
    """The CTC inputs of a packed batch's ASR examples (module docstring). The label axis
    is `max_frames` long too: a taking-part example never has more labels than frames."""
    tokens = batch["decoder_input_tokens"]
    targets = batch["decoder_target_tokens"]
    segments = batch["decoder_segment_ids"].astype(jnp.int32)
    loss = (batch["decoder_loss_weights"] > 0) & (segments > 0)
    asr = (batch[TASK_IDS_KEY] == ASR_TASK_ID) & (segments > 0)
    frames = conditioning_keys(tokens, segments, loss) & asr
    labels = loss & asr & (targets >= TEXT_OFFSET)

    b, length = tokens.shape
    starts = asr & (segments != jnp.pad(segments, ((0, 0), (1, 0)), constant_values=-1)[:, :-1])
    slot = jnp.cumsum(starts, axis=1) - 1  # the row's ASR example index of each position
    ranks = jax.vmap(rank_and_count)
    f_rank, f_count = ranks(frames.astype(jnp.int32), segments)
    l_rank, l_count = ranks(labels.astype(jnp.int32), segments)
    # A path through CTC's lattice needs a frame per label plus one (a blank) per repeat.
    prev = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    repeat = labels & jnp.pad(labels, ((0, 0), (1, 0)))[:, :-1] & (targets == prev)
    _, r_count = ranks(repeat.astype(jnp.int32), segments)
    fits = (f_count <= max_frames) & (l_count >= 1) & (l_count + r_count <= f_count)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, length))
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    shape = (b, slots, max_frames)
    frame_index = _scatter(positions, rows, slot, f_rank, frames & fits, shape)
    has_frame = _scatter(jnp.ones_like(frames, jnp.float32), rows, slot, f_rank, frames & fits, shape)
    label_ids = _scatter(targets.astype(jnp.int32), rows, slot, l_rank, labels & fits, shape)
    has_label = _scatter(jnp.ones_like(labels, jnp.float32), rows, slot, l_rank, labels & fits, shape)
    return {
        "frame_index": frame_index,
        "frame_pad": 1.0 - has_frame,
        "labels": label_ids,
        "label_pad": 1.0 - has_label,
        "active": (jnp.sum(has_label, axis=-1) > 0).astype(jnp.float32),
    }


def ctc_sums(
    hidden: jax.Array, batch: Mapping[str, jax.Array], ctc_logits, slots: int, max_frames: int
) -> dict[str, jax.Array]:
    """{ctc_sum: the CTC loss summed over the batch's taking-part ASR examples,
    ctc_labels_sum: their label count, ctc_examples_sum: how many}. `hidden` [b, l, d] are
    the LM's final hidden states, `ctc_logits` maps [b, n, d] -> [b, n, vocab]."""
    layout = ctc_layout(batch, slots, max_frames)
    b = hidden.shape[0]
    gathered = jnp.take_along_axis(
        hidden, layout["frame_index"].reshape(b, slots * max_frames)[..., None], axis=1
    )
    logits = ctc_logits(gathered).reshape(b * slots, max_frames, -1)
    per_example = optax.ctc_loss(
        logits,
        layout["frame_pad"].reshape(b * slots, max_frames),
        layout["labels"].reshape(b * slots, max_frames),
        layout["label_pad"].reshape(b * slots, max_frames),
        blank_id=PAD_ID,
    )
    active = layout["active"].reshape(-1)
    return {
        "ctc_sum": jnp.sum(jnp.where(active > 0, per_example, 0.0)),
        "ctc_labels_sum": jnp.sum(1.0 - layout["label_pad"]),
        "ctc_examples_sum": jnp.sum(active),
    }
