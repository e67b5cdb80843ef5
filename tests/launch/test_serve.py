"""python -m launch.serve: user errors exit 2 with one line; on the quick demo's trained
chain (slow) it answers every endpoint over HTTP and exits 0 on SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.faults.test_cli_faults import _cli, _user_error


def test_serve_needs_a_trained_work_dir(tmp_path):
    _user_error(_cli("serve", f"--workdir={tmp_path / 'none'}"), "work dir", "does not exist")
    _user_error(_cli("serve", f"--workdir={tmp_path}"), "no LM checkpoint in")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_answers_every_endpoint_on_the_quick_demo_chain(quick_demo, tmp_path):
    import httpx
    import soundfile as sf

    from gpa_jax.evaluation.results import read_manifest

    workdir, demo = quick_demo
    assert demo.returncode == 0
    wav = read_manifest(str(workdir / "samples" / "asr" / "manifest.jsonl"))[0]["wav"]
    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "demo.wav").write_bytes(open(wav, "rb").read())
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "launch.serve", f"--workdir={workdir}", f"--port={port}",
         f"--voices={voices}", "--slots=2", "--max_queue=2", "--chunk_frames=10"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900  # loading and warm-up compiles
        while time.time() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(2)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        audio = open(wav, "rb").read()
        asr = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("x.wav", audio)},
                         timeout=300)  # fmt: skip
        assert asr.status_code == 200 and isinstance(asr.json()["text"], str), asr.text
        body = {"input": "the cat sat on the mat", "voice": "demo", "stream": False}
        tts = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=300)
        assert tts.status_code == 200, tts.text
        out = tmp_path / "tts.wav"
        out.write_bytes(tts.content)
        samples, rate = sf.read(out)
        assert rate == 16000 and len(samples) > 0
        pieces = []
        with httpx.stream("POST", f"{url}/v1/audio/speech", json={**body, "stream": True},
                          timeout=300) as response:  # fmt: skip
            assert response.status_code == 200
            pieces = list(response.iter_raw())
        assert b"".join(pieces)[:4] == b"RIFF" and len(b"".join(pieces)) > 44
        clip, clip_rate = sf.read(wav, dtype="float32")
        short = tmp_path / "short.wav"  # a VC source within this LM's length
        sf.write(short, clip[: 2 * clip_rate], clip_rate)
        vc = httpx.post(f"{url}/v1/audio/voice_conversion",
                        files={"file": ("x.wav", short.read_bytes())},
                        data={"voice": "demo", "stream": "false"}, timeout=300)  # fmt: skip
        assert vc.status_code == 200 and len(vc.content) > 44, vc.text
        bad = httpx.post(f"{url}/v1/audio/speech", json={"voice": "demo"}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
        assert 'status="200"} ' in httpx.get(f"{url}/metrics", timeout=30).text
        server.send_signal(signal.SIGTERM)
        assert server.wait(120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
