"""The README's main command (launch.demo --quick): every stage runs and leaves its artefacts."""

import json

import pytest

from gpa_jax.evaluation.results import read_manifest
from launch.demo import STAGES

pytestmark = pytest.mark.slow


def test_quick_demo_runs_every_stage(quick_demo):
    workdir, result = quick_demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for index, name in enumerate(STAGES, start=1):
        assert f"== [{index}/{len(STAGES)}] {name} done" in result.stdout
    for split in ("train", "validation", "test", "test_unseen_voice"):
        assert f"\n{split} " in result.stdout  # the corpus summary
    assert "demo finished" in result.stdout
    assert (workdir / "codec" / "eval_test.json").is_file()
    assert (workdir / "tokens" / "synthetic_speech" / "tiny" / "manifest.json").is_file()


def test_quick_demo_evaluation_outputs(quick_demo):
    workdir, result = quick_demo
    assert result.returncode == 0
    results = json.loads((workdir / "eval" / "results.json").read_text())
    assert {"asr", "tts", "vc"} <= set(results)
    assert 0.0 <= results["asr"]["wer"] and results["asr"]["num_utterances"] > 0
    for task in ("tts", "vc"):
        assert "judge_wer_truth" in results[task], results[task]
    md = (workdir / "eval" / "results.md").read_text()
    assert "ASR" in md and "TTS / VC" in md
    for task in ("asr", "tts", "vc"):
        rows = read_manifest(str(workdir / "samples" / task / "manifest.jsonl"))
        assert rows, task
        for row in rows:
            assert row["wav"].endswith(".wav")
            assert (workdir / "samples" / task / row["wav"].split("/")[-1]).is_file()
    generated = [r for r in read_manifest(str(workdir / "samples" / "tts" / "manifest.jsonl"))
                 if r.get("role") == "generated"]
    for row in generated:
        assert row["text"] and row["reference_wav"].endswith(".wav") and row["speaker"]
