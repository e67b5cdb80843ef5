"""python -m launch.bench_serve: user errors exit 2 with one line; the table is GPA's
format; (slow) on the quick demo's chain it serves every level and writes its results."""

import json

import pytest

from gpa_jax.serving import loadtest
from tests.faults.test_cli_faults import _cli, _user_error


def test_bench_serve_needs_a_trained_work_dir_and_good_flags(tmp_path):
    _user_error(_cli("bench_serve", f"--workdir={tmp_path / 'none'}"), "work dir", "does not exist")
    _user_error(_cli("bench_serve", f"--workdir={tmp_path}"), "no LM checkpoint in")
    for flag, words in (("--concurrency=4,0", ["--concurrency", "'0' is not a positive integer"]),
                        ("--concurrency=four", ["'four' is not a positive integer"]),
                        ("--mix=tts:1,sing:2", ["unknown task 'sing'"]),
                        ("--requests=0", ["--requests=0 must be > 0"]),
                        ("--warmup_requests=-1", ["--warmup_requests=-1 must be >= 0"])):  # fmt: skip
        _user_error(_cli("bench_serve", f"--workdir={tmp_path}", flag), *words)


def test_levels_default_to_gpas_and_add_160_on_a_gpu():
    assert loadtest.parse_levels([], gpu=False) == [1, 4, 16, 64]
    assert loadtest.parse_levels([], gpu=True) == [1, 4, 16, 64, 160]
    assert loadtest.parse_levels(["16", "1", "16"], gpu=True) == [1, 16]


def _row(mode="closed", concurrency=4, rate=None, **quality):
    timing = {"ttfc_s_p50": 0.2589, "ttfc_s_p95": 0.40, "rtf_p50": 0.197, "rtf_p95": 0.2484,
              "audio_s_mean": 6.44}  # fmt: skip
    return {
        "mode": mode, "concurrency": concurrency, "rate": rate, "ok": 7, "sent": 8,
        "requests_per_s": 1.5, "tts": timing, "vc": {**timing, "rtf_p50": None},
        "asr": {"latency_s_p50": 0.1575}, "compared": 7, "equal_one_by_one": 6,
        "equal_fraction": 6 / 7, **quality,
    }  # fmt: skip


def test_table_is_gpas_format():
    rows = [_row(asr_wer=0.25, asr_wer_one_by_one=0.2, tts_judge_wer=0.5,
                 tts_judge_wer_one_by_one=0.5),
            _row("poisson", None, rate=0.75)]  # fmt: skip
    lines = loadtest.markdown_table(rows).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:6] == ["Concurrency", "Requests ok", "TTS RTF p50", "TTS RTF p95",
                          "TTS first chunk p50 (ms)", "TTS first chunk p95 (ms)"]  # fmt: skip
    assert "req/s" in header and header[-1] == "= one by one"
    assert lines[1] == "|" + "---|" * len(header)
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert len(cells) == len(header) and len(lines) == 4
    got = dict(zip(header, cells, strict=True))
    assert got["Concurrency"] == "4" and got["Requests ok"] == "7/8"
    assert (got["TTS RTF p50"], got["TTS RTF p95"]) == ("0.197", "0.248")
    assert (got["TTS first chunk p50 (ms)"], got["TTS first chunk p95 (ms)"]) == ("259", "400")
    assert got["TTS audio (s)"] == "6.44" and got["ASR latency p50 (ms)"] == "158"
    assert got["VC RTF p50"] == "–" and got["req/s"] == "1.500"
    assert got["ASR WER (alone)"] == "0.250 (0.200)" and got["TTS judge-WER (alone)"] == "0.500 (0.500)"
    assert got["VC judge-WER (alone)"] == "–" and got["= one by one"] == "6/7"
    poisson = [c.strip() for c in lines[3].strip("|").split("|")]
    assert poisson[0] == "Poisson 0.75/s" and poisson[-4] == "–"


def check_bench_serve_on(workdir, out):
    """Runs the command at small counts on a trained work dir; checks what it wrote."""
    _user_error(_cli("bench_serve", f"--workdir={workdir}", "--split=nope", f"--out={out}"),
                "cannot read split 'nope'", "Unknown split")  # fmt: skip
    result = _cli("bench_serve", f"--workdir={workdir}", f"--out={out}", "--concurrency=1,2",
                  "--requests=3", "--max_new_tokens=10", "--warmup_requests=1", "--judge=none",
                  "--poisson_rate=5", "--slots=2", "--split=train", timeout=1800)  # fmt: skip
    assert result.returncode == 0, (result.stderr[-3000:], (out / "serve.log").read_text()[-2000:])
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    rows = summary["rows"]
    assert [(r["mode"], r["concurrency"]) for r in rows] == [("closed", 1), ("closed", 2),
                                                             ("poisson", None)]  # fmt: skip
    assert [r["ok"] for r in rows] == [3, 3, 3] and rows[2]["rate"] == 5
    assert all(r["equal_fraction"] == 1.0 for r in rows), rows
    assert "no GPU" in summary["machine"] or "gpu" in summary["machine"]
    table = (out / "results.md").read_text()
    assert "| 2 | 3/3 |" in table and "| Poisson 5/s | 3/3 |" in table
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    assert "Uvicorn running on http://127.0.0.1:" in (out / "serve.log").read_text()


@pytest.mark.slow
def test_bench_serve_on_the_quick_demo_chain(quick_demo, tmp_path):
    workdir, demo = quick_demo
    assert demo.returncode == 0
    check_bench_serve_on(workdir, tmp_path / "bench")
