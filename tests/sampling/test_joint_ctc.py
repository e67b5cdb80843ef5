"""Joint CTC/attention ASR search: the prefix scores are CTC's sums over alignments, the
chosen hypothesis's score is (1 - w) log p_att + w log p_ctc of what it emits, beam 1
without the CTC term is greedy decoding, and the engine serves what the sampler does."""

import itertools
import logging

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio

from gpa_jax.models import LMConfig, lm_model_config, mesh_config
from gpa_jax.sampling import Request, Sampler, joint_ctc, sampling_config
from gpa_jax.sampling.engine import Engine
from gpa_jax.tasks.ids import EOS_ID
from gpa_jax.tasks.vocab import SpeechVocabulary
from gpa_jax.training.config import lm_config
from tests.models.helpers import numpy_model
from tests.sampling.helpers import full_logits
from tests.tasks.conftest import CODEBOOK, N_Q, SEQ_LEN

# --- the prefix scorer against brute force ------------------------------------------------


def _collapse(path):
    out, prev = [], None
    for p in path:
        if p != prev and p != 0:
            out.append(p)
        prev = p
    return out


def _brute_force(logp, prefix, exact):
    """log of the summed probability of every frame path whose collapsed labels equal
    (`exact`) or start with `prefix` (blank = 0)."""
    T, V = logp.shape
    total = -np.inf
    for path in itertools.product(range(V), repeat=T):
        labels = _collapse(path)
        if (labels == prefix) if exact else (labels[: len(prefix)] == prefix):
            total = np.logaddexp(total, sum(logp[t, p] for t, p in enumerate(path)))
    return total


@pytest.mark.parametrize("padded", [False, True])
def test_prefix_scores_are_sums_over_alignments(padded):
    rng = np.random.default_rng(0)
    T, V = 5, 4
    logp = np.log(rng.dirichlet(np.ones(V), size=T))
    frames = logp
    if padded:  # padding frames: blank with probability 1 changes no score
        pad = np.full((3, V), joint_ctc.NEG_INF)
        pad[:, 0] = 0.0
        frames = np.concatenate([logp, pad])
    ctc = jnp.asarray(frames, jnp.float32)
    r_n = jnp.full((1, len(frames)), joint_ctc.NEG_INF)
    r_b = jnp.cumsum(ctc[:, 0])[None]
    last, prefix = jnp.asarray([-1]), []
    cands = jnp.asarray([[1, 2, 3]])
    for chosen in (2, 2, 1):  # a repeated label, then another
        psi, new_n, new_b = joint_ctc.extend_prefixes(ctc, r_n, r_b, last, cands, not prefix)
        for k, c in enumerate((1, 2, 3)):
            want = _brute_force(logp, [*prefix, c], exact=False)
            np.testing.assert_allclose(float(psi[0, k]), want, rtol=1e-4, atol=1e-4)
        k = chosen - 1
        r_n, r_b, last = new_n[:, k], new_b[:, k], jnp.asarray([chosen])
        prefix = [*prefix, chosen]
        full = float(jnp.logaddexp(r_n[0, -1], r_b[0, -1]))  # what <eos> is scored with
        np.testing.assert_allclose(
            full, _brute_force(logp, prefix, exact=True), rtol=1e-4, atol=1e-4
        )


# --- the search on a small random LM with a CTC head ---------------------------------------


@pytest.fixture(scope="module")
def vocab():
    return SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=N_Q, codebook_size=CODEBOOK)


def _lm(vocab, ctc_weight, ctc_classes=0):
    model = lm_model_config(
        vocab_size=vocab.vocab_size, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
        head_dim=8, mlp_dim=64, rope_theta=10_000.0, max_len=SEQ_LEN, dtype="float32",
        scan_layers=False, prefix_bidirectional=True, init_std=1.0, ctc_weight=ctc_weight,
        ctc_classes=ctc_classes,
    )  # fmt: skip
    config = lm_config(model=model, mesh=mesh_config(shape=(-1, 1, 1)))
    return config, numpy_model(LMConfig.from_config(config.model))


@pytest.fixture(scope="module")
def ctc_lm(vocab):
    return _lm(vocab, 0.5)


def _sampler(lm, vocab, **asr):
    config, model = lm
    return Sampler(config, model, vocab, sampling=sampling_config(asr=asr))


def _source(frames, seed):
    return np.random.default_rng(seed).integers(0, CODEBOOK, (N_Q, frames))


@pytest.mark.parametrize("text_only", [False, True], ids=["ctc_all_ids", "ctc_text_ids"])
def test_chosen_hypothesis_scores_its_joint_log_probability(ctc_lm, vocab, text_only):
    """With every allowed token a candidate, a 6-frame source (so no hypothesis outgrows
    CTC and every search ends in <eos>): score = (1 - w) log p_att(h <eos>) + w log p_ctc(h),
    recomputed without cache (attention) and by optax's CTC loss on the head's logits;
    also with the CTC softmax over the control and text ids only (model.ctc_classes)."""
    lm = _lm(vocab, 0.5, ctc_classes=vocab.audio_offset) if text_only else ctc_lm
    _, model = lm
    weight = 0.3
    sampler = _sampler(lm, vocab, beam=3, ctc_weight=weight, candidates=vocab.vocab_size)
    audio_lo, audio_hi = vocab.audio_range(0)
    for seed in range(3):
        prepared = sampler.prepare(Request.asr(_source(6, seed)))
        lo, hi = prepared.id_range
        result = sampler.search(prepared)
        assert result.stop == "eos"
        tokens = [int(t) for t in result.tokens]
        assert all(lo <= t < hi for t in tokens)
        logits = full_logits(model, prepared.prompt, tokens)
        logp = np.asarray(jax_log_softmax(logits))
        n = len(prepared.prompt)
        att = sum(logp[n - 1 + i, t] for i, t in enumerate([*tokens, EOS_ID]))
        frames = np.flatnonzero((prepared.prompt >= audio_lo) & (prepared.prompt < audio_hi))
        assert len(frames) == 6
        hidden = hidden_states(model, prepared.prompt)
        ctc_logits = np.asarray(model.ctc_logits(jnp.asarray(hidden[frames])[None]))
        assert ctc_logits.shape[-1] == (vocab.audio_offset if text_only else vocab.vocab_size)
        labels = np.zeros((1, len(frames)), np.int32)
        labels[0, : len(tokens)] = tokens
        label_pad = (np.arange(len(frames)) >= len(tokens)).astype(np.float32)[None]
        loss = optax.ctc_loss(ctc_logits, np.zeros((1, len(frames)), np.float32), labels,
                              label_pad, blank_id=0)  # fmt: skip
        want = (1 - weight) * att + weight * -float(loss[0])
        np.testing.assert_allclose(result.score, want, rtol=1e-4, atol=1e-3)


def jax_log_softmax(x):
    import jax

    return jax.nn.log_softmax(jnp.asarray(x, jnp.float32), axis=-1)


def hidden_states(model, prompt):
    """Final hidden states [len(prompt), D] of the prompt read as one bidirectional prefix."""
    from flax import nnx

    @nnx.jit
    def run(m, tokens):
        seg = jnp.ones_like(tokens)
        pos = jnp.arange(tokens.shape[1])[None]
        h, _ = m.prefill(tokens, seg, pos, seg, tokens.shape[1])
        return h

    return np.asarray(run(model, jnp.asarray(np.asarray(prompt, np.int32)[None])))[0]


@pytest.mark.parametrize("use_ctc", [False, True])
def test_beam_one_without_the_ctc_term_is_greedy(ctc_lm, vocab, use_ctc):
    greedy = _sampler(ctc_lm, vocab)
    assert greedy.asr_search is None and greedy.asr_decoding == "greedy"
    searching = _sampler(ctc_lm, vocab)
    searching.asr_search = joint_ctc.JointSearch(searching.decoder, use_ctc=use_ctc)
    requests = [Request.asr(_source(n, seed)) for seed, n in enumerate((5, 12, 30))]
    for want, got in zip(greedy.generate(requests), searching.generate(requests), strict=True):
        np.testing.assert_array_equal(got.tokens, want.tokens)
        assert (got.stop, got.text) == (want.stop, want.text)


def test_lm_without_a_ctc_head_searches_on_attention_and_says_so(vocab, caplog):
    with caplog.at_level(logging.WARNING):
        sampler = _sampler(_lm(vocab, 0.0), vocab, beam=2, ctc_weight=0.5)
    assert "has no CTC head" in caplog.text
    assert sampler.asr_decoding == "attention beam search (beam 2)"
    (result,) = sampler.generate([Request.asr(_source(8, 0))])
    assert result.ok and result.stop in ("eos", "max_length")


def test_lm_config_sampling_section_is_the_default(ctc_lm, vocab):
    from gpa_jax import config_utils
    from gpa_jax.sampling.config import lm_sampling
    from tests.conftest import REPO

    config, model = ctc_lm
    assert "sampling" not in config  # an LM config without the section: plain greedy
    assert Sampler(config, model, vocab).asr_decoding == "greedy"
    config = config.copy_and_resolve_references()
    config.sampling = sampling_config(asr=dict(beam=2, ctc_weight=0.4))
    sampler = Sampler(config, model, vocab)
    assert sampler.asr_decoding == "joint CTC/attention beam search (ctc_weight 0.4, beam 2)"
    tiny = config_utils.load_config(f"{REPO}/configs/gpa_tiny.py")
    assert (lm_sampling(tiny).asr.beam, lm_sampling(tiny).asr.ctc_weight) == (8, 0.5)
    with pytest.raises(ValueError, match="candidates >= beam"):
        sampling_config(asr=dict(beam=9, candidates=8))


def test_engine_serves_searched_asr_beside_slot_requests(ctc_lm, vocab):
    sampler = _sampler(ctc_lm, vocab, beam=2, ctc_weight=0.5)
    ref = _source(20, 9)
    requests = [Request.asr(_source(10, 1)), Request.tts("hello", ref, seed=1),
                Request.asr(_source(16, 2)), Request.vc(_source(8, 3), ref, seed=2)]  # fmt: skip
    want = sampler.generate(requests)
    engine = Engine(sampler, slots=2)
    got = engine.generate(requests)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g.tokens, w.tokens)
        assert g.stop == w.stop
    assert engine.stats["searched"] == 2
