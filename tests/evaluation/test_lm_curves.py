"""The LM curves' table and plot: one loss / gain column per task the points carry."""

from gpa_jax.evaluation import lm_curves

HEADER = dict(split="test", asr_examples=2, asr_decoding="greedy", judge="j", normalizer="n",
              tts_examples=2, tts_judge_wer_recordings=0.3)  # fmt: skip


def _point(step, **extra):
    figures = dict(asr_loss=1.0, tts_loss=2.0, vc_loss=3.0, asr_gain=0.1, tts_gain=0.2,
                   vc_gain=0.3, asr_wer=0.5, tts_judge_wer=0.9, se_loss=None, se_gain=None)  # fmt: skip
    return {"step": step, **figures, **extra}


def test_se_columns_appear_only_for_an_lm_trained_with_se(tmp_path):
    table = lm_curves.format_markdown([_point(300), _point(600)], HEADER)
    assert "| step | ASR loss | TTS loss | VC loss | ASR gain | TTS gain | VC gain | ASR WER |" in table
    assert "SE" not in table and "| 600 | 1.000 | 2.000 | 3.000 | 0.100 |" in table
    points = [_point(300, se_loss=1.5, se_gain=0.7), _point(600, se_loss=1.25, se_gain=0.8)]
    table = lm_curves.format_markdown(points, HEADER)
    assert "| VC loss | SE loss | ASR gain |" in table and "| VC gain | SE gain | ASR WER |" in table
    assert "| 600 | 1.000 | 2.000 | 3.000 | 1.250 | 0.100 | 0.200 | 0.300 | 0.800 | 0.500 | 0.900 |" in table
    png = tmp_path / "curves.png"
    lm_curves._plot(points, HEADER, str(png))
    assert png.stat().st_size > 0
