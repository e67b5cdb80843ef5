"""The conditioning report: NLL of outputs given their own vs another row's input."""

import numpy as np
import pytest

from gpa_jax.evaluation import conditioning
from gpa_jax.tasks import planning
from tests.sampling import helpers as h
from tests.sampling.test_sampler import _sampler, lm, vocab  # noqa: F401 (fixtures)
from tests.tasks.conftest import SEQ_LEN, small_config, write_corpus


def test_sequence_nll_scores_the_output_tokens_after_the_prefix():
    m = h.model()
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(2, 128, n).astype(np.int32), rng.integers(2, 128, k).astype(np.int32))
             for n, k in ((7, 5), (12, 3), (4, 9))]  # fmt: skip
    got = conditioning.sequence_nll(m, pairs, max_len=h.FULL_LEN)
    for (prompt, output), nll in zip(pairs, got, strict=True):
        logits = h.full_logits(m, prompt, output)  # no padding, prompt as the prefix
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)  # fmt: skip
        want = -np.mean([logp[len(prompt) - 1 + i, t] for i, t in enumerate(output)])
        assert nll == pytest.approx(want, abs=1e-4)


@pytest.fixture(scope="module")
def bank(tmp_path_factory, vocab):  # noqa: F811
    directory = str(tmp_path_factory.mktemp("tokens"))
    write_corpus(directory)
    return planning.load_bank(directory, "train", vocab, layers=1)


def test_mismatched_rows_keep_the_output_and_swap_the_input(lm, vocab, bank):  # noqa: F811
    sampler = _sampler(lm, vocab)
    settings = planning.PlanSettings.from_config(small_config(), SEQ_LEN)
    report = conditioning.conditioning_report(sampler, bank, settings, split="train", num=6)
    assert "se" not in report  # the LM was not trained for it
    for task in ("asr", "tts", "vc"):
        r = report[task]
        assert r["rows"] > 0 and r["rows"] + r["skipped"] <= 6, (task, r)
        assert r["gain"] == pytest.approx(r["nll_mismatched"] - r["nll_matched"])
        assert np.isfinite([r["nll_matched"], r["nll_mismatched"]]).all()
    plan, _ = planning.plan_task("tts", bank, settings, 0, "train")
    rows = plan[:2]
    own = conditioning._pairs(sampler, bank, "tts", rows, rows)
    other = conditioning._pairs(sampler, bank, "tts", rows, rows[::-1])
    for (p1, o1, _), (p2, o2, _), r, c in zip(own, other, rows, rows[::-1], strict=True):
        np.testing.assert_array_equal(o1, o2)  # the same target
        if bank.texts[r[0]] != bank.texts[c[0]]:
            assert not np.array_equal(p1, p2)  # another text in the prompt
    assert "gain" in conditioning.format_report(report)


def test_asr_transcripts_score_the_planned_rows_greedy_transcripts(lm, vocab, bank):  # noqa: F811
    sampler = _sampler(lm, vocab)
    settings = planning.PlanSettings.from_config(small_config(), SEQ_LEN)
    got = conditioning.asr_transcripts(sampler, bank, settings, split="train", num=3)
    plan, _ = planning.plan_task("asr", bank, settings, 0, "train")
    assert got["rows"] == min(3, len(plan))
    assert got["wer"] >= 0 and got["cer"] >= 0
    # The same rows scored by hand: the greedy transcripts against their own texts.
    from gpa_jax.evaluation import asr_metrics
    from gpa_jax.sampling import Request

    rows = plan[:3]
    hyps = [r.text or "" for r in sampler.generate([Request.asr(bank.utterance_codes(int(r[0]))[:1]) for r in rows])]
    want = asr_metrics.error_rates([bank.texts[r[0]] for r in rows], hyps)
    assert got["wer"] == pytest.approx(want.wer) and got["cer"] == pytest.approx(want.cer)
    text = conditioning.format_report({"split": "train", "asr_transcripts": got})
    assert got["decoding"] == "greedy"
    assert f"ASR of {got['rows']} rows, greedy: WER {got['wer']:.3f}" in text


def test_ctc_transcripts_read_the_ctc_head_over_the_source_positions(vocab, bank):  # noqa: F811
    import jax.numpy as jnp

    from gpa_jax.models import LMConfig
    from tests.models.helpers import numpy_model
    from tests.sampling.test_sampler import _config

    config = _config(vocab.vocab_size)
    config.model.ctc_weight = 0.5
    sampler = _sampler((config, numpy_model(LMConfig.from_config(config.model))), vocab)
    settings = planning.PlanSettings.from_config(small_config(), SEQ_LEN)
    rows = planning.plan_task("asr", bank, settings, 0, "train")[0][:2]
    h_id, i_id = vocab.encode("hi")
    seen = []

    def spelled(hidden):  # argmax h h <blank> i <blank>...: "hi" once merged
        seen.append(hidden.shape[1])
        best = jnp.zeros(hidden.shape[1], jnp.int32).at[:3].set(jnp.asarray([h_id, h_id, 0])).at[3].set(i_id)
        return jnp.eye(vocab.vocab_size)[best][None]

    sampler.model.ctc_logits = spelled
    assert conditioning.ctc_transcripts(sampler, bank, rows) == ["hi", "hi"]
    # The head read exactly each row's source frames.
    assert seen == [bank.utterance_codes(int(r[0])).shape[1] for r in rows]
    got = conditioning.ctc_error_rates(sampler, bank, rows)
    from gpa_jax.evaluation import asr_metrics

    want = asr_metrics.error_rates([bank.texts[r[0]] for r in rows], ["hi", "hi"])
    assert got == {"rows": 2, "wer": pytest.approx(want.wer), "cer": pytest.approx(want.cer)}
    text = conditioning.format_report({"split": "train", "asr_ctc": got})
    assert "CTC head, greedy, same rows: WER" in text


def test_se_rows_swap_the_noisy_input_for_an_lm_trained_with_it(tmp_path, vocab):  # noqa: F811
    """SE joins the report for an LM trained with it, on a bank with noisy inputs: the
    output is the row's clean RVQ-1, the input its own vs another row's noisy RVQ-1."""
    from gpa_jax.models.config import LMConfig
    from gpa_jax.sampling import Sampler
    from tests.models.helpers import numpy_model
    from tests.sampling.test_sampler import SE_RATES, _config

    write_corpus(str(tmp_path), noisy=True)
    bank = planning.load_bank(str(tmp_path), "train", vocab, layers=1, noisy=True)
    config = _config(vocab.vocab_size)
    config.tasks.rates = SE_RATES
    sampler = Sampler(config, numpy_model(LMConfig.from_config(config.model)), vocab)
    settings = planning.PlanSettings.from_config(small_config(), SEQ_LEN)
    assert conditioning.readable_tasks(sampler, bank) == conditioning.TASKS
    report = conditioning.conditioning_report(sampler, bank, settings, split="train", num=6,
                                              tasks=["se"])  # fmt: skip
    r = report["se"]
    assert r["rows"] > 0 and r["gain"] == pytest.approx(r["nll_mismatched"] - r["nll_matched"])
    assert "se " in conditioning.format_report(report)
    plan, _ = planning.plan_task("se", bank, settings, 0, "train")
    rows = plan[:2]
    (p1, o1, _), (p2, o2, _) = conditioning._pairs(sampler, bank, "se", rows, rows)
    (q1, m1, _), _ = conditioning._pairs(sampler, bank, "se", rows, rows[::-1])
    u = int(rows[0][planning.TGT])
    np.testing.assert_array_equal(o1[:-1], vocab.audio_to_ids(bank.utterance_codes(u)[0], 0))
    np.testing.assert_array_equal(m1, o1)  # the same clean target
    assert not np.array_equal(q1, p1) and np.array_equal(q1, p2)  # the other row's noisy input
    noisy_ids = vocab.audio_to_ids(bank.utterance_noisy_codes(u)[0], 0)
    assert set(np.asarray(noisy_ids).tolist()) <= set(p1.tolist())
    # Without noisy inputs in the bank SE is not readable.
    clean = planning.load_bank(str(tmp_path), "train", vocab, layers=1)
    assert conditioning.readable_tasks(sampler, clean) == ("asr", "tts", "vc")


def test_attention_on_input_is_each_heads_share_of_the_input(lm, vocab, bank):  # noqa: F811
    """Per task, layer and head: the attention mass the output positions put on the
    conditioning input, as the maps give it for the same row."""
    from gpa_jax.evaluation.inspect import attention_maps
    from gpa_jax.training.attention_guide import conditioning_keys

    sampler = _sampler(lm, vocab)
    settings = planning.PlanSettings.from_config(small_config(), SEQ_LEN)
    report = conditioning.attention_on_input(sampler, bank, settings, split="train", num=1)
    layers, heads = sampler.cfg.num_layers, sampler.cfg.num_heads
    for task in ("asr", "tts", "vc"):
        r = report[task]
        assert r["rows"] == 1 and np.shape(r["mass"]) == np.shape(r["correlation"]) == (layers, heads)
        assert np.all((np.asarray(r["mass"]) >= 0) & (np.asarray(r["mass"]) <= 1 + 1e-6))
        assert np.all(np.abs(r["correlation"]) <= 1 + 1e-6)
    row = planning.plan_task("tts", bank, settings, 0, "train")[0][:1]
    ((prompt, output, _),) = conditioning._pairs(sampler, bank, "tts", row, row)
    tokens = np.concatenate([prompt, output[:-1]])
    text = np.asarray(conditioning_keys(tokens[None], np.ones((1, len(tokens)), np.int32),
                                        (np.arange(len(tokens)) >= len(prompt))[None]))[0]  # fmt: skip
    assert text.sum() == len(bank.texts[row[0][planning.TGT]])  # the text's characters
    maps = attention_maps(sampler.model, tokens, prefix_length=len(prompt))
    want = maps[:, :, len(prompt) - 1 :][..., text].sum(-1).mean(-1)
    np.testing.assert_allclose(report["tts"]["mass"], want, atol=1e-4)
    assert "layer 0:" in conditioning.format_attention(report)
