import pytest

from gpa_jax.evaluation.asr_metrics import error_rates, utterance_wer


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
