"""Codec metrics: the measures themselves, the evaluation job, and the bench launcher."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpa_jax.codec import evaluate
from gpa_jax.codec.model import Codec
from gpa_jax.config_utils import load_config


def _speech(n=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    return (
        0.3 * env * np.sin(2 * np.pi * 200 * t * (1 + 0.3 * t)) + 0.01 * rng.normal(size=n)
    ).astype(np.float32)


def test_mel_distance_and_stoi_order_degradations():
    x = _speech()
    rng = np.random.default_rng(1)
    slight = x + 0.01 * rng.normal(size=x.size).astype(np.float32)
    heavy = x + 0.3 * rng.normal(size=x.size).astype(np.float32)
    assert evaluate.mel_distance(x, x) == 0.0
    assert 0 < evaluate.mel_distance(x, slight) < evaluate.mel_distance(x, heavy)
    assert evaluate.stoi(x, x) == pytest.approx(1.0, abs=1e-6)
    assert evaluate.stoi(x, heavy) < evaluate.stoi(x, slight) <= 1.0
    # Longer estimates (decoders emit whole frames) are cut to the reference.
    assert evaluate.mel_distance(x, np.concatenate([x, np.ones(320, np.float32)])) == 0.0


def test_bitrate_and_evaluate_codec_on_an_untrained_codec():
    config = load_config("configs/codec_tiny.py")
    codec = Codec.from_config(config)
    assert evaluate.bitrate(codec, 8) == 8 * 8 * 50 == 3200
    result = evaluate.evaluate_codec(codec, [_speech(9000), _speech(5000, 2)], progress=False)
    assert result["num_utterances"] == 2
    full, coarse = result["variants"]["full_rvq"], result["variants"]["rvq1_only"]
    assert (full["n_q"], coarse["n_q"]) == (8, 1) and coarse["bitrate_bps"] == 400
    for v in (full, coarse):
        assert np.isfinite(v["mel_distance"]) and v["mel_distance"] > 0
        assert -1 <= v["stoi"] < 0.9  # an untrained codec is not intelligible
    table = evaluate.format_table(result)
    assert "full_rvq" in table and "rvq1_only" in table
    with pytest.raises(ValueError, match="no utterances"):
        evaluate.evaluate_codec(codec, [], progress=False)


def test_evaluate_workdir_writes_json(tiny_workdir):
    config, workdir = tiny_workdir
    result = evaluate.evaluate_workdir(
        config, workdir, split="test", max_utterances=3, progress=False
    )
    assert result["num_utterances"] == 3 and result["codec_step"] == 1
    with open(evaluate.eval_path(workdir, "test")) as f:
        saved = json.load(f)
    assert saved["variants"]["full_rvq"]["stoi"] == result["variants"]["full_rvq"]["stoi"]


def test_bench_launcher_prints_json_last(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.bench_codec",
            "--config=configs/codec_tiny.py",
            f"--workdir={tmp_path}",
            "--num_clips=2",
            "--seconds=0.5",
            "--repeats=1",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["rtf"] > 0 and figures["peak_mb"] > 0
    assert figures["rtf"] == pytest.approx(figures["encode_rtf"] + figures["decode_rtf"])
    assert figures["codec"] == "fresh init" and figures["audio_seconds"] == 1.0


def test_jobs_functions_run_the_launchers_work(tiny_workdir):
    from gpa_jax.codec import jobs

    config, workdir = tiny_workdir
    result = jobs.evaluate_codec(
        config, workdir, split="validation", max_utterances=2, progress=False
    )
    assert result["split"] == "validation" and result["num_utterances"] == 2
    assert os.path.isfile(evaluate.eval_path(workdir, "validation"))
