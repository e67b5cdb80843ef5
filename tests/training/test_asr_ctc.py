"""The auxiliary ASR CTC: its layout read off a packed batch, and its loss term."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gpa_jax.models import LMConfig
from gpa_jax.tasks import layout
from gpa_jax.tasks.ids import PAD_ID
from gpa_jax.tasks.vocab import SpeechVocabulary
from gpa_jax.training import asr_ctc
from gpa_jax.training.train_step import token_sums
from tests.models.helpers import numpy_model
from tests.training.test_attention_guide import _example, _packed

D = SpeechVocabulary.delimiter_id
TAG = SpeechVocabulary.task_tag_id
TASK_ID = {"tts": 1, "asr": 2, "vc": 3}
SHAPE = dict(vocab_size=2048, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
             head_dim=8, mlp_dim=64, max_len=128, dtype="float32", scan_layers=False)  # fmt: skip


def _asr(source: list[int], transcript: list[int]):
    inputs = layout.join([[TAG("asr"), D("src_audio")], source, [D("text")]])
    return inputs, layout.join(layout.target_segments(transcript))


def _batch(rows, length):
    """rows: lists of (task, (inputs, targets)); a packed batch with decoder_task_ids."""
    parts = [_packed([ex for _, ex in row], length) for row in rows]
    batch = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    batch["decoder_task_ids"] = np.zeros_like(batch["decoder_segment_ids"])
    for r, (row, (_, spans)) in enumerate(zip(rows, parts, strict=True)):
        for (task, _), (start, _, n) in zip(row, spans, strict=True):
            batch["decoder_task_ids"][r, start : start + n] = TASK_ID[task]
    return batch


def test_layout_puts_each_asr_example_in_its_own_slot():
    a = _asr([1500 + i for i in range(9)], [100, 101, 101, 102])
    b = _asr([1600 + i for i in range(6)], [110, 111])
    too_short = _asr([1700, 1701], [120, 120])  # a repeat needs a blank frame: 3 > 2 frames
    rows = [[("tts", _example("tts", ref=4, cond=5, out=6)), ("asr", a), ("vc", _example("vc", 3, 4, 5)), ("asr", b)],
            [("asr", too_short)]]  # fmt: skip
    batch = _batch(rows, 80)
    got = {k: np.asarray(v) for k, v in asr_ctc.ctc_layout(batch, slots=3, max_frames=12).items()}
    tokens = batch["decoder_input_tokens"]
    # Row 0: slot k is the row's k-th ASR example; its frames are its source, in order.
    examples = (([1500 + i for i in range(9)], [100, 101, 101, 102]), ([1600 + i for i in range(6)], [110, 111]))
    for slot, (source, transcript) in enumerate(examples):
        n, m = len(source), len(transcript)
        np.testing.assert_array_equal(tokens[0, got["frame_index"][0, slot, :n]], source)
        assert got["frame_pad"][0, slot, :n].sum() == 0 and got["frame_pad"][0, slot, n:].all()
        np.testing.assert_array_equal(got["labels"][0, slot, :m], transcript)
        assert got["label_pad"][0, slot, :m].sum() == 0 and got["label_pad"][0, slot, m:].all()
    np.testing.assert_array_equal(got["active"], [[1, 1, 0], [0, 0, 0]])
    # Too few frames for the labels: the example takes no part at all.
    assert got["label_pad"][1].all() and got["frame_pad"][1].all()
    # An example over the frame budget takes no part either.
    small = asr_ctc.ctc_layout(batch, slots=3, max_frames=8)
    np.testing.assert_array_equal(np.asarray(small["active"]), [[0, 1, 0], [0, 0, 0]])


def test_ctc_weight_adds_the_ctc_of_the_asr_source_to_the_loss():
    rows = [[("asr", _asr([1500 + i for i in range(9)], [100, 101, 101, 102])),
             ("tts", _example("tts", ref=4, cond=5, out=6))],
            [("asr", _asr([1700, 1701], [120, 120]))]]  # fmt: skip
    batch = {k: jnp.asarray(v) for k, v in _batch(rows, 48).items()}
    plain = numpy_model(LMConfig(**SHAPE))
    model = numpy_model(LMConfig(**SHAPE, ctc_weight=0.5, ctc_max_frames=16))
    nnx.update(model, nnx.state(plain))  # the same LM, plus the CTC projection
    a, b = token_sums(plain, batch, None, 0.0, 3), token_sums(model, batch, None, 0.0, 3)
    assert "ctc_sum" not in a
    assert float(b["ctc_examples_sum"]) == 1 and float(b["ctc_labels_sum"]) == 4
    # The same loss by hand: optax's CTC over the first example's source hidden states.
    logits, hidden = model(batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                           batch["decoder_positions"], return_hidden=True)  # fmt: skip
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain(batch["decoder_input_tokens"],
        batch["decoder_segment_ids"], batch["decoder_positions"])), rtol=1e-5)  # fmt: skip
    src = np.arange(3, 12)  # inputs are shifted right: <pad> <|asr|> <|src_audio|> source
    np.testing.assert_array_equal(np.asarray(batch["decoder_input_tokens"][0, src]), 1500 + np.arange(9))
    ctc_logits = model.ctc_logits(hidden[:1, src])
    want = optax.ctc_loss(ctc_logits, jnp.zeros((1, 9)), jnp.asarray([[100, 101, 101, 102]]),
                          jnp.zeros((1, 4)), blank_id=PAD_ID)[0]  # fmt: skip
    np.testing.assert_allclose(float(b["ctc_sum"]), float(want), rtol=1e-4)
    np.testing.assert_allclose(float(b["loss_sum"]), float(a["loss_sum"]) + 0.5 * float(want), rtol=1e-4)

    grads = nnx.grad(lambda m: token_sums(m, batch, None, 0.0, 3)["ctc_sum"])(model)
    flat = [np.asarray(x) for x in jax.tree.leaves(nnx.state(grads, nnx.Param))]
    assert all(np.isfinite(g).all() for g in flat)
    assert np.abs(np.asarray(grads.ctc_proj.kernel[...])).sum() > 0


@pytest.mark.parametrize("tied", [True, False])
def test_ctc_classes_keep_the_first_ids_of_the_same_logits(tied):
    """model.ctc_classes = n: CTC's logits are the whole table's first n columns (the
    control and text ids), for a tied table and a separate head alike."""
    shape = dict(SHAPE, tie_embeddings=tied, ctc_weight=0.5)
    full = numpy_model(LMConfig(**shape))
    text = numpy_model(LMConfig(**shape, ctc_classes=300))
    nnx.update(text, nnx.state(full))  # ctc_classes changes no parameter
    h = jax.random.normal(jax.random.PRNGKey(0), (2, 5, SHAPE["embed_dim"]))
    want = np.asarray(full.ctc_logits(h))
    got = np.asarray(text.ctc_logits(h))
    assert want.shape[-1] == SHAPE["vocab_size"] and got.shape[-1] == 300
    np.testing.assert_allclose(got, want[..., :300], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [1, -1])
def test_ctc_classes_of_no_real_softmax_are_refused(bad):
    with pytest.raises(ValueError, match="ctc_classes"):
        LMConfig(**SHAPE, ctc_weight=0.5, ctc_classes=bad)


def test_ctc_classes_beyond_the_vocabulary_mean_all_of_it():
    """A setting made for a larger vocabulary (gpa_tiny's, under a test's small one)."""
    shape = dict(SHAPE, ctc_weight=0.5)
    full = numpy_model(LMConfig(**shape))
    wide = numpy_model(LMConfig(**shape, ctc_classes=SHAPE["vocab_size"] + 100))
    nnx.update(wide, nnx.state(full))
    h = jax.random.normal(jax.random.PRNGKey(1), (1, 3, SHAPE["embed_dim"]))
    np.testing.assert_allclose(np.asarray(wide.ctc_logits(h)), np.asarray(full.ctc_logits(h)), rtol=1e-6)
