"""The README's main command (launch.demo --quick): every stage runs and leaves its artefacts."""

import json

import numpy as np
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
    timings = json.loads((workdir / "timings.json").read_text())
    assert list(timings["stages"]) == list(STAGES) and timings["quick"] is True
    assert timings["total_seconds"] == pytest.approx(sum(timings["stages"].values()), abs=0.5)
    codec_eval = json.loads((workdir / "codec" / "eval_test.json").read_text())
    judged = codec_eval["judge"]  # the neural judge on recordings and both resyntheses
    assert judged["name"].startswith("whisper") and judged["recordings"]["normalizer"]
    for variant in ("recordings", "full_rvq", "rvq1_only"):
        assert {"corpus_wer", "mean_utterance_wer", "per_group"} <= set(judged[variant])
    assert (workdir / "codec" / "eval_test_unseen_voice.json").is_file()
    curves = json.loads((workdir / "codec" / "curves.json").read_text())
    assert [p["step"] for p in curves["points"]] == [20, 40]  # every kept checkpoint
    assert {"full_rvq", "rvq1_only", "recordings", "probe_rvq1_cer"} <= set(curves["points"][0])
    assert (workdir / "codec" / "curves.png").stat().st_size > 0
    assert "| step |" in (workdir / "codec" / "curves.md").read_text()
    assert (workdir / "tokens" / "synthetic_speech" / "tiny" / "manifest.json").is_file()
    # The acoustic stages' evaluation where launch.eval_acoustic writes it too.
    assert (workdir / "eval" / "acoustic" / "test" / "results.json").is_file()


def test_quick_demo_evaluation_outputs(quick_demo):
    workdir, result = quick_demo
    assert result.returncode == 0
    results = json.loads((workdir / "eval" / "results.json").read_text())
    assert {"asr", "tts", "vc"} <= set(results)
    assert 0.0 <= results["asr"]["wer"] and results["asr"]["num_utterances"] > 0
    assert 0.0 <= results["asr"]["mean_utterance_wer"]  # both WER conventions
    for task in ("asr", "tts", "vc"):  # the conditioning gain of every task, in the table
        assert results["conditioning"][task]["rows"] > 0, results["conditioning"]
        assert np.isfinite(results["conditioning"][task]["gain"])
    for task in ("tts", "vc"):
        assert "judge_wer_truth" in results[task], results[task]
        assert results[task]["judge_wer_mean_utt"] >= 0.0
        assert results[task]["judge_wer_truth_tokens"] >= 0.0 and results[task]["judge_wer_codec"] >= 0.0
    # TTS of sentences outside the corpus grammar, beside the voice engine's rendering.
    open_tts = results["tts_open"]
    assert open_tts["examples"] == 4 and open_tts["unseen_word_rate"] > 0.0
    assert open_tts["judge_wer_truth"] >= 0.0
    assert len(list((workdir / "samples" / "tts_open").glob("open*.voice_engine.wav"))) == 4
    md = (workdir / "eval" / "results.md").read_text()
    assert "ASR" in md and "TTS / VC" in md and "judge WER, truth tokens" in md
    assert "tts, open text" in md and "unseen words" in md
    assert "mean utt WER" in md and "conditioning gain" in md
    curves = json.loads((workdir / "eval" / "curves.json").read_text())  # the LM's curves
    assert [p["step"] for p in curves["points"]] == [10, 20]  # every kept LM checkpoint
    for key in ("asr_loss", "tts_gain", "vc_gain", "asr_wer", "tts_judge_wer"):
        assert curves["points"][-1][key] is not None, key
    assert (workdir / "eval" / "curves.png").stat().st_size > 0
    assert "| step |" in (workdir / "eval" / "curves.md").read_text()
    from gpa_jax.training.metrics import read_scalars

    scalars = read_scalars(str(workdir / "eval" / "tensorboard"))
    assert scalars["eval/asr/wer"][0][1] == pytest.approx(results["asr"]["wer"], rel=1e-6)
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


def _sample(workdir, *flags):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "XLA_FLAGS": ""}
    return subprocess.run(
        [sys.executable, "-m", "launch.sample", f"--workdir={workdir}", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )


def test_sample_serves_wav_requests_and_names_bad_files(quick_demo, tmp_path):
    import soundfile as sf

    workdir, result = quick_demo
    assert result.returncode == 0
    rows = read_manifest(str(workdir / "samples" / "asr" / "manifest.jsonl"))
    wav = rows[0]["wav"]
    asr = _sample(workdir, "--task=asr", f"--audio={wav}")
    assert asr.returncode == 0, asr.stderr[-3000:]
    out = tmp_path / "tts.wav"
    tts = _sample(workdir, "--task=tts", "--text=the cat sat on the mat", f"--ref={wav}", f"--out={out}")
    assert tts.returncode == 0, tts.stderr[-3000:]
    audio, rate = sf.read(str(out))
    assert rate == 16000 and len(audio) > 0 and f"wrote {out}" in tts.stdout
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    bad = _sample(workdir, "--task=vc", f"--audio={broken}", f"--ref={wav}")
    assert bad.returncode != 0 and "broken.wav" in bad.stderr


def test_sample_streams_tts_in_chunks(quick_demo, tmp_path):
    import soundfile as sf

    workdir, result = quick_demo
    assert result.returncode == 0
    wav = read_manifest(str(workdir / "samples" / "asr" / "manifest.jsonl"))[0]["wav"]
    out = tmp_path / "stream.wav"
    text = "--text=the cat sat on the mat and looked at the dog"
    tts = _sample(workdir, "--task=tts", text, f"--ref={wav}", f"--out={out}", "--stream",
                  "--chunk_frames=10")  # fmt: skip
    assert tts.returncode == 0, tts.stderr[-3000:]
    chunks = [line for line in tts.stdout.splitlines() if line.startswith("chunk ")]
    audio, rate = sf.read(str(out))
    assert rate == 16000 and len(audio) > 0 and "(first chunk)" in chunks[0]
    assert f"in {len(chunks)} chunks" in tts.stdout


def test_bench_sample_reports_tts_rtf_and_ttfc(quick_demo):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    workdir, result = quick_demo
    assert result.returncode == 0
    bench = subprocess.run(
        [sys.executable, "-m", "launch.bench_sample", "--torch=false", "--batch_sizes=1",
         "--new_tokens=8", "--rounds=1", f"--workdir={workdir}", "--tts_concurrency=1,2",
         "--tts_split=train", "--chunk_frames=10"],
        cwd=REPO, env={**os.environ, "XLA_FLAGS": ""}, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-3000:]
    summary = json.loads(bench.stdout.strip().splitlines()[-1])
    assert [r["concurrency"] for r in summary["tts"]] == [1, 2]
    for row in summary["tts"]:
        assert row["ok"] == row["concurrency"]
        assert row["rtf"] > 0 and row["stream_rtf"] > 0 and 0 < row["ttfc_s"] <= row["ttfc_s_max"]
        assert row["stream_rtf_fixed_chunks"] > 0
    assert summary["tts_rtf"] == summary["tts"][0]["rtf"] and summary["tts_ttfc_s"] > 0


def test_asr_decoding_tabulates_settings_on_the_same_rows(quick_demo, tmp_path):
    """launch.asr_decoding on the quick LM: one row per ctc_weight:beam setting plus the
    CTC head's own, each naming its decoding; a malformed setting is one clear error."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    workdir, demo = quick_demo
    assert demo.returncode == 0
    out = tmp_path / "eval" / "table.json"  # a folder that does not exist yet is made
    env = {**os.environ, "XLA_FLAGS": ""}

    def run(*flags):
        return subprocess.run(
            [sys.executable, "-m", "launch.asr_decoding", f"--workdir={workdir}", *flags],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip

    result = run("--split=train", "--rows=2", "--settings=0:1,0.5:2", f"--json_out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads(out.read_text())["table"]
    assert [r["decoding"] for r in table] == [
        "greedy",
        "joint CTC/attention beam search (ctc_weight 0.5, beam 2)",
        "CTC head alone, greedy",
    ]
    assert all(r["rows"] == 2 and r["wer"] >= 0 and r["cer"] >= 0 for r in table)
    assert "| greedy |" in result.stdout
    bad = run("--settings=half")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert "--settings entry 'half': expected ctc_weight:beam" in bad.stderr
    folder = run(f"--json_out={tmp_path}")  # refused before any decoding
    assert folder.returncode == 2 and "is a directory; give a file name" in folder.stderr


def test_evaluate_reads_the_stages_of_another_workdir(quick_demo, tmp_path):
    """launch.evaluate --stages_workdir, as the audio_input sweep's judged step runs it: a
    run dir holding only an LM's checkpoints is evaluated with the codec, token shards and
    acoustic stage of the quick demo; the results and samples land in the run dir, and
    the demo's own results stay as they were. A missing stages dir is one clear error."""
    import os
    import shutil
    import subprocess
    import sys

    from launch.demo import QUICK
    from tests.conftest import REPO

    workdir, demo = quick_demo
    assert demo.returncode == 0
    run_dir = tmp_path / "run"
    shutil.copytree(workdir / "checkpoints", run_dir / "checkpoints")
    demo_results = (workdir / "eval" / "results.json").read_bytes()
    env = {**os.environ, "XLA_FLAGS": ""}

    def run(stages):
        return subprocess.run(
            [sys.executable, "-m", "launch.evaluate", f"--workdir={run_dir}", f"--stages_workdir={stages}",
             "--splits=train", "--max_per_task=2", *(f"--config.{o}" for o in QUICK["lm"])],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip

    result = run(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["asr"]["num_utterances"] > 0
    for task in ("tts", "vc"):
        assert results[task]["judge_wer"] >= 0.0 and results[task]["judge_wer_truth"] >= 0.0
    assert read_manifest(str(run_dir / "samples" / "tts" / "manifest.jsonl"))
    assert (workdir / "eval" / "results.json").read_bytes() == demo_results
    missing = run(tmp_path / "nowhere")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr[-3000:]
    assert "--stages_workdir=" in missing.stderr and "does not exist" in missing.stderr
