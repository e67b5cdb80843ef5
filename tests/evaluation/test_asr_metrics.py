import json

import pytest

from gpa_jax.evaluation.asr_metrics import (
    error_rates,
    judge_wer_report,
    utterance_wer,
    wer_report_table,
)


def test_normalisation_before_scoring():
    rates = error_rates(["Hello, World!"], ["hello world"])
    assert rates.wer == 0.0 and rates.cer == 0.0


def test_corpus_level_rates():
    # 1 substitution in 4 words + 1 deletion in 2 words -> 2 / 6, not the mean of 1/4 and 1/2.
    rates = error_rates(["a b c d", "e f"], ["a x c d", "e"])
    assert rates.wer == pytest.approx(2 / 6)
    assert rates.num_words == 6 and rates.num_utterances == 2
    assert utterance_wer("e f", "e") == pytest.approx(0.5)


def test_cer_counts_characters():
    # "cat" -> "cut": one substitution over 3 characters.
    assert error_rates(["cat"], ["cut"]).cer == pytest.approx(1 / 3)


def test_empty_hypothesis_is_all_deletions():
    assert error_rates(["one two three"], [""]).wer == pytest.approx(1.0)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="utt7"):
        error_rates(["ok", "!!!"], ["ok", "x"], ids=["utt6", "utt7"])
    with pytest.raises(ValueError, match="2 references but 1"):
        error_rates(["a", "b"], ["a"])


def test_judge_wer_report_both_conventions_overall_and_per_group():
    # 1 substitution in 4 words, 2 deletions in 2 words, 2 words right: corpus 3/8, mean of
    # (1/4, 1, 0); per voice v1: 1/6 and mean of (1/4, 0).
    refs, hyps = ["a b c d", "e f", "g h"], ["a b x d", "", "g h"]
    report = judge_wer_report(refs, hyps, groups=["v1", "v2", "v1"])
    assert report["corpus_wer"] == pytest.approx(3 / 8)
    assert report["mean_utterance_wer"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert report["utterance_wer"] == pytest.approx([0.25, 1.0, 0.0])
    assert report["num_utterances"] == 3 and report["num_words"] == 8
    assert report["normalizer"] == "whisper_english"
    assert report["per_group"]["v1"] == pytest.approx(
        {"corpus_wer": 1 / 6, "mean_utterance_wer": 0.125, "num_utterances": 2, "num_words": 6})
    assert report["per_group"]["v2"]["corpus_wer"] == pytest.approx(1.0)
    two = judge_wer_report(["a b c d", "e f"], ["a b x d", ""])
    assert (two["corpus_wer"], two["mean_utterance_wer"]) == pytest.approx((0.5, 0.625))
    assert two["per_group"] == {}
    json.dumps(report)  # JSON-able as it is
    table = wer_report_table(report)
    assert "| v1 | 2 | 6 | 0.167 | 0.125 |" in table and "| all | 3 | 8 | 0.375 |" in table


def test_judge_wer_uses_whisper_english_normaliser():
    # Casing, punctuation, number words vs digits, British vs American spelling,
    # contractions: none is an error under Whisper's normaliser.
    refs = ["There are two horses.", "The colour of it's coat", "twenty one cats"]
    hyps = ["there are 2 horses", "the color of it is coat!", "21 Cats."]
    assert judge_wer_report(refs, hyps)["corpus_wer"] == 0.0
    # ... but the LM-ASR normaliser counts "two" vs "2" as a substitution.
    lm_asr = judge_wer_report(refs[:1], hyps[:1], normalizer="normalize_transcript")
    assert lm_asr["corpus_wer"] == pytest.approx(1 / 4)


def test_judge_wer_report_errors():
    with pytest.raises(ValueError, match="empty after normalisation"):
        judge_wer_report(["ok", "!!!"], ["ok", "x"])
    with pytest.raises(ValueError, match="2 references, 2 hypotheses, 1 groups"):
        judge_wer_report(["a", "b"], ["a", "b"], groups=["v"])
    with pytest.raises(ValueError, match="unknown normalizer"):
        judge_wer_report(["a"], ["a"], normalizer="nope")
