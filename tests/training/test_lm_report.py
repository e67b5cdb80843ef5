"""The LM report's table: per task eval loss, teacher-forced perplexity, unigram baseline."""

import math

import pytest

from gpa_jax.training import lm_report

METRICS = {
    "eval/loss": 2.0,
    "eval/tts/loss": 2.5,
    "eval/tts/unigram_loss": 5.0,
    "eval/tts/accuracy": 0.25,
    "eval/tts/loss_tokens": 120.0,
    "eval/asr/loss": 0.5,
    "eval/asr/unigram_loss": 3.0,
    "eval/vc/loss": 1.0,  # no baseline: no row
}


def test_rows_carry_the_perplexity_of_the_eval_loss():
    rows = {r["task"]: r for r in lm_report.table_rows(METRICS)}
    assert set(rows) == {"tts", "asr"}
    assert rows["tts"]["ppl"] == pytest.approx(math.exp(2.5))
    assert rows["asr"]["ppl"] == pytest.approx(math.exp(0.5))
    assert rows["tts"]["ratio"] == pytest.approx(0.5)
    # A diverged run prints inf rather than failing.
    (row,) = lm_report.table_rows({"eval/tts/loss": 1e4, "eval/tts/unigram_loss": 5.0})
    assert row["ppl"] == math.inf


def test_table_prints_a_ppl_column():
    lines = lm_report.loss_table(METRICS, ("tts", "asr", "vc")).splitlines()
    header = lines[0].split()
    assert header[:3] == ["task", "eval", "loss"] and header[3] == "ppl"
    cells = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(cells) == {"tts", "asr"}
    assert cells["tts"][1:3] == ["2.5000", f"{math.exp(2.5):.3f}"]
    assert cells["asr"][1:3] == ["0.5000", f"{math.exp(0.5):.3f}"]
    assert cells["tts"][-2:] == ["0.250", "120"]
