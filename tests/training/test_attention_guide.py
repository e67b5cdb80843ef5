"""Guided attention: the band read off the token layout, the penalty, the loss term."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpa_jax.models import LMConfig
from gpa_jax.models.layers import guided_attention_penalty, make_attention_mask
from gpa_jax.tasks import layout
from gpa_jax.tasks.vocab import SpeechVocabulary
from gpa_jax.training import attention_guide
from gpa_jax.training.train_step import token_sums
from tests.models.helpers import numpy_model

D = SpeechVocabulary.delimiter_id
TAG = SpeechVocabulary.task_tag_id
TEXT, AUDIO = 100, 1500  # a text id and an audio id (both >= TEXT_OFFSET)


def _example(task: str, ref: int, cond: int, out: int):
    """(inputs, targets) ids of one example, with `ref` reference frames, `cond`
    conditioning tokens (text for TTS, source frames otherwise) and `out` output tokens."""
    ref_ids, text, src = [AUDIO] * ref, [TEXT] * cond, [AUDIO] * cond
    if task == "tts":
        inputs = [[TAG("tts"), D("ref_audio")], ref_ids, [D("text")], text, [D("tgt_audio")]]
    elif task == "asr":
        inputs = [[TAG("asr"), D("src_audio")], src, [D("text")]]
    else:
        inputs = [[TAG("vc"), D("ref_audio")], ref_ids, [D("src_audio")], src, [D("tgt_audio")]]
    out_ids = [TEXT if task == "asr" else AUDIO] * out
    return layout.join(inputs), layout.join(layout.target_segments(out_ids))


def _packed(examples, length: int):
    """One packed row in the trainer layout, plus each example's (start, n_inputs, n_all)."""
    batch = {k: np.zeros((1, length), np.int32) for k in (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
        "decoder_positions", "decoder_loss_weights")}  # fmt: skip
    spans, start = [], 0
    for s, (inputs, targets) in enumerate(examples, 1):
        seq = np.concatenate([inputs, targets])
        n = len(seq)
        sl = slice(start, start + n)
        batch["decoder_target_tokens"][0, sl] = seq
        batch["decoder_input_tokens"][0, sl] = np.concatenate([[0], seq[:-1]])
        batch["decoder_segment_ids"][0, sl] = s
        batch["decoder_positions"][0, sl] = np.arange(n)
        batch["decoder_loss_weights"][0, start + len(inputs) : start + n] = 1
        spans.append((start, len(inputs), n))
        start += n
    return batch, spans


def test_band_pairs_each_output_with_its_conditioning_input_only():
    examples = [_example("tts", ref=6, cond=5, out=10), _example("asr", ref=0, cond=12, out=4),
                _example("vc", ref=5, cond=8, out=8)]  # fmt: skip
    batch, spans = _packed(examples, 96)
    band, queries = jax.tree.map(np.asarray, attention_guide.attention_guide(batch, sigma=0.2))
    tokens = batch["decoder_input_tokens"][0]
    for task, (start, n_in, n) in zip(("tts", "asr", "vc"), spans, strict=True):
        out_rows = np.arange(start + n_in, start + n)  # the loss positions
        np.testing.assert_array_equal(np.flatnonzero(queries[0, start : start + n]) + start, out_rows)
        # The conditioning keys: the text (TTS) or the source frames, never the reference.
        opener = {"tts": D("text"), "asr": D("src_audio"), "vc": D("src_audio")}[task]
        first = start + int(np.flatnonzero(tokens[start : start + n] == opener)[0]) + 1
        n_cond = {"tts": 5, "asr": 12, "vc": 8}[task]
        keys = np.arange(first, first + n_cond)
        rows = band[0, out_rows]
        assert set(np.flatnonzero(rows.any(0))) == set(keys), task
        # Monotonic and proportional: output t of T peaks at input ~ t/T of N.
        peaks = rows[:, keys].argmax(1)
        t = (np.arange(len(out_rows)) + 0.5) / len(out_rows)
        assert np.all(np.abs((peaks + 0.5) / n_cond - t) <= 0.5 / n_cond + 1e-6), task
    # Nothing links two packed examples, and non-output rows are empty.
    seg = batch["decoder_segment_ids"][0]
    assert not band[0][seg[:, None] != seg[None, :]].any()
    assert not band[0][queries[0] == 0].any()


def test_penalty_is_one_minus_the_attention_mass_in_the_band():
    rng = np.random.default_rng(0)
    b, n, h, kv, d = 2, 7, 4, 2, 8
    q = rng.standard_normal((b, n, h, d)).astype(np.float32)
    k = rng.standard_normal((b, n, kv, d)).astype(np.float32)
    seg = np.array([[1, 1, 1, 1, 2, 2, 0], [1] * 7])
    mask = np.asarray(make_attention_mask(jnp.asarray(seg)))
    band = rng.uniform(size=(b, n, n)).astype(np.float32)
    queries = (rng.uniform(size=(b, n)) > 0.3).astype(np.float32)
    got = float(guided_attention_penalty(q, k, mask, band, queries, heads=3))
    want = 0.0
    for head in range(3):
        logits = np.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, head // 2]) / np.sqrt(d)
        logits = np.where(mask[:, 0], logits, -1e30)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        want += np.sum(queries * (1 - (p * band).sum(-1))) / 3
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_guide_weight_adds_the_penalty_to_the_loss_and_its_gradient():
    examples = [_example("tts", ref=4, cond=5, out=9), _example("asr", ref=0, cond=10, out=4)]
    batch, _ = _packed(examples, 48)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    shape = dict(vocab_size=2048, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                 head_dim=8, mlp_dim=64, max_len=64, dtype="float32", scan_layers=False)  # fmt: skip
    plain = numpy_model(LMConfig(**shape))
    guided = numpy_model(LMConfig(**shape, guide_weight=0.5, guide_heads=2))
    a, b = token_sums(plain, batch, None, 0.0, 3), token_sums(guided, batch, None, 0.0, 3)
    assert "guide_sum" not in a
    n_out = float(b["weight_sum"])
    assert 0 < float(b["guide_sum"]) <= n_out
    np.testing.assert_allclose(float(b["loss_sum"]), float(a["loss_sum"]) + 0.5 * float(b["guide_sum"]), rtol=1e-5)

    def penalty(model):
        return token_sums(model, batch, None, 0.0, 3)["guide_sum"]

    grads = nnx.grad(penalty)(guided)
    # In the last layer only the guided heads' queries reach the penalty.
    q_grad = np.abs(np.asarray(grads.decoder.layers[1].attn.q_proj.kernel[...]))
    assert q_grad[:, :2].sum() > 0 and q_grad[:, 2:].sum() == 0
    # The scanned stack sums the same penalty.
    scanned = numpy_model(LMConfig(**{**shape, "scan_layers": True}, guide_weight=0.5, guide_heads=2))
    assert 0 < float(token_sums(scanned, batch, None, 0.0, 3)["guide_sum"]) <= n_out
