"""Packing prefix-LM feature converter that also carries a per-token task id.

Input: task examples {"inputs": prefix ids, "targets": output ids ending in <eos>}, with
len(inputs) + len(targets) <= L (the tasks' length rule). Output, per packed row of
length L (seqio/T5X decoder names, int32):

    decoder_target_tokens     inputs ++ targets of each packed example, 0 = padding
    decoder_input_tokens      targets shifted right within each example (0 at its start)
    decoder_loss_weights      1 on the "targets" part only (output segment + <eos>)
    decoder_causal_attention  1 on the prefix as read by the model: positions
                              0..len(inputs) of each example (seqio's PrefixLM
                              convention: one extra position, where the last prefix
                              token is read and the first output token predicted)
    decoder_segment_ids       1, 2, ... per packed example, 0 = padding
    decoder_positions         position within its example
    decoder_task_ids          task of each token's example: TASK_IDS (tts=1, asr=2,
                              vc=3, se=4), 0 = padding; derived from the example's first token
                              (its task tag), so no extra feature has to survive seqio

With `audio_frames=True` (the continuous audio input; examples carry the tasks'
"input_frames", the bank frame each inputs position holds, -1 for none) it also emits

    decoder_audio_frames      1 + the bank's global frame index of the audio frame that
                              decoder_input_tokens holds at this position, 0 = none
                              (tags, delimiters, text, outputs, padding). Aligned with
                              decoder_input_tokens: shifted right within each example
                              exactly like the tokens (input position i reads target
                              token i - 1, so it gets that token's frame).

Segment ids and positions are emitted with and without packing (the LM trainer always
takes them). The trainer's name for decoder_causal_attention is decoder_prefix_mask;
`gpa_jax.tasks.pipeline.to_trainer_batch` renames it, in that one place.

Lengths: call with task_feature_lengths = {"inputs": L, "targets": L}
(`feature_lengths(L)`); the packed row length is L, not 2L as in seqio's
PrefixLMFeatureConverter, because the tasks bound the sum, not each part. An example
longer than L fails loudly (tf assertion) instead of being silently truncated.

Why not seqio.PrefixLMFeatureConverter itself: it sizes rows as inputs + targets lengths,
has no segment ids/positions when unpacked, and has no per-token task id. Its packer
(seqio.utils.trim_and_pack_dataset) is reused; it takes each feature's length as its count
of non-zero values, so the 0/1 masks travel through it as 1/2 and are decoded after, and
the frame indices as index + 2 (1 = no frame), decoded to index + 1 (0 = none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from gpa_jax.tasks.vocab import TASK_TAGS, SpeechVocabulary

TASK_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(TASK_TAGS)}
_Spec = seqio.FeatureConverter.FeatureSpec
MODEL_FEATURE_NAMES = (
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
    "decoder_causal_attention",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_task_ids",
)
# The tasks' per-inputs-position frame index (-1 = none) and the model feature made of it.
INPUT_FRAMES = "input_frames"
AUDIO_FRAMES = "decoder_audio_frames"
_PACKED = ("targets", "role", "prefix", "task")


def feature_lengths(sequence_length: int) -> dict[str, int]:
    """task_feature_lengths for a packed row length L (see module docstring)."""
    return {"inputs": int(sequence_length), "targets": int(sequence_length)}


class SpeechPrefixLMFeatureConverter(seqio.FeatureConverter):
    """Prefix-LM conversion with packing and per-token task ids (module docstring)."""

    TASK_FEATURES = {"inputs": _Spec(dtype=tf.int32), "targets": _Spec(dtype=tf.int32)}
    MODEL_FEATURES = {name: _Spec(dtype=tf.int32) for name in MODEL_FEATURE_NAMES}
    PACKING_FEATURE_DTYPES: Mapping[str, tf.dtypes.DType] = {}

    def __init__(
        self,
        task_tag_ids: Sequence[int],
        pack: bool = True,
        audio_frames: bool = False,
        **kwargs,
    ):
        super().__init__(pack=pack, **kwargs)
        self._tag_ids = tf.constant(list(task_tag_ids), dtype=tf.int32)
        self.audio_frames = bool(audio_frames)
        self._names = MODEL_FEATURE_NAMES + ((AUDIO_FRAMES,) if self.audio_frames else ())
        self._packed = _PACKED + (("frames",) if self.audio_frames else ())
        if self.audio_frames:
            # seqio checks the output against MODEL_FEATURES (read through self).
            self.MODEL_FEATURES = {name: _Spec(dtype=tf.int32) for name in self._names}

    @classmethod
    def for_vocab(
        cls, vocab: SpeechVocabulary, pack: bool = True, audio_frames: bool = False, **kwargs
    ):
        tags = [vocab.task_tag_id(t) for t in TASK_TAGS]
        return cls(tags, pack=pack, audio_frames=audio_frames, **kwargs)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        length = int(task_feature_lengths["targets"])
        return {name: length for name in self._names}

    def _concat(self, ex: Mapping[str, tf.Tensor], length: int) -> dict[str, tf.Tensor]:
        inputs, targets = ex["inputs"], ex["targets"]
        n_in, n_out = tf.size(inputs), tf.size(targets)
        total = n_in + n_out
        checks = [
            tf.debugging.assert_less_equal(
                total,
                length,
                message=f"example longer than the sequence length {length}: the tasks' "
                "length rule should have dropped it",
            ),
            tf.debugging.assert_positive(n_in, message="empty inputs (no task tag)"),
            tf.debugging.assert_positive(n_out, message="empty targets (no <eos>)"),
        ]
        with tf.control_dependencies(checks):
            match = tf.cast(tf.equal(self._tag_ids, inputs[0]), tf.int32)
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    tf.reduce_sum(match), 1, message="example does not start with a task tag"
                )
            ]
        ):
            task_id = tf.argmax(match, output_type=tf.int32) + 1
        ones_in, ones_out = tf.ones([n_in], tf.int32), tf.ones([n_out], tf.int32)
        out = {
            "targets": tf.concat([inputs, targets], 0),
            # Nonzero codes for the packer: role 1 = prefix, 2 = output.
            "role": tf.concat([ones_in, 2 * ones_out], 0),
            # 2 = read inside the bidirectional prefix (len(inputs) + 1 positions).
            "prefix": tf.concat([2 * ones_in, [2], ones_out[1:]], 0),
            "task": tf.fill([total], task_id),
        }
        if self.audio_frames:
            frames = tf.cast(ex[INPUT_FRAMES], tf.int32)
            with tf.control_dependencies(
                [
                    tf.debugging.assert_equal(
                        tf.size(frames), n_in, message=f"{INPUT_FRAMES} is not as long as inputs"
                    )
                ]
            ):
                # Nonzero for the packer: frame index + 2 (any negative = no frame -> 1).
                out["frames"] = tf.concat([tf.maximum(frames, -1) + 2, ones_out], 0)
        return out

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        length = int(task_feature_lengths["targets"])
        ds = ds.map(lambda ex: self._concat(ex, length), num_parallel_calls=tf.data.AUTOTUNE)
        lengths = {k: length for k in self._packed}
        if self.pack:
            ds = seqio.utils.trim_and_pack_dataset(ds, lengths, self._use_custom_packing_ops)
        else:
            ds = seqio.utils.trim_and_pad_dataset(ds, lengths)
        return ds.map(self._model_features, num_parallel_calls=tf.data.AUTOTUNE)

    def _model_features(self, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        tokens = ex["targets"]
        if self.pack:
            segment_ids = ex["targets_segment_ids"]
            positions = ex["targets_positions"]
        else:
            segment_ids = tf.cast(tf.not_equal(tokens, 0), tf.int32)
            positions = tf.range(tf.size(tokens), dtype=tf.int32) * segment_ids
        inputs = seqio.utils.make_autoregressive_inputs(
            tokens, sequence_id=segment_ids if self.pack else None, bos_id=self.bos_id
        )
        # Padding reads 0 (unpacked, the shift would carry the last <eos> into it).
        real = tf.cast(segment_ids > 0, tf.int32)
        inputs *= real
        out = {
            "decoder_target_tokens": tokens,
            "decoder_input_tokens": inputs,
            "decoder_loss_weights": tf.cast(tf.equal(ex["role"], 2), tf.int32),
            "decoder_causal_attention": tf.cast(tf.equal(ex["prefix"], 2), tf.int32),
            "decoder_segment_ids": segment_ids,
            "decoder_positions": positions,
            "decoder_task_ids": ex["task"],
        }
        if self.audio_frames:
            # Shifted like the tokens (0 at each example's start), then index + 2 -> + 1.
            shifted = seqio.utils.make_autoregressive_inputs(
                ex["frames"], sequence_id=segment_ids if self.pack else None, bos_id=0
            )
            out[AUDIO_FRAMES] = tf.maximum(shifted - 1, 0) * real
        return out
