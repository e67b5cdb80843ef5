"""The load test's parts: percentiles, the Poisson schedule, requests that do not depend on
the concurrency, and (end to end) both drivers against a real uvicorn server on the tiny
random models: every request answered, sampled outputs under load equal to one by one."""

import asyncio
import socket
import threading
import time

import numpy as np
import pytest

from gpa_jax.errors import UserError
from gpa_jax.serving import loadtest
from gpa_jax.serving.loadtest import Outcome, Run, Utterance
from tests.serving.conftest import RATE, clip


def test_percentiles_interpolate_between_order_statistics():
    values = [4.0, 1.0, 3.0, 2.0]
    assert loadtest.percentile(values, 50) == pytest.approx(2.5)
    assert loadtest.percentile(values, 95) == pytest.approx(3.85)  # 3 + 0.85 * (4 - 3)
    assert loadtest.percentile([7.0], 95) == 7.0
    assert loadtest.percentile([None, 2.0, None], 50) == 2.0  # missing figures are left out
    assert loadtest.percentile([], 50) is None


def test_summarize_counts_and_figures():
    def audio(seconds):
        return b"\0\0" * int(seconds * RATE)

    outcomes = [
        Outcome(0, "tts", 0.0, 200, first_s=0.5, done_s=2.0, pcm=audio(1.0), sample_rate=RATE),
        Outcome(1, "tts", 1.0, 200, first_s=1.1, done_s=2.0, pcm=audio(2.0), sample_rate=RATE),
        Outcome(2, "asr", 0.0, 200, done_s=0.3, text="a b"),
        Outcome(3, "vc", 0.0, 503, error="server overloaded", done_s=0.01),
        Outcome(4, "vc", 0.0, 0, error="ReadTimeout: x", done_s=9.0),
    ]
    row = loadtest.summarize(Run("closed", outcomes, wall_s=4.0, requested=6, concurrency=2))
    assert (row["requested"], row["sent"], row["ok"]) == (6, 5, 3)
    assert row["failed"] == {"503": 1, "no_answer": 1} and row["first_error"] == "server overloaded"
    assert row["requests_per_s"] == pytest.approx(0.75)
    tts = row["tts"]
    assert tts["ttfc_s_p50"] == pytest.approx(0.3)  # TTFCs 0.5 and 0.1
    assert tts["rtf_p50"] == pytest.approx((2.0 + 0.5) / 2)  # RTFs 2.0 and 0.5
    assert tts["audio_s_mean"] == pytest.approx(1.5)
    assert row["asr"] == {"ok": 1, "latency_s_p50": 0.3, "latency_s_p95": 0.3}
    assert row["vc"]["ok"] == 0 and row["vc"]["rtf_p50"] is None


def test_poisson_schedule_is_fixed_by_its_seed_and_has_the_rate():
    a = loadtest.poisson_schedule(4.0, 50, seed=1)
    assert np.array_equal(a, loadtest.poisson_schedule(4.0, 50, seed=1))
    assert not np.array_equal(a, loadtest.poisson_schedule(4.0, 50, seed=2))
    assert a[0] == 0 and np.all(np.diff(a) > 0) and len(a) == 50
    # The same draws at any count: the first 50 of 20000 are these.
    long = loadtest.poisson_schedule(4.0, 20000, seed=1)
    assert np.array_equal(long[:50], a)
    assert np.mean(np.diff(long)) == pytest.approx(0.25, rel=0.03)
    gaps = np.diff(long)
    assert np.std(gaps) == pytest.approx(0.25, rel=0.05)  # exponential: std = mean
    with pytest.raises(ValueError, match="> 0"):
        loadtest.poisson_schedule(0.0, 3)


TEXTS = ["hello there", "the cat sat", "a red bird", "good morning", "one two three", "see you"]


def _utterances():
    return [Utterance(f"u{i}", text, clip(1.0 + 0.2 * i, seed=i), speaker=f"s{i % 3}", rate=RATE)
            for i, text in enumerate(TEXTS)]  # fmt: skip


def _http(request):
    path, kwargs = request.http()
    return path, repr(kwargs)


def test_requests_depend_on_their_index_and_seed_only():
    utts = _utterances()
    mix = {"tts": 2.0, "asr": 1.0, "vc": 1.0}
    few = loadtest.make_requests(utts, 12, mix=mix, seed=5)
    many = loadtest.make_requests(utts, 60, mix=mix, seed=5)
    assert few == many[:12]  # request i is the same whatever the count
    assert [_http(r) for r in few] == [_http(r) for r in many[:12]]  # the same HTTP body
    assert loadtest.make_requests(utts, 60, mix=mix, seed=6) != many
    tasks = [r.task for r in many]
    assert {"tts", "asr", "vc"} == set(tasks) and tasks.count("tts") > tasks.count("asr")
    assert len({r.seed for r in many}) == 60  # seeds differ between requests
    for r in many:
        if r.task != "asr":  # another voice: another speaker where the split has one
            assert r.reference.speaker != (r.source.speaker if r.source else
                                           next(u.speaker for u in utts if u.text == r.text))
        assert r.expected == (r.text if r.task == "tts" else r.source.text)
    path, kwargs = many[tasks.index("tts")].http()
    assert path == "/v1/audio/speech" and kwargs["json"]["response_format"] == "pcm"
    assert kwargs["json"]["stream"] is True and "reference_audio" in kwargs["json"]
    path, kwargs = many[tasks.index("vc")].http()
    assert path == "/v1/audio/voice_conversion" and set(kwargs["files"]) == {"file", "reference"}
    # Limits: sources within the LM's length, references long enough.
    short = loadtest.make_requests(utts, 40, mix={"asr": 1, "vc": 1}, seed=0, max_source_s=1.25,
                                   min_reference_s=1.5)  # fmt: skip
    assert all(r.source.seconds <= 1.25 for r in short)
    assert all(r.reference.seconds >= 1.5 for r in short if r.reference is not None)
    with pytest.raises(UserError, match="source limit"):
        loadtest.make_requests(utts, 3, mix={"asr": 1}, max_source_s=0.5)


def test_parse_mix():
    assert loadtest.parse_mix("tts:2, asr:1,vc") == {"tts": 2.0, "asr": 1.0, "vc": 1.0}
    for bad, words in (("sing:1", "unknown task 'sing'"), ("tts:x", "not a number"),
                       ("tts:0", "positive weight"), ("", "positive weight")):  # fmt: skip
        with pytest.raises(UserError, match=words):
            loadtest.parse_mix(bad)


class _CountingJudge:
    """The real judge, counting the clips it is given."""

    def __init__(self, judge):
        self.judge, self.clips, self.name = judge, 0, judge.name

    def transcribe(self, wavs, sample_rate):
        self.clips += len(wavs)
        return self.judge.transcribe(wavs, sample_rate)


@pytest.fixture(scope="module")
def server_url(serve_models):
    from gpa_jax.serving import server as server_lib

    settings = server_lib.ServerSettings(slots=2, max_queue=8, steps_per_call=4, chunk_frames=4,
                                         max_chunk_frames=16, context_frames=4, warmup=False)  # fmt: skip
    app = server_lib.create_app(serve_models, settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uvicorn = server_lib.uvicorn_server(app, log_level="warning", timeout_graceful_shutdown=30)
    thread = threading.Thread(target=uvicorn.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not uvicorn.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.server
    uvicorn.should_exit = True
    thread.join(60)


def test_load_under_concurrency_serves_what_one_by_one_serves(server_url, serve_models):
    pytest.importorskip("faster_whisper")
    from gpa_jax.evaluation.judge import make_judge

    url, server = server_url
    requests = loadtest.make_requests(_utterances(), 7, mix={"tts": 1, "asr": 1, "vc": 1},
                                      seed=3, max_new_tokens=12, max_source_s=4.0,
                                      min_reference_s=1.0)  # fmt: skip
    assert {r.task for r in requests} == {"tts", "asr", "vc"}
    alone = asyncio.run(loadtest.closed_loop(url, requests, 1))
    assert [o.index for o in alone.outcomes] == list(range(7))
    assert all(o.ok for o in alone.outcomes), [o.error for o in alone.outcomes]
    busy = asyncio.run(loadtest.closed_loop(url, requests, 3))
    poisson = asyncio.run(loadtest.open_loop(url, requests, rate=50.0, seed=1))
    assert server.worker.engine.stats["finished"] >= 21
    judge = loadtest.JudgeCache(_CountingJudge(make_judge("whisper")))
    for run in (busy, poisson):
        row = loadtest.summarize(run)
        assert row["ok"] == row["sent"] == 7, row
        for task in ("tts", "vc"):
            assert 0 < row[task]["ttfc_s_p50"] <= row[task]["ttfc_s_p95"]
            assert row[task]["rtf_p50"] > 0 and row[task]["audio_s_mean"] > 0
        assert row["asr"]["latency_s_p50"] > 0 and row["requests_per_s"] > 0
        # Sampled TTS / VC (temperature 0.8, top-k 50) and greedy ASR: per-request seeds,
        # so the outputs under load are the tokens served alone; the audio is within float
        # rounding of the batched synthesis.
        quality = loadtest.compare(run, alone, requests, judge)
        assert quality["compared"] == 7 and quality["equal_fraction"] == 1.0, quality
        assert quality["audio_max_diff_lsb"] <= loadtest.AUDIO_ATOL_LSB
        assert quality["asr_wer"] == quality["asr_wer_one_by_one"]
        for task in ("tts", "vc"):
            assert 0 <= quality[f"{task}_judge_wer"] and 0 <= quality[f"{task}_judge_wer_one_by_one"]
    distinct = {o.pcm for run in (alone, busy, poisson) for o in run.outcomes if o.task != "asr"}
    assert judge.judge.clips == len(distinct)  # equal outputs were judged once
    for o in alone.outcomes:  # TTFC: the first audio bytes came before the last
        if o.task != "asr":
            assert o.sent_s < o.first_s <= o.done_s and len(o.pcm) > 0
    # A request with another seed is another request: a sampled output changes.
    tts = next(r for r in requests if r.task == "tts")
    other = loadtest.dataclasses.replace(tts, seed=tts.seed + 1)
    again = asyncio.run(loadtest.closed_loop(url, [other], 1)).outcomes[0]
    assert again.ok and again.pcm != alone.outcomes[tts.index].pcm


def test_runs_stop_sending_after_max_seconds(server_url):
    url, _ = server_url
    requests = loadtest.make_requests(_utterances(), 6, mix={"asr": 1}, seed=0, max_new_tokens=4)
    run = asyncio.run(loadtest.closed_loop(url, requests, 1, max_seconds=0.0))
    assert run.requested == 6 and len(run.outcomes) == 1  # the first, then the clock ran out
    late = asyncio.run(loadtest.open_loop(url, requests, rate=0.5, seed=0, max_seconds=0.0))
    assert len(late.outcomes) == 1  # only the request due at 0
