"""The token layout of each task's example: the one home of segment order and delimiters.

Both the SeqIO tasks (TensorFlow ops over the in-memory bank, `gpa_jax.tasks.tasks`) and
the sampler (numpy arrays of a request, `gpa_jax.sampling`) build sequences with these
functions, so training and inference cannot drift apart. The layout itself is documented
in `gpa_jax.tasks.tasks`' module docstring.

The functions take an array module `xp` (numpy or tensorflow): the same code joins
numpy id arrays for a request and tf tensors inside a tf.data map.

What the model reads at generation time: the feature converter feeds the targets shifted
right with `PROMPT_START` (seqio's BOS id, 0) in front, so a prompt is
[PROMPT_START] ++ inputs and the model's first output is predicted at its last position;
the whole prompt is the (optionally bidirectional) prefix.

Continuous audio input (model.audio_input="continuous"): `input_frame_segments` gives,
for every "inputs" position, which audio frame it holds (a row of the bank's per-frame
features) or `NO_FRAME`, in the same segment order as `input_segments`, so a model can
read features instead of (or beside) the token embedding at audio input positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpa_jax.tasks.vocab import EOS_ID, PAD_ID, TEXT_OFFSET, SpeechVocabulary

# seqio.FeatureConverter's default bos_id, which make_autoregressive_inputs puts first.
PROMPT_START = PAD_ID
# What each task generates: "text" (text ids) or "audio" (RVQ-1 = audio stream 0 ids).
OUTPUT_KIND = {"tts": "audio", "asr": "text", "vc": "audio", "se": "audio"}
# `input_frame_segments` at positions that hold no audio frame (tags, delimiters, text).
NO_FRAME = -1


def input_segments(
    task: str,
    vocab: SpeechVocabulary,
    *,
    text: Any = None,
    reference: Any = None,
    source: Any = None,
) -> list[Any]:
    """The "inputs" feature of a `task` example as an ordered list of pieces.

    Pieces are python lists of control ids (tag, delimiters) and the given id arrays:
    `text` (text ids), `reference` (`reference_ids`), `source` (RVQ-1 ids). Join them
    with `join`.
    """
    d = vocab.delimiter_id
    tag = vocab.task_tag_id(task)
    if task == "tts":
        return [[tag, d("ref_audio")], reference, [d("text")], text, [d("tgt_audio")]]
    if task == "asr":
        return [[tag, d("src_audio")], source, [d("text")]]
    if task == "vc":
        return [[tag, d("ref_audio")], reference, [d("src_audio")], source, [d("tgt_audio")]]
    if task == "se":  # the noisy input is the source; its voice needs no reference
        return [[tag, d("src_audio")], source, [d("tgt_audio")]]
    raise ValueError(f"unknown task {task!r}; tasks: {tuple(OUTPUT_KIND)}")


def input_frame_segments(
    task: str,
    vocab: SpeechVocabulary,
    *,
    text: Any = None,
    reference: Any = None,
    source: Any = None,
    ref_layers: int = 1,
    xp: Any = np,
) -> list[Any]:
    """The audio frame each "inputs" position holds, as pieces aligned with `input_segments`.

    `reference` / `source`: frame indices [frames] of the reference crop and the source
    (in the tasks, global rows of the bank's features: audio_start[u] + f); `text`: the
    text ids (only their count is used). A reference of `ref_layers` layers is
    frame-major (`reference_ids`), so each of its frames fills ref_layers positions with
    its index. Tags, delimiters and text positions hold `NO_FRAME`. Join with `join`.
    Built by calling `input_segments` itself, so the two cannot disagree on the order.
    """

    def column(x: Any) -> Any:
        if xp is np:
            return np.asarray(x, np.int32).reshape(-1)
        return xp.reshape(xp.cast(x, xp.int32), [-1])

    pieces = input_segments(
        task,
        vocab,
        text=None if text is None else NO_FRAME * xp.ones_like(column(text)),
        reference=None if reference is None else xp.repeat(column(reference), int(ref_layers)),
        source=None if source is None else column(source),
    )
    # The control pieces (tag, delimiters) are the python lists.
    return [[NO_FRAME] * len(p) if isinstance(p, list) else p for p in pieces]


def target_segments(output: Any) -> list[Any]:
    """The "targets" feature: the output ids, then <eos>."""
    return [output, [EOS_ID]]


def join(pieces: list[Any], xp: Any = np) -> Any:
    """Concatenates pieces into one int32 vector with numpy or tensorflow (`xp`)."""
    if xp is np:
        return np.concatenate([np.asarray(p, np.int32).reshape(-1) for p in pieces])
    return xp.concat([xp.cast(xp.reshape(p, [-1]), xp.int32) for p in pieces], axis=0)


def reference_ids(
    codes: Any, vocab: SpeechVocabulary, xp: Any = np, layers: int | None = None
) -> Any:
    """Reference codes [layers, frames] -> ids, frame-major: A0 A1 .. A<n-1> per frame.

    `layers` defaults to codes.shape[0] (give it where that is not static, in tf.data)."""
    layers = int(codes.shape[0]) if layers is None else int(layers)
    offsets = np.asarray([vocab.audio_range(k)[0] for k in range(layers)], np.int32)
    block = xp.cast(codes, xp.int32) if xp is not np else np.asarray(codes, np.int32)
    return xp.reshape(xp.transpose(block + offsets[:, None]), [-1])


def output_range(task: str, vocab: SpeechVocabulary) -> tuple[int, int]:
    """[start, end) of the ids `task` may generate (besides <eos>)."""
    if task not in OUTPUT_KIND:
        raise ValueError(f"unknown task {task!r}; tasks: {tuple(OUTPUT_KIND)}")
    if OUTPUT_KIND[task] == "text":
        # The text vocabulary's own PAD/EOS/UNK (its lowest ids) are never emitted.
        tv = vocab.text_vocab
        first = max(int(tv.pad_id), int(tv.eos_id), int(tv.unk_id) if tv.unk_id is not None else 0)
        return TEXT_OFFSET + first + 1, TEXT_OFFSET + vocab.text_size
    return vocab.audio_range(0)
