"""The HTTP server: OpenAI-style speech endpoints over the continuous-batching engine.

    app = create_app(ServeModels.from_workdir(W), ServerSettings(slots=8))
    uvicorn.run(app)                        # python -m launch.serve --workdir=W does this

Endpoints (JSON bodies or multipart forms; every audio input is a file in any format
soundfile reads, resampled to the codec's rate):
  POST /v1/audio/speech            TTS: `input` (text); the voice to clone as `voice` (the
        name of a clip in the server's voices folder), `reference_audio` (base64 of an
        audio file) or, in a form, a `reference` file. Answers audio: `response_format`
        wav (default) or pcm (16-bit little-endian mono at X-Sample-Rate); `stream`
        (default true) sends it in chunks as the LM makes it (a WAV header of unknown
        length first), false sends one complete file.
  POST /v1/audio/transcriptions    ASR (multipart): `file`; `response_format` json (default,
        {"text": ...}), text or verbose_json.
  POST /v1/audio/voice_conversion  VC (multipart): `file` (what to say) and the voice as for
        speech; answers audio as speech does.
  POST /v1/audio/enhancement       SE (multipart): `file` (noisy speech), rendered in its
        own voice; answers audio as speech does. Only for an LM trained with SE (else 400).
  GET /health (200 ok, 503 while draining), GET /metrics (Prometheus text), GET /v1/models.
Sampling fields (any task): seed, temperature, top_k, top_p, repetition_penalty,
max_new_tokens; absent ones take the sampler's defaults for the task. OpenAI's `model`
is accepted and ignored, `speed` must be 1 and `stream_format` "audio".

Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}: a bad field is
400 with `param` naming it (413 for an upload over max_upload_bytes, 415 for another
content type); past capacity (slots + max_queue requests in flight) or while draining the
answer is 503 with Retry-After, and nothing is queued.

Concurrency: the handlers only parse, validate and decode files (in a thread pool); one
worker thread owns the models and makes every JAX call: it encodes the inputs with the
codec, submits them to the `Engine` (continuous batching), steps it while anything runs
and synthesizes the TTS/VC chunks (`EngineAudio`), handing replies back to the handlers'
event loop. A client that goes away has its request cancelled (its slot is freed).
Shutdown (`Server.drain`, then the lifespan's end): new requests get 503, the worker
finishes every request already taken, then stops.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import uvicorn
from absl import logging
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from gpa_jax.audio import io as audio_io
from gpa_jax.sampling import RequestError, SamplingParams
from gpa_jax.sampling.config import check_params
from gpa_jax.sampling.engine import Engine, QueueFull
from gpa_jax.sampling.streaming import EngineAudio, synthesizer
from gpa_jax.serving.inputs import InputError, InputLimits, RequestBuilder

AUDIO_FORMATS = ("wav", "pcm")
TEXT_FORMATS = ("json", "text", "verbose_json")
SAMPLING_FIELDS = ("seed", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens")
_COMMON = ("model", *SAMPLING_FIELDS)
_AUDIO_OUT = ("response_format", "stream", "stream_format", "speed", "voice", "reference_audio",
              "reference", "allow_short_reference")  # fmt: skip
FIELDS = {
    "tts": {*_COMMON, *_AUDIO_OUT, "input"},
    "vc": {*_COMMON, *_AUDIO_OUT, "file"},
    "asr": {*_COMMON, "file", "response_format", "language", "prompt"},
    "se": {*_COMMON, "file", "response_format", "stream", "stream_format", "speed"},
}


@dataclasses.dataclass
class ServeModels:
    """What the server runs: the LM sampler, the codec (inputs -> codes, codes -> audio),
    the acoustic stage (None: RVQ-1-only codec decoding), the input limits, and named
    reference clips (float32 at the codec's rate)."""

    sampler: Any
    codec: Any
    limits: InputLimits
    acoustic: Any = None
    builder: RequestBuilder | None = None  # default: RequestBuilder(codec)
    synthesize: Callable | None = None  # default: streaming.synthesizer(codec, acoustic)
    voices: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    name: str = "gpa"

    def __post_init__(self):
        if self.builder is None:
            self.builder = RequestBuilder(self.codec)
        if self.synthesize is None:
            self.synthesize = synthesizer(self.codec, self.acoustic)

    @classmethod
    def from_workdir(cls, workdir: str, *, acoustic: str = "nar", voices_dir: str | None = None,
                     codec_config: Any = None, encode_bucket_frames: int = 50) -> ServeModels:  # fmt: skip
        """The chain trained in `workdir` (`harness.load_models`; acoustic "none" serves
        TTS/VC with RVQ-1-only decoding) and the clips of `voices_dir` as voices."""
        from gpa_jax import config_utils
        from gpa_jax.acoustic import recipe
        from gpa_jax.evaluation import harness
        from gpa_jax.sampling import config_from_checkpoint
        from gpa_jax.training import checkpoint as ckpt_lib

        lm_config = config_from_checkpoint(ckpt_lib.checkpoint_dir(workdir))
        if codec_config is None:
            codec_config = config_utils.load_config(
                os.path.join(recipe.REPO, "configs", "codec_tiny.py")
            )
        models = harness.load_models(workdir, lm_config=lm_config, codec_config=codec_config,
                                     speaker_encoder="",
                                     acoustic_variant=None if acoustic == "none" else acoustic)  # fmt: skip
        voice = models.acoustic.prompt_frames if models.acoustic is not None else 0
        limits = InputLimits(lm_config, codec_config, models.sampler.sampling, voice_frames=voice)
        builder = RequestBuilder.from_models(models.codec, models.sampler, lm_config, codec_config,
                                             workdir, bucket_frames=encode_bucket_frames)  # fmt: skip
        voices = load_voices(voices_dir, limits) if voices_dir else {}
        return cls(models.sampler, models.codec, limits, models.acoustic, builder, voices=voices,
                   name=os.path.basename(os.path.normpath(workdir)) or "gpa")  # fmt: skip


def load_voices(folder: str, limits: InputLimits) -> dict[str, np.ndarray]:
    """{file stem: reference clip} of the audio files in `folder` (the same checks as a
    request's reference)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"voices folder {folder!r} does not exist")
    voices = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        stem, ext = os.path.splitext(name)
        if os.path.isfile(path) and ext.lower() in (".wav", ".flac", ".ogg", ".mp3", ".aiff"):
            voices[stem] = limits.load_reference(path, "voice")
    if not voices:
        raise FileNotFoundError(f"no audio files (.wav, .flac, ...) in voices folder {folder!r}")
    return voices


@dataclasses.dataclass
class ServerSettings:
    slots: int = 8  # requests decoded together (rows of the KV cache)
    max_queue: int = 32  # requests that may wait for a slot; past it: 503
    steps_per_call: int = 8  # decode steps between joins
    max_join: int = 4  # prompts prefilled together
    num_candidates: int = 0  # sampled top-k width (0 = whole vocabulary)
    chunk_frames: int = 25  # streaming: first chunk (50 Hz frames), then growth times more
    chunk_growth: float = 2.0
    max_chunk_frames: int = 100
    context_frames: int = 8
    overlap_frames: int = 1
    max_upload_bytes: int = 25 << 20
    warmup: bool = True  # compile every engine bucket before serving
    retry_after_s: int = 1
    drain_timeout_s: float = 120.0


# --- replies between the worker and the handlers --------------------------------------


@dataclasses.dataclass
class Reply:
    kind: str  # accepted | audio | text | error
    status: int = 200
    message: str = ""
    param: str | None = None
    wav: np.ndarray | None = None
    final: bool = False
    result: Any = None


@dataclasses.dataclass(eq=False)
class Job:
    """One HTTP request on its way through the worker."""

    task: str
    inputs: dict[str, Any]  # RequestBuilder.build keywords
    stream: bool
    loop: asyncio.AbstractEventLoop
    replies: asyncio.Queue
    received_s: float
    ticket: Any = None
    cancelled: bool = False
    finished: bool = False  # its handler saw the last reply (or an error)

    def reply(self, reply: Reply) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown)
            self.loop.call_soon_threadsafe(self.replies.put_nowait, reply)


def _param_of(task: str, message: str) -> str | None:
    """The request field a sampler error is about."""
    voice = "voice" if task in ("tts", "vc") else None
    for word, field in (("text", "input"), ("over-long", "input" if task == "tts" else "file"),
                        ("reference", voice), ("source", "file"),
                        ("max_new_tokens", "max_new_tokens")):  # fmt: skip
        if word in message:
            return field
    return None


class Worker:
    """The thread that owns the models and the Engine (module docstring)."""

    def __init__(self, models: ServeModels, settings: ServerSettings):
        self.models = models
        s = settings
        # The server bounds what it takes (slots + max_queue); the engine never refuses.
        self.engine = Engine(models.sampler, slots=s.slots, max_queue=s.max_queue + s.slots,
                             steps_per_call=s.steps_per_call, max_join=s.max_join,
                             num_candidates=s.num_candidates)  # fmt: skip
        self._audio_options = dict(
            synthesize=models.synthesize, chunk_frames=s.chunk_frames, chunk_growth=s.chunk_growth,
            max_chunk_frames=s.max_chunk_frames, context_frames=s.context_frames,
            overlap_frames=s.overlap_frames,
        )  # fmt: skip
        self.audio = EngineAudio(self.engine, models.codec, **self._audio_options)
        self._cond = threading.Condition()
        self._inbox: collections.deque[Job] = collections.deque()
        self._cancels: collections.deque[Job] = collections.deque()
        self._jobs: dict[int, Job] = {}  # ticket serial -> job
        self._stopping = False
        self.thread = threading.Thread(target=self._loop, name="gpa-serve-worker", daemon=True)
        self.failures = 0

    @property
    def queued(self) -> int:
        return len(self._inbox) + self.engine.waiting

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            self._inbox.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        with self._cond:
            job.cancelled = True
            self._cancels.append(job)
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> bool:
        """Finishes every job taken, then ends the thread; False if it is still running."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._inbox or self._cancels or self._stopping) and self.engine.idle:
                    self._cond.wait()
                if self._stopping and not self._inbox and self.engine.idle:
                    return
                new, self._inbox = list(self._inbox), collections.deque()
                cancels, self._cancels = list(self._cancels), collections.deque()
            try:
                for job in cancels:
                    self._drop(job)
                for job in new:
                    self._admit(job)
                if not self.engine.idle:
                    self._step()
            except Exception as error:  # noqa: BLE001 - a bug must not take the server down
                logging.exception("serving step failed")
                self._fail_all(f"internal error: {type(error).__name__}: {error}")

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            return
        try:
            request = self.models.builder.build(job.task, **job.inputs)
            ticket = self.engine.submit(request)
            if job.task != "asr":
                self.audio.track(ticket, stream=job.stream)
        except (RequestError, InputError) as error:
            param = getattr(error, "field", None) or _param_of(job.task, str(error))
            job.reply(Reply("error", 400, str(error), param))
        except QueueFull as error:
            job.reply(Reply("error", 503, f"server overloaded: {error}"))
        except Exception as error:  # noqa: BLE001 - reported to this request only
            logging.exception("request %s failed", job.inputs.get("id"))
            job.reply(Reply("error", 500, f"internal error: {type(error).__name__}: {error}"))
        else:
            job.ticket = ticket
            self._jobs[ticket.serial] = job
            job.reply(Reply("accepted"))

    def _drop(self, job: Job) -> None:
        if job.ticket is not None and self._jobs.pop(job.ticket.serial, None) is not None:
            self.engine.cancel(job.ticket)
            self.audio.forget(job.ticket)

    def _step(self) -> None:
        events = self.engine.step()
        for event in events:
            job = self._jobs.get(event.ticket.serial)
            if job is not None and job.task == "asr" and event.finished:
                del self._jobs[event.ticket.serial]
                job.reply(Reply("text", result=event.ticket.result, final=True))
        for ticket, chunk in self.audio.feed(events):
            job = self._jobs.get(ticket.serial)
            if job is None:
                continue
            if chunk.final:
                del self._jobs[ticket.serial]
            if chunk.error:
                job.reply(Reply("error", 500, chunk.error, final=True))
            else:
                job.reply(Reply("audio", wav=chunk.wav, final=chunk.final, result=ticket.result))

    def _fail_all(self, message: str) -> None:
        """After a failed step: every running request gets the error, the engine starts
        over empty (its compiled programs kept)."""
        self.failures += 1
        for job in self._jobs.values():
            job.reply(Reply("error", 500, message, final=True))
        self._jobs.clear()
        self.engine.reset()
        self.audio = EngineAudio(self.engine, self.models.codec, **self._audio_options)


# --- metrics ----------------------------------------------------------------------------


class Metrics:
    """Counters and sums for /metrics (Prometheus text format)."""

    def __init__(self):
        self.requests = collections.Counter()  # (endpoint, status) -> answered
        self.sums = collections.defaultdict(float)  # name -> seconds
        self.counts = collections.Counter()

    def answered(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, int(status))] += 1

    def observe(self, name: str, seconds: float) -> None:
        self.sums[name] += seconds
        self.counts[name] += 1

    def render(self, server: Server) -> str:
        engine = server.worker.engine
        lines = ["# HELP gpa_requests_total Requests answered, by endpoint and HTTP status.",
                 "# TYPE gpa_requests_total counter"]  # fmt: skip
        for (endpoint, status), n in sorted(self.requests.items()):
            lines.append(f'gpa_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
        gauges = {
            "gpa_in_flight": (server.in_flight, "Requests taken and not yet answered in full."),
            "gpa_queued": (server.worker.queued, "Requests waiting for a slot."),
            "gpa_slots_active": (engine.active, "Slots decoding a request."),
            "gpa_slots": (engine.slots, "Slots of the engine."),
            "gpa_capacity": (server.capacity, "Requests in flight past which the server answers 503."),
            "gpa_draining": (int(server.draining), "1 while shutting down."),
        }  # fmt: skip
        for name, (value, help_text) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        counters = {
            "gpa_generated_tokens_total": (engine.stats["tokens"], "Tokens the LM generated."),
            "gpa_decode_steps_total": (engine.stats["decode_steps"], "Decode steps run."),
            "gpa_joins_total": (engine.stats["joins"], "Prefill calls that joined requests."),
            "gpa_worker_failures_total": (server.worker.failures, "Failed engine steps."),
        }
        for name, (value, help_text) in counters.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        for name, help_text in (("gpa_time_to_first_audio_seconds", "From request to first audio chunk."),
                                ("gpa_request_seconds", "From request to its last byte.")):  # fmt: skip
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} summary",
                      f"{name}_sum {self.sums[name]:.6f}", f"{name}_count {self.counts[name]}"]  # fmt: skip
        return "\n".join(lines) + "\n"


# --- the server state and the app ----------------------------------------------------------


class HttpError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    kind = {503: "overloaded", 500: "server_error"}.get(status, "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


class Server:
    """Admission (capacity, draining), the worker, the metrics."""

    def __init__(self, models: ServeModels, settings: ServerSettings | None = None):
        self.models = models
        self.settings = settings or ServerSettings()
        self.worker = Worker(models, self.settings)
        self.metrics = Metrics()
        self.capacity = self.settings.slots + self.settings.max_queue
        self.in_flight = 0  # touched on the event loop only
        self.draining = False
        self.ready = False

    def start(self) -> None:
        if self.settings.warmup:
            t0 = time.perf_counter()
            n = self.worker.engine.warmup(lambda m: logging.info("warm-up: %s", m))
            logging.info("warm-up: %d programs compiled in %.1f s", n, time.perf_counter() - t0)
        self.worker.start()
        self.ready = True

    def drain(self) -> None:
        """New requests get 503 from now on; those taken are finished."""
        self.draining = True

    def stop(self) -> None:
        self.drain()
        if not self.worker.stop(self.settings.drain_timeout_s):
            logging.warning("worker still busy after %.0f s; stopping anyway",
                            self.settings.drain_timeout_s)  # fmt: skip

    def release(self, job: Job | None) -> None:
        """A request's handler is done with it: it no longer counts as in flight, and the
        worker drops it if it was still running (the client went away)."""
        self.in_flight -= 1
        if job is not None and not job.finished:
            self.worker.cancel(job)

    def refusal(self) -> JSONResponse | None:
        headers = {"Retry-After": str(self.settings.retry_after_s)}
        if self.draining:
            return error_response(503, "server is shutting down; retry on another instance",
                                  headers=headers)  # fmt: skip
        if self.in_flight >= self.capacity:
            return error_response(
                503, f"server overloaded: {self.in_flight} requests in flight (capacity "
                f"{self.capacity}: {self.settings.slots} slots + a queue of "
                f"{self.settings.max_queue}); retry later", headers=headers,
            )  # fmt: skip
        return None


# --- request parsing ----------------------------------------------------------------------


async def _read_fields(request: HttpRequest, max_bytes: int) -> dict[str, Any]:
    """The request's fields: a JSON object, or a form (files as UploadFile)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > 2 * max_bytes + (1 << 20):
        raise HttpError(413, f"request body of {int(length)} bytes is over the limit")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HttpError(400, f"body: invalid JSON ({error})") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body: expected a JSON object")
        return body
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_part_size=max_bytes)
        return {key: value for key, value in form.multi_items()}
    raise HttpError(415, f"Content-Type {ctype or 'missing'}: send application/json or "
                         "multipart/form-data")  # fmt: skip


def _check_known(fields: dict[str, Any], task: str) -> None:
    unknown = sorted(set(fields) - FIELDS[task])
    if unknown:
        raise HttpError(400, f"unknown field {unknown[0]!r}; fields: {', '.join(sorted(FIELDS[task]))}",
                        unknown[0])  # fmt: skip


def _number(fields, name, kind, default=None, low=None, high=None, low_open=False):
    """A numeric field (JSON number or form text) checked against [low, high]."""
    value = fields.get(name)
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bool | UploadFile | list | dict):
            raise ValueError(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            number = int(value) if not isinstance(value, str) else int(value.strip())
        else:
            number = float(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise HttpError(400, f"{name}: expected {what}, got {value!r}", name) from None
    if kind is float and not np.isfinite(number):
        raise HttpError(400, f"{name}: must be finite, got {value!r}", name)
    if low is not None and (number <= low if low_open else number < low):
        raise HttpError(400, f"{name}={number} must be {'>' if low_open else '>='} {low}", name)
    if high is not None and number > high:
        raise HttpError(400, f"{name}={number} must be <= {high}", name)
    return number


def _bool(fields, name, default):
    value = fields.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise HttpError(400, f"{name}: expected true or false, got {value!r}", name)


def _string(fields, name, default=None, choices=None):
    value = fields.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HttpError(400, f"{name}: expected a string, got {type(value).__name__}", name)
    if choices is not None and value not in choices:
        raise HttpError(400, f"{name}: {value!r} is not one of {', '.join(choices)}", name)
    return value


def _sampling(fields, task: str, sampling) -> dict[str, Any]:
    """Request keywords (params, seed, max_new_tokens) from the sampling fields."""
    base = SamplingParams.from_config(sampling[task])
    params = SamplingParams(
        temperature=_number(fields, "temperature", float, base.temperature, low=0.0),
        top_k=_number(fields, "top_k", int, base.top_k, low=0),
        top_p=_number(fields, "top_p", float, base.top_p, low=0.0, high=1.0, low_open=True),
        repetition_penalty=_number(
            fields, "repetition_penalty", float, base.repetition_penalty, low=0.0, low_open=True
        ),  # fmt: skip
    )
    check_params(params, "request")  # the ranges above are its own
    return {
        "params": params,
        "seed": _number(fields, "seed", int, 0, low=0, high=(1 << 32) - 1),
        "max_new_tokens": _number(fields, "max_new_tokens", int, None, low=1),
    }


class _Uploads:
    """Uploaded audio written to temporary files for `load_audio` (which reads paths)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.paths: list[str] = []

    async def path(self, value: Any, field: str, *, base64_text: bool = False) -> str:
        if base64_text:
            if not isinstance(value, str):
                raise HttpError(400, f"{field}: expected base64 text of an audio file", field)
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise HttpError(400, f"{field}: not valid base64", field) from None
        elif isinstance(value, UploadFile):
            data = await value.read(self.max_bytes + 1)
        else:
            raise HttpError(400, f"{field}: expected an audio file upload", field)
        if len(data) > self.max_bytes:
            raise HttpError(413, f"{field}: over the upload limit of {self.max_bytes} bytes", field)
        if not data:
            raise HttpError(400, f"{field}: empty file (0 bytes)", field)
        handle, path = tempfile.mkstemp(prefix="gpa_serve_", suffix=".audio")
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        self.paths.append(path)
        return path

    def close(self) -> None:
        for path in self.paths:
            with contextlib.suppress(OSError):
                os.remove(path)


def _audio_error(field: str, error: audio_io.AudioError, path: str) -> HttpError:
    """The reason, with the upload's temporary path named by its field."""
    return HttpError(400, f"{field}: {error.reason.replace(path, field)}", field)


async def _reference(fields, uploads: _Uploads, models: ServeModels) -> np.ndarray:
    """The voice to clone: a named voice, base64 reference_audio, or a reference file."""
    given = [
        f for f in ("voice", "reference_audio", "reference") if fields.get(f) not in (None, "")
    ]
    if len(given) != 1:
        names = ", ".join(sorted(models.voices)) or "none on this server"
        raise HttpError(400, f"voice: give exactly one of voice (a voice name: {names}), "
                             "reference_audio (base64 audio) or a reference file upload",
                        given[1] if len(given) > 1 else "voice")  # fmt: skip
    field = given[0]
    if field == "voice":
        name = _string(fields, "voice")
        if name not in models.voices:
            names = ", ".join(sorted(models.voices)) or "none (send reference_audio)"
            raise HttpError(400, f"voice: unknown voice {name!r}; voices: {names}", "voice")
        return models.voices[name]
    path = await uploads.path(fields[field], field, base64_text=field == "reference_audio")
    allow = _bool(fields, "allow_short_reference", False)
    try:
        return await run_in_threadpool(
            models.limits.load_reference, path, field, allow_short=allow, name=field,
            hint="; send a longer clip, or allow_short_reference=true",
        )  # fmt: skip
    except InputError as error:
        raise HttpError(400, str(error), field) from None
    except audio_io.AudioError as error:
        raise _audio_error(field, error, path) from None


async def _source(fields, uploads: _Uploads, models: ServeModels, task: str, reference=None):
    if fields.get("file") in (None, ""):
        what = {"asr": "transcribe", "vc": "convert", "se": "enhance"}[task]
        raise HttpError(400, f"file: the speech to {what} is required (a multipart file upload)", "file")
    path = await uploads.path(fields["file"], "file")
    try:
        return await run_in_threadpool(models.limits.load_source, path, "file", task,
                                       reference_wav=reference, name="file")  # fmt: skip
    except InputError as error:
        raise HttpError(400, str(error), "file") from None
    except audio_io.AudioError as error:
        raise _audio_error("file", error, path) from None


def _audio_format(fields) -> tuple[str, bool]:
    fmt = _string(fields, "response_format", "wav", AUDIO_FORMATS)
    stream = _bool(fields, "stream", True)
    _string(fields, "stream_format", "audio", ("audio",))
    speed = _number(fields, "speed", float, 1.0)
    if speed != 1.0:
        raise HttpError(400, f"speed={speed}: only 1.0 is supported", "speed")
    return fmt, stream


def wav_header(sample_rate: int, num_samples: int | None = None) -> bytes:
    """A 16-bit mono PCM WAV header; num_samples None: unknown length (streaming; the
    sizes are the 0xFFFFFFFF players read as 'until the end')."""
    data = 0xFFFFFFFF if num_samples is None else 2 * int(num_samples)
    riff = 0xFFFFFFFF if num_samples is None else 36 + data
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", data))  # fmt: skip


def pcm16(wav: np.ndarray) -> bytes:
    return audio_io.float_to_int16(np.asarray(wav, np.float32)).astype("<i2").tobytes()


# --- the app ---------------------------------------------------------------------------------


def create_app(models: ServeModels, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app (module docstring); `app.state.server` is its `Server`."""
    server = Server(models, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(server.start)  # warm-up compiles before the first request
        yield
        await run_in_threadpool(server.stop)  # every request taken is finished first

    app = FastAPI(title="gpa_jax speech server", lifespan=lifespan)
    app.state.server = server
    rate = int(models.codec.sample_rate)
    limit = server.settings.max_upload_bytes

    async def run_job(endpoint: str, request: HttpRequest, task: str) -> Response:
        refused = server.refusal()
        if refused is not None:
            server.metrics.answered(endpoint, 503)
            return refused
        server.in_flight += 1
        t0 = time.perf_counter()
        uploads = _Uploads(limit)
        job = None
        streaming = False
        try:
            fields = await _read_fields(request, limit)
            inputs, fmt, stream = await _parse(fields, task, uploads, models)
            job = Job(task, inputs, stream, asyncio.get_running_loop(), asyncio.Queue(), t0)
            server.worker.submit(job)
            await _next_reply(job)  # "accepted", or the worker's reason why not
            if task == "asr":
                reply = await _next_reply(job)
                server.metrics.answered(endpoint, 200)
                server.metrics.observe("gpa_request_seconds", time.perf_counter() - t0)
                return _transcription(reply.result, fmt, len(inputs["source_wav"]) / rate)
            if not stream:
                wav = [w async for w in _audio_pieces(job)]
                data = pcm16(np.concatenate(wav) if wav else np.zeros(0, np.float32))
                server.metrics.answered(endpoint, 200)
                server.metrics.observe("gpa_request_seconds", time.perf_counter() - t0)
                if fmt == "wav":
                    data = wav_header(rate, len(data) // 2) + data
                return Response(
                    data, media_type=f"audio/{fmt}", headers={"X-Sample-Rate": str(rate)}
                )
            streaming = True  # from here the response owns the job
            return _AudioStream(server, job, fmt, endpoint, rate)
        except HttpError as error:
            server.metrics.answered(endpoint, error.status)
            retry = (
                {"Retry-After": str(server.settings.retry_after_s)} if error.status == 503 else None
            )
            return error_response(error.status, error.message, error.param, retry)
        finally:
            uploads.close()
            if not streaming:
                server.release(job)

    @app.post("/v1/audio/speech")
    async def speech(request: HttpRequest) -> Response:
        return await run_job("speech", request, "tts")

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: HttpRequest) -> Response:
        return await run_job("transcriptions", request, "asr")

    @app.post("/v1/audio/voice_conversion")
    async def voice_conversion(request: HttpRequest) -> Response:
        return await run_job("voice_conversion", request, "vc")

    @app.post("/v1/audio/enhancement")
    async def enhancement(request: HttpRequest) -> Response:
        return await run_job("enhancement", request, "se")

    @app.get("/health")
    async def health() -> JSONResponse:
        engine = server.worker.engine
        body = {"status": "draining" if server.draining else "ok" if server.ready else "starting",
                "slots": engine.slots, "active": engine.active, "queued": server.worker.queued,
                "in_flight": server.in_flight, "capacity": server.capacity}  # fmt: skip
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            server.metrics.render(server), media_type="text/plain; version=0.0.4"
        )

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": models.name, "object": "model", "owned_by": "gpa_jax"}]})  # fmt: skip

    return app


async def _parse(fields, task: str, uploads: _Uploads, models: ServeModels):
    """(RequestBuilder keywords, response format, stream) of a request's fields; HttpError
    naming the first bad field."""
    _check_known(fields, task)
    _string(fields, "model")
    inputs: dict[str, Any] = _sampling(fields, task, models.sampler.sampling)
    inputs["id"] = f"{task}-{next(_SERIALS)}"
    fmt, stream = None, False
    if task == "tts":
        text = _string(fields, "input")
        if not text or not text.strip():
            raise HttpError(400, "input: the text to speak is required", "input")
        inputs["text"] = text
    if task in ("tts", "vc", "se"):
        fmt, stream = _audio_format(fields)
    if task in ("tts", "vc"):
        inputs["reference_wav"] = await _reference(fields, uploads, models)
    if task in ("asr", "vc", "se"):
        inputs["source_wav"] = await _source(fields, uploads, models, task,
                                             inputs.get("reference_wav"))  # fmt: skip
    if task == "asr":
        fmt = _string(fields, "response_format", "json", TEXT_FORMATS)
        _string(fields, "language")
        _string(fields, "prompt")
    return inputs, fmt, stream


_SERIALS = itertools.count()


async def _next_reply(job: Job) -> Reply:
    """The worker's next reply; an error reply is raised as HttpError."""
    reply = await job.replies.get()
    if reply.kind == "error" or reply.final:
        job.finished = True
    if reply.kind == "error":
        raise HttpError(reply.status, reply.message, reply.param)
    return reply


async def _audio_pieces(job: Job) -> AsyncIterator[np.ndarray]:
    while not job.finished:
        reply = await _next_reply(job)
        if len(reply.wav):
            yield reply.wav


def _transcription(result, fmt: str, seconds: float) -> Response:
    if fmt == "text":
        return PlainTextResponse(result.text)
    if fmt == "verbose_json":
        return JSONResponse({"task": "transcribe", "language": "english", "duration": seconds,
                             "text": result.text, "stop": result.stop})  # fmt: skip
    return JSONResponse({"text": result.text})


class _AudioStream(StreamingResponse):
    """A job's audio chunks as they come (after a WAV header of unknown length). However
    the response ends (last chunk, an error, the client leaving), the job is released."""

    def __init__(self, server: Server, job: Job, fmt: str, endpoint: str, rate: int):
        self.server, self.job, self.endpoint = server, job, endpoint
        self.header = wav_header(rate) if fmt == "wav" else b""
        super().__init__(self._body(), media_type=f"audio/{fmt}",
                         headers={"X-Sample-Rate": str(rate)})  # fmt: skip

    async def _body(self) -> AsyncIterator[bytes]:
        metrics, job = self.server.metrics, self.job
        if self.header:
            yield self.header
        first = True
        try:
            async for wav in _audio_pieces(job):
                if first:
                    metrics.observe(
                        "gpa_time_to_first_audio_seconds", time.perf_counter() - job.received_s
                    )
                    first = False
                yield pcm16(wav)
        except HttpError as error:  # the status went out with the headers: end the stream
            logging.warning("request %s failed mid-stream: %s", job.inputs["id"], error.message)
            metrics.answered(self.endpoint, error.status)
            return
        metrics.answered(self.endpoint, 200)
        metrics.observe("gpa_request_seconds", time.perf_counter() - job.received_s)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.server.release(self.job)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, server: Server):
        super().__init__(config)
        self.gpa_server = server

    def handle_exit(self, sig, frame) -> None:
        self.gpa_server.drain()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            # uvicorn re-raises the signal once it has shut down; a drained shutdown is
            # the normal end of a server, so the process exits 0 instead.
            getattr(self, "_captured_signals", []).clear()


def uvicorn_server(app: FastAPI, **config: Any) -> uvicorn.Server:
    """uvicorn's Server for `app` (`config`: uvicorn.Config's keywords). On SIGTERM /
    SIGINT the app first refuses new requests (503) while uvicorn finishes the open ones;
    then the app's lifespan ends, which waits for the worker to finish what it took."""
    return _DrainingServer(uvicorn.Config(app, **config), app.state.server)
