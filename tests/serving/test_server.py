"""The HTTP server on tiny random models: every endpoint answers (and serves what the
sampler makes), audio streams, bad input is a 4xx naming the field, overload is 503,
shutdown finishes the requests taken."""

import base64
import dataclasses
import io
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from gpa_jax.serving import server as server_lib
from gpa_jax.serving.server import ServerSettings, create_app, wav_header
from tests.serving.conftest import RATE, clip, wav_bytes

SETTINGS = dict(slots=2, max_queue=2, steps_per_call=4, chunk_frames=4, chunk_growth=2.0,
                max_chunk_frames=16, context_frames=4, max_upload_bytes=250_000, warmup=False)  # fmt: skip
HOP = 320


@pytest.fixture(scope="module")
def client(serve_models):
    with TestClient(create_app(serve_models, ServerSettings(**SETTINGS))) as client:
        yield client


def _speech(client, **body):
    return client.post("/v1/audio/speech", json={"input": "hello there", "voice": "alice", **body})


def _form(client, path, files=None, **data):
    files = {name: (f"{name}.wav", content, "audio/wav") for name, content in (files or {}).items()}
    return client.post(path, data={k: str(v) for k, v in data.items()}, files=files)


def test_every_endpoint_answers_and_serves_what_the_sampler_makes(client, serve_models):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["slots"] == 2 and health["capacity"] == 4
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    # ASR: the sampler's greedy text for the same audio.
    source = wav_bytes(1.5, seed=2)
    got = _form(client, "/v1/audio/transcriptions", {"file": source}, model="whisper-1")
    assert got.status_code == 200, got.text
    request = serve_models.builder.build("asr", source_wav=clip(1.5, seed=2))
    (want,) = serve_models.sampler.generate([request])
    assert got.json() == {"text": want.text}
    text = _form(client, "/v1/audio/transcriptions", {"file": source}, response_format="text")
    assert text.text == want.text and text.headers["content-type"].startswith("text/plain")
    verbose = _form(client, "/v1/audio/transcriptions", {"file": source},
                    response_format="verbose_json").json()  # fmt: skip
    assert verbose["duration"] == pytest.approx(1.5) and verbose["text"] == want.text
    # TTS, greedy: the whole file is the codec's decoding of the sampler's RVQ-1 codes.
    whole = _speech(client, stream=False, temperature=0, max_new_tokens=12)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    audio, rate = sf.read(io.BytesIO(whole.content), dtype="float32")
    tts = serve_models.builder.build("tts", text="hello there",
                                     reference_wav=serve_models.voices["alice"], max_new_tokens=12,
                                     params=server_lib.SamplingParams())  # fmt: skip
    (want,) = serve_models.sampler.generate([tts])
    assert rate == RATE and len(audio) == len(want.rvq1) * HOP > 0
    decoded = serve_models.synthesize([want.rvq1], [tts.reference])[0]
    np.testing.assert_allclose(audio, decoded, atol=2 / 32768)
    # Streamed: a header of unknown length, then the same samples (RVQ-1 decoding of
    # windows with left context: close to, not bit-equal with, the one-shot decode).
    streamed = _speech(client, temperature=0, max_new_tokens=12)
    assert streamed.content[:44] == wav_header(RATE)
    pcm = np.frombuffer(streamed.content[44:], "<i2")
    assert len(pcm) == len(audio)
    # pcm, a base64 reference and a multipart reference file are the same voice.
    raw = _speech(client, response_format="pcm", temperature=0, max_new_tokens=12)
    assert raw.headers["content-type"] == "audio/pcm" and raw.content == streamed.content[44:]
    alice = wav_bytes(2.0, seed=1)
    inline = _speech(client, voice=None, reference_audio=base64.b64encode(alice).decode(),
                     temperature=0, max_new_tokens=12)  # fmt: skip
    assert inline.content == streamed.content
    form = _form(client, "/v1/audio/speech", {"reference": alice}, input="hello there",
                 temperature=0, max_new_tokens=12)  # fmt: skip
    assert form.content == streamed.content
    # VC with a named voice, sampled with a seed: the same seed gives the same audio.
    vc = [_form(client, "/v1/audio/voice_conversion", {"file": source}, voice="alice", seed=7,
                stream="false") for _ in range(2)]  # fmt: skip
    assert vc[0].status_code == 200 and vc[0].content == vc[1].content and len(vc[0].content) > 44
    metrics = client.get("/metrics").text
    assert 'gpa_requests_total{endpoint="speech",status="200"} 5' in metrics
    assert 'gpa_requests_total{endpoint="transcriptions",status="200"} 3' in metrics
    assert "gpa_time_to_first_audio_seconds_count" in metrics and "gpa_in_flight 0" in metrics
    assert float(metrics.split("\ngpa_generated_tokens_total ")[1].split()[0]) > 0


BAD = [
    ("speech", {"input": None}, 400, "input", "required"),
    ("speech", {"input": "   "}, 400, "input", "required"),
    ("speech", {"voice": "bob"}, 400, "voice", "unknown voice 'bob'; voices: alice"),
    ("speech", {"voice": None}, 400, "voice", "exactly one of"),
    ("speech", {"reference_audio": "AAAA"}, 400, "reference_audio", "exactly one of"),
    ("speech", {"voice": None, "reference_audio": "not base64!"}, 400, "reference_audio", "base64"),
    ("speech", {"voice": None, "reference_audio": base64.b64encode(b"RIFF0000WAVEjunk").decode()},
     400, "reference_audio", "unreadable or corrupt"),
    ("speech", {"voice": None, "reference_audio": base64.b64encode(wav_bytes(0.3)).decode()},
     400, "reference_audio", "reference_audio is 0.30 s (15 frames), shorter than"),
    ("speech", {"temperature": -1}, 400, "temperature", "temperature=-1.0 must be >= 0"),
    ("speech", {"top_p": 0}, 400, "top_p", "must be > 0"),
    ("speech", {"top_k": "many"}, 400, "top_k", "expected an integer"),
    ("speech", {"top_k": 2.5}, 400, "top_k", "expected an integer"),
    ("speech", {"seed": -1}, 400, "seed", "must be >= 0"),
    ("speech", {"max_new_tokens": 0}, 400, "max_new_tokens", "must be >= 1"),
    ("speech", {"response_format": "mp3"}, 400, "response_format", "'mp3' is not one of wav, pcm"),
    ("speech", {"speed": 1.5}, 400, "speed", "only 1.0"),
    ("speech", {"stream": "maybe"}, 400, "stream", "true or false"),
    ("speech", {"temprature": 0.5}, 400, "temprature", "unknown field 'temprature'"),
    ("speech", {"input": "a very long sentence " * 20}, 400, "input", "over-long input"),
    ("transcriptions", {}, 400, "file", "required"),
    ("transcriptions", {"file": b"RIFF0000WAVEjunk"}, 400, "file", "unreadable or corrupt"),
    ("transcriptions", {"file": wav_bytes(6.0)}, 400, "file",
     "file: too long: 6.00 s > max_seconds=4.3"),
    ("transcriptions", {"file": wav_bytes(9.0)}, 413, "file", "over the upload limit"),
    ("transcriptions", {"file": wav_bytes(1.0), "response_format": "srt"}, 400, "response_format",
     "not one of json, text"),
    ("voice_conversion", {"file": wav_bytes(1.0)}, 400, "voice", "exactly one of"),
    ("voice_conversion", {"file": wav_bytes(1.0), "voice": "alice", "model": ""}, 200, None, ""),
    ("enhancement", {}, 400, "file", "the speech to enhance is required"),
    ("enhancement", {"file": wav_bytes(1.0), "voice": "alice"}, 400, "voice", "unknown field 'voice'"),
    ("enhancement", {"file": wav_bytes(1.0)}, 400, None, "not trained for se"),
]  # fmt: skip


@pytest.mark.parametrize("endpoint, fields, status, param, message", BAD,
                         ids=[f"{e}-{p}-{i}" for i, (e, _, _, p, _) in enumerate(BAD)])  # fmt: skip
def test_bad_requests_are_4xx_naming_the_field(client, endpoint, fields, status, param, message):
    if endpoint == "speech":
        body = {"input": "hello there", "voice": "alice", "max_new_tokens": 4, **fields}
        response = client.post("/v1/audio/speech", json={k: v for k, v in body.items() if v is not None})
    else:
        files = {k: v for k, v in fields.items() if isinstance(v, bytes)}
        data = {k: v for k, v in fields.items() if not isinstance(v, bytes)}
        response = _form(client, f"/v1/audio/{endpoint}", files, max_new_tokens=4, **data)
    assert response.status_code == status, response.text
    if status != 200:
        error = response.json()["error"]
        assert error["param"] == param and message in error["message"], error
        assert error["type"] == "invalid_request_error"


def test_malformed_bodies_and_short_references_allowed_on_request(client):
    bad_json = client.post("/v1/audio/speech", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "invalid JSON" in bad_json.json()["error"]["message"]
    plain = client.post("/v1/audio/speech", content=b"hello", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "multipart/form-data" in plain.json()["error"]["message"]
    short = base64.b64encode(wav_bytes(0.3)).decode()
    ok = _speech(client, voice=None, reference_audio=short, allow_short_reference=True,
                 max_new_tokens=4)  # fmt: skip
    assert ok.status_code == 200 and len(ok.content) > 44
    assert client.get("/health").json()["in_flight"] == 0


def test_overload_is_503_and_the_requests_taken_are_served(serve_models):
    """Capacity = slots + queue; past it a request is refused at once (nothing queued),
    the server stays up, and the requests it took are answered."""
    gate = threading.Event()
    real = serve_models.synthesize

    def held(rvq1s, prompts):  # the worker stops here until the gate opens
        gate.wait(60)
        return real(rvq1s, prompts)

    models = server_lib.ServeModels(serve_models.sampler, serve_models.codec, serve_models.limits,
                                    synthesize=held, voices=serve_models.voices)  # fmt: skip
    app = create_app(models, ServerSettings(**{**SETTINGS, "slots": 1, "max_queue": 1}))
    with TestClient(app) as client:
        server = app.state.server
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(_speech(
            client, stream=False, max_new_tokens=6))) for _ in range(2)]  # fmt: skip
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while server.in_flight < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert server.in_flight == 2
        refused = _speech(client, max_new_tokens=6)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        error = refused.json()["error"]
        assert error["type"] == "overloaded" and "2 requests in flight (capacity 2" in error["message"]
        asr = _form(client, "/v1/audio/transcriptions", {"file": wav_bytes(1.0)})
        assert asr.status_code == 503
        assert client.get("/health").status_code == 200
        gate.set()
        for t in threads:
            t.join(60)
        assert [a.status_code for a in answers] == [200, 200]
        assert _speech(client, max_new_tokens=4).status_code == 200  # capacity again
        metrics = client.get("/metrics").text
        assert 'gpa_requests_total{endpoint="speech",status="503"} 1' in metrics
        # Draining: new requests are refused, health says so.
        server.drain()
        assert _speech(client, max_new_tokens=4).status_code == 503
        assert client.get("/health").json()["status"] == "draining"


def test_failures_are_500_for_the_requests_they_hit_and_the_server_goes_on(serve_models):
    models = server_lib.ServeModels(serve_models.sampler, serve_models.codec, serve_models.limits,
                                    voices=serve_models.voices)  # fmt: skip
    app = create_app(models, ServerSettings(**SETTINGS))
    with TestClient(app) as client:
        worker = app.state.server.worker
        step, calls = worker.engine.step, []

        def broken_once():
            calls.append(1)
            if len(calls) == 2:  # mid-generation
                raise RuntimeError("device lost")
            return step()

        worker.engine.step = broken_once
        failed = _speech(client, stream=False, max_new_tokens=12)
        assert failed.status_code == 500 and "device lost" in failed.json()["error"]["message"]
        ok = _speech(client, stream=False, max_new_tokens=12)
        assert ok.status_code == 200 and worker.failures == 1
        assert "gpa_worker_failures_total 1" in client.get("/metrics").text


def test_real_server_streams_chunks_and_drains_on_shutdown(serve_models):
    """uvicorn on a socket: the audio arrives in pieces while it is made; SIGTERM's
    handler refuses new connections but the open stream is finished, then it exits."""
    slow = serve_models.synthesize

    def paced(rvq1s, prompts):  # ~0.1 s per synthesis window: the stream spans seconds
        time.sleep(0.1)
        return slow(rvq1s, prompts)

    models = server_lib.ServeModels(serve_models.sampler, serve_models.codec, serve_models.limits,
                                    synthesize=paced, voices=serve_models.voices)  # fmt: skip
    app = create_app(models, ServerSettings(**SETTINGS))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uvicorn = server_lib.uvicorn_server(app, log_level="warning", timeout_graceful_shutdown=60)
    thread = threading.Thread(target=uvicorn.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while not uvicorn.started and time.time() < deadline:
        time.sleep(0.05)
    body = {"input": "hello there my friend", "voice": "alice", "max_new_tokens": 40,
            "temperature": 0}  # fmt: skip
    # A client that leaves mid-stream: its request is cancelled and its slot freed.
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=60) as response:
        next(response.iter_raw())
    deadline = time.time() + 30
    while time.time() < deadline:
        health = httpx.get(f"{url}/health", timeout=5).json()
        if health["in_flight"] == 0 and health["active"] == 0:
            break
        time.sleep(0.1)
    assert health["in_flight"] == 0 and health["active"] == 0, health
    assert app.state.server.worker.engine.stats["finished"] == 0  # dropped, not run to the end
    request = models.builder.build("tts", text=body["input"], reference_wav=models.voices["alice"],
                                   max_new_tokens=40, params=server_lib.SamplingParams())  # fmt: skip
    (want,) = models.sampler.generate([request])
    pieces, times = [], []
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=60) as response:
        assert response.status_code == 200
        for piece in response.iter_raw():
            pieces.append(piece)
            times.append(time.perf_counter())
            if len(pieces) == 2:  # mid-stream: the server is told to stop
                uvicorn.handle_exit(15, None)
    data = b"".join(pieces)
    assert data[:44] == wav_header(RATE) and (len(data) - 44) % (2 * HOP) == 0
    assert len(data) - 44 == len(want.rvq1) * 2 * HOP > 0  # all of it
    assert len(pieces) > 2 and times[-1] - times[1] > 0.15  # it came in pieces, over time
    thread.join(60)
    assert not thread.is_alive() and not app.state.server.worker.thread.is_alive()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5)


def test_enhancement_serves_the_samplers_se_output_in_the_noisy_voice(serve_models, vocab):  # noqa: F811
    """/v1/audio/enhancement on an LM trained with SE: the whole file is the codec's
    decoding of the sampler's greedy RVQ-1 for the same noisy clip, with the clip's own
    codes as the voice prompt; streamed, it is the same length."""
    from gpa_jax.models.config import LMConfig
    from gpa_jax.sampling import Sampler
    from tests.models.helpers import numpy_model
    from tests.sampling.test_sampler import SE_RATES, _config

    config = _config(vocab.vocab_size)
    config.tasks.rates = SE_RATES
    sampler = Sampler(config, numpy_model(LMConfig.from_config(config.model)), vocab)
    models = dataclasses.replace(serve_models, sampler=sampler)
    with TestClient(create_app(models, ServerSettings(**SETTINGS))) as client:
        noisy = wav_bytes(1.5, seed=5)
        whole = _form(client, "/v1/audio/enhancement", {"file": noisy}, stream="false",
                      temperature=0, max_new_tokens=12)  # fmt: skip
        assert whole.status_code == 200, whole.text
        audio, rate = sf.read(io.BytesIO(whole.content), dtype="float32")
        request = models.builder.build("se", source_wav=clip(1.5, seed=5), max_new_tokens=12,
                                       params=server_lib.SamplingParams())  # fmt: skip
        (want,) = sampler.generate([request])
        assert rate == RATE and len(audio) == len(want.rvq1) * HOP > 0
        decoded = models.synthesize([want.rvq1], [request.source])[0]
        np.testing.assert_allclose(audio, decoded, atol=2 / 32768)
        streamed = _form(client, "/v1/audio/enhancement", {"file": noisy}, temperature=0,
                         max_new_tokens=12)  # fmt: skip
        assert streamed.content[:44] == wav_header(RATE) and len(streamed.content) == len(whole.content)
        assert 'gpa_requests_total{endpoint="enhancement",status="200"} 2' in client.get("/metrics").text
