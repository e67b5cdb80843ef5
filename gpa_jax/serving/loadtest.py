"""Load test of the speech server: mixed TTS / ASR / VC requests over HTTP, closed-loop at
a concurrency or open-loop at a Poisson rate, and what the served outputs are worth.

    utts = utterances_from_workdir(W, split="test")
    requests = make_requests(utts, 64, mix={"tts": 2, "asr": 1, "vc": 1}, seed=0)
    base = asyncio.run(closed_loop(url, requests, concurrency=1))       # one by one
    run = asyncio.run(closed_loop(url, requests, concurrency=16))
    row = {**summarize(run), **compare(run, base, judge)}

Requests: request i's task, utterances and sampling seed come from a generator seeded with
(seed, i) alone, so the same i is the same request (same HTTP body) at every concurrency,
in every mode and for every count; the server's draws depend only on that seed (the
engine's fold_in(key(seed), step)), never on what else is in the batch. TTS speaks an
utterance's transcript in another utterance's voice (sent as reference_audio); ASR
transcribes an utterance; VC says an utterance's words in another one's voice. TTS / VC
ask for 16-bit PCM, streamed.

Drivers (asyncio + httpx, one connection per request in flight):
- closed loop: `concurrency` clients, each sends its next request when its last one is
  answered in full; nothing new is sent after `max_seconds`.
- open loop: request i is sent at `poisson_schedule(rate, n, seed)[i]` seconds whatever is
  still running (exponential gaps, a fixed schedule per seed); a server past its capacity
  answers 503, which is counted, not retried.

Metrics (`summarize`): per request, time to first chunk (TTFC: from sending to the first
audio bytes), RTF (from sending to the last byte, over the seconds of audio) and latency
(ASR: to its whole answer), as p50 / p95 (linear interpolation, numpy's default); requests
answered per second of the run's wall time (first send to last answer).

Quality (`compare`): against the same requests served one by one (a closed loop at
concurrency 1): the share of outputs equal to the one-by-one output (ASR text; TTS / VC
PCM bytes), ASR WER (`asr_metrics.error_rates`) and TTS / VC judge WER (the judge's
transcript of the audio, `asr_metrics.judge_wer_report`) of both on the requests both
answered, so a degradation under load shows as a gap between the two.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpa_jax.errors import UserError

TASKS = ("tts", "asr", "vc")
PATHS = {
    "tts": "/v1/audio/speech",
    "asr": "/v1/audio/transcriptions",
    "vc": "/v1/audio/voice_conversion",
}
PCM_BYTES = 2  # 16-bit samples


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    wav: np.ndarray  # float32 mono at `rate`
    speaker: str = ""
    rate: int = 16000

    @property
    def seconds(self) -> float:
        return len(self.wav) / self.rate


def utterances_from_workdir(workdir: str, split: str, *, limit: int | None = 200,
                            codec_config: Any = None) -> list[Utterance]:  # fmt: skip
    """Recordings and transcripts of `split` of the corpus the LM in `workdir` trained on
    (its config's tasks.corpus, read from <workdir>/tfds)."""
    import os

    from gpa_jax import config_utils, paths
    from gpa_jax.acoustic import recipe
    from gpa_jax.codec import data as codec_data
    from gpa_jax.sampling import config_from_checkpoint
    from gpa_jax.training import checkpoint as ckpt_lib

    lm_config = config_from_checkpoint(ckpt_lib.checkpoint_dir(workdir))
    if codec_config is None:
        codec_config = config_utils.load_config(
            os.path.join(recipe.REPO, "configs", "codec_tiny.py")
        )
    rate = int(codec_config.codec.sample_rate)
    corpus = lm_config.tasks.corpus
    try:
        clips = codec_data.load_clips(corpus, split, data_dir=paths.tfds_dir(workdir),
                                      sample_rate=rate, limit=limit)  # fmt: skip
    except Exception as error:  # noqa: BLE001 - TFDS says a missing split many ways
        raise UserError(f"cannot read split {split!r} of {corpus} under "
                        f"{paths.tfds_dir(workdir)}: {type(error).__name__}: {error}") from None  # fmt: skip
    utts = [Utterance(i, t, w, s, rate) for i, t, w, s
            in zip(clips.ids, clips.texts, clips.audio, clips.speakers, strict=True) if t.strip()]  # fmt: skip
    if not utts:
        raise UserError(f"split {split!r} of {corpus} has no transcribed recordings")
    return utts


def parse_mix(text: str) -> dict[str, float]:
    """'tts:2,asr:1,vc:1' -> {task: weight}; a bare task name weighs 1."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        task, _, weight = part.partition(":")
        if task not in TASKS:
            raise UserError(f"mix: unknown task {task!r} in {text!r}; tasks: {', '.join(TASKS)}")
        try:
            mix[task] = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"mix: weight {weight!r} of {task} is not a number") from None
        if mix[task] < 0:
            raise UserError(f"mix: weight of {task} is negative")
    if not mix or sum(mix.values()) <= 0:
        raise UserError(f"mix {text!r}: give at least one task with a positive weight")
    return mix


@dataclasses.dataclass(frozen=True)
class LoadRequest:
    """One request of the load: what to send and what it should say."""

    index: int
    task: str
    seed: int  # the server's sampling seed
    expected: str  # the words the output should carry (TTS: its input; ASR / VC: the source's)
    text: str | None = None  # TTS input
    source: Utterance | None = None  # ASR / VC
    reference: Utterance | None = None  # TTS / VC voice
    max_new_tokens: int | None = None

    def http(self) -> tuple[str, dict[str, Any]]:
        """(path, httpx keywords) of the request."""
        common = {"seed": self.seed}
        if self.max_new_tokens is not None:
            common["max_new_tokens"] = self.max_new_tokens
        if self.task == "tts":
            body = {"input": self.text, "reference_audio": base64.b64encode(
                wav_bytes(self.reference)).decode(), "response_format": "pcm", "stream": True, **common}  # fmt: skip
            return PATHS["tts"], {"json": body}
        files = {"file": ("source.wav", wav_bytes(self.source), "audio/wav")}
        data = {k: str(v) for k, v in common.items()}
        if self.task == "vc":
            files["reference"] = ("reference.wav", wav_bytes(self.reference), "audio/wav")
            data.update(response_format="pcm", stream="true")
        else:
            data["response_format"] = "json"
        return PATHS[self.task], {"files": files, "data": data}


_WAV_CACHE: dict[tuple[str, int], bytes] = {}


def wav_bytes(utt: Utterance) -> bytes:
    """16-bit WAV file of an utterance (encoded once per process)."""
    key = (utt.id, len(utt.wav))
    if key not in _WAV_CACHE:
        import soundfile as sf

        out = io.BytesIO()
        sf.write(out, utt.wav, utt.rate, format="WAV", subtype="PCM_16")
        _WAV_CACHE[key] = out.getvalue()
    return _WAV_CACHE[key]


def make_requests(utts: Sequence[Utterance], n: int, *, mix: dict[str, float], seed: int = 0,
                  max_new_tokens: int | None = None, max_source_s: float | None = None,
                  min_reference_s: float = 0.0) -> list[LoadRequest]:  # fmt: skip
    """n requests (module docstring): request i depends on (seed, i) and the utterances
    only. Sources are drawn from utterances of at most max_source_s (the longest the LM
    takes), references from those of at least min_reference_s, of another utterance and,
    where the split has one, another speaker."""
    tasks = [t for t in TASKS if mix.get(t, 0) > 0]
    weights = np.array([mix[t] for t in tasks], np.float64)
    sources = [u for u in utts if max_source_s is None or u.seconds <= max_source_s]
    references = [u for u in utts if u.seconds >= min_reference_s]
    if any(t in tasks for t in ("asr", "vc")) and not sources:
        raise UserError(f"no utterance of the split is within the LM's {max_source_s:.2f} s "
                        "source limit for asr / vc")  # fmt: skip
    if any(t in tasks for t in ("tts", "vc")) and not references:
        raise UserError(f"no utterance of the split is the {min_reference_s:.2f} s a reference needs")
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        task = tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))]
        pool = utts if task == "tts" else sources
        target = pool[int(rng.integers(len(pool)))]
        reference = None
        if task in ("tts", "vc"):
            others = [u for u in references if u.speaker != target.speaker] or [
                u for u in references if u.id != target.id] or list(references)  # fmt: skip
            reference = others[int(rng.integers(len(others)))]
        request_seed = int(rng.integers(1 << 31))
        out.append(LoadRequest(
            i, task, request_seed, target.text, text=target.text if task == "tts" else None,
            source=None if task == "tts" else target, reference=reference,
            max_new_tokens=max_new_tokens,
        ))  # fmt: skip
    return out


def poisson_schedule(rate: float, n: int, seed: int = 0) -> np.ndarray:
    """Send times (seconds from the start) of n requests arriving as a Poisson process of
    `rate` per second: exponential gaps, the first request at 0."""
    if rate <= 0:
        raise ValueError(f"Poisson rate must be > 0, got {rate}")
    gaps = np.random.default_rng([seed, 0x9015]).exponential(1.0 / rate, max(n - 1, 0))
    return np.concatenate([[0.0], np.cumsum(gaps)])[:n]


@dataclasses.dataclass
class Outcome:
    """What one request got; times in seconds from the run's start."""

    index: int
    task: str
    sent_s: float
    status: int = 0  # HTTP status; 0: no answer (connection error, timeout)
    error: str = ""
    first_s: float | None = None  # first audio bytes (TTS / VC)
    done_s: float | None = None
    pcm: bytes = b""
    text: str | None = None
    sample_rate: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def audio_s(self) -> float:
        return len(self.pcm) / PCM_BYTES / self.sample_rate if self.sample_rate else 0.0

    @property
    def latency_s(self) -> float | None:
        return None if self.done_s is None else self.done_s - self.sent_s

    @property
    def ttfc_s(self) -> float | None:
        return None if self.first_s is None else self.first_s - self.sent_s

    @property
    def rtf(self) -> float | None:
        if not self.ok or self.audio_s <= 0:
            return None
        return self.latency_s / self.audio_s


@dataclasses.dataclass
class Run:
    mode: str  # closed | poisson
    outcomes: list[Outcome]
    wall_s: float
    requested: int  # requests the run was given (some may be unsent past max_seconds)
    concurrency: int | None = None
    rate: float | None = None


async def send(client, request: LoadRequest, t0: float) -> Outcome:
    """Sends one request and reads its answer in full (the stream as it comes)."""
    import httpx

    path, kwargs = request.http()
    out = Outcome(request.index, request.task, time.perf_counter() - t0)
    try:
        async with client.stream("POST", path, **kwargs) as response:
            out.status = response.status_code
            pieces = []
            async for piece in response.aiter_raw():
                if piece and out.first_s is None:
                    out.first_s = time.perf_counter() - t0
                pieces.append(piece)
            out.done_s = time.perf_counter() - t0
            body = b"".join(pieces)
        if out.status != 200:
            out.error = _error_message(body)
        elif request.task == "asr":
            out.text = _json(body).get("text", "")
            out.first_s = None  # not streamed: its latency is the figure
        else:
            out.pcm, out.sample_rate = body, int(response.headers.get("x-sample-rate", 0))
            if len(body) % PCM_BYTES:
                out.error = f"odd PCM length {len(body)} (stream cut short?)"
    except httpx.HTTPError as error:
        out.done_s = time.perf_counter() - t0
        out.error = f"{type(error).__name__}: {error}"
    return out


def _json(body: bytes) -> dict:
    import json

    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_message(body: bytes) -> str:
    error = _json(body).get("error")
    if isinstance(error, dict):
        return str(error.get("message", ""))[:300]
    return body[:300].decode("utf-8", "replace")


def _client(base_url: str, timeout_s: float, connections: int):
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    # A streamed answer may pause for long under load: the timeout bounds each read.
    return httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits)


async def closed_loop(base_url: str, requests: Sequence[LoadRequest], concurrency: int, *,
                      max_seconds: float | None = None, timeout_s: float = 600.0) -> Run:  # fmt: skip
    """`concurrency` clients sending `requests` in order, each its next one when the last is
    answered; after max_seconds no client sends another (each sends at least one)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    queue = iter(requests)
    outcomes: list[Outcome] = []
    async with _client(base_url, timeout_s, concurrency) as client:
        t0 = time.perf_counter()

        async def worker() -> None:
            for request in queue:  # one shared iterator: each request is taken once
                outcomes.append(await send(client, request, t0))
                if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                    return

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return Run("closed", sorted(outcomes, key=lambda o: o.index), wall, len(requests),
               concurrency=concurrency)  # fmt: skip


async def open_loop(base_url: str, requests: Sequence[LoadRequest], rate: float, *, seed: int = 0,
                    max_seconds: float | None = None, timeout_s: float = 600.0,
                    max_connections: int = 1000) -> Run:  # fmt: skip
    """Request i sent at poisson_schedule(rate, n, seed)[i] seconds, whatever is running;
    none is sent after max_seconds."""
    schedule = poisson_schedule(rate, len(requests), seed)
    async with _client(base_url, timeout_s, max_connections) as client:
        t0 = time.perf_counter()
        tasks = []
        for at, request in zip(schedule, requests, strict=True):
            if max_seconds is not None and at > max_seconds:
                break
            delay = at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(client, request, t0)))
        outcomes = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - t0
    return Run("poisson", outcomes, wall, len(requests), rate=rate)


# --- figures ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation between order statistics); None if empty."""
    values = [v for v in values if v is not None]
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def summarize(run: Run) -> dict[str, Any]:
    """Counts and timing figures of a run (module docstring), JSON-able."""
    ok = [o for o in run.outcomes if o.ok]
    statuses: dict[str, int] = {}
    for o in run.outcomes:
        if not o.ok:
            key = str(o.status) if o.status else "no_answer"
            statuses[key] = statuses.get(key, 0) + 1
    out: dict[str, Any] = {
        "mode": run.mode, "concurrency": run.concurrency, "rate": run.rate,
        "requested": run.requested, "sent": len(run.outcomes), "ok": len(ok),
        "failed": statuses, "wall_s": _round(run.wall_s, 3),
        "requests_per_s": _round(len(ok) / run.wall_s if run.wall_s > 0 else None),
        "first_error": next((o.error for o in run.outcomes if not o.ok), None),
    }  # fmt: skip
    for task in TASKS:
        done = [o for o in ok if o.task == task]
        entry: dict[str, Any] = {"ok": len(done)}
        if task == "asr":
            lat = [o.latency_s for o in done]
            entry.update(latency_s_p50=_round(percentile(lat, 50)),
                         latency_s_p95=_round(percentile(lat, 95)))  # fmt: skip
        else:
            ttfc, rtf = [o.ttfc_s for o in done], [o.rtf for o in done]
            entry.update(
                ttfc_s_p50=_round(percentile(ttfc, 50)), ttfc_s_p95=_round(percentile(ttfc, 95)),
                rtf_p50=_round(percentile(rtf, 50)), rtf_p95=_round(percentile(rtf, 95)),
                audio_s_mean=_round(np.mean([o.audio_s for o in done]) if done else None, 3),
            )  # fmt: skip
        out[task] = entry
    return out


class JudgeCache:
    """A judge's transcripts by audio content: an output equal to one judged before (the
    same request served one by one and under load) is transcribed once."""

    def __init__(self, judge):
        self.judge = judge
        self._texts: dict[str, str] = {}

    def transcribe(self, outcomes: Sequence[Outcome]) -> list[str]:
        keys = [hashlib.sha256(o.pcm).hexdigest() for o in outcomes]
        todo = {k: o for k, o in zip(keys, outcomes, strict=True) if k not in self._texts}
        if todo:
            wavs = [np.frombuffer(o.pcm, "<i2").astype(np.float32) / 32768.0 for o in todo.values()]
            rate = next(iter(todo.values())).sample_rate
            self._texts.update(zip(todo, self.judge.transcribe(wavs, rate), strict=True))
        return [self._texts[k] for k in keys]


def _pcm_diff(a: bytes, b: bytes) -> float:
    """Largest sample difference of two 16-bit PCM answers (in LSB; inf: other lengths)."""
    if len(a) != len(b):
        return float("inf")
    if not a:
        return 0
    return int(np.abs(np.frombuffer(a, "<i2").astype(np.int32) - np.frombuffer(b, "<i2")).max())


# Audio of the same tokens can differ by float rounding: the acoustic stage and codec run
# the windows of every request due together as one batch, and other batch shapes round
# differently (measured: 1 LSB). Other tokens change the audio by far more.
AUDIO_ATOL_LSB = 4


def compare(run: Run, baseline: Run, requests: Sequence[LoadRequest],
            judge: JudgeCache | None = None, audio_atol: int = AUDIO_ATOL_LSB) -> dict[str, Any]:  # fmt: skip
    """Quality of `run`'s outputs next to the same requests served one by one (`baseline`),
    on the requests both answered (module docstring); judge None: no judge WER. An output
    is equal to its one-by-one output when the text is, and the audio has as many samples
    none more than `audio_atol` LSB apart (`bit_equal` counts the identical ones)."""
    from gpa_jax.evaluation import asr_metrics

    mine = {o.index: o for o in run.outcomes if o.ok}
    base = {o.index: o for o in baseline.outcomes if o.ok}
    both = sorted(set(mine) & set(base))
    diffs = {i: _pcm_diff(mine[i].pcm, base[i].pcm) for i in both if mine[i].task != "asr"}
    equal = [i for i in both if mine[i].text == base[i].text and diffs.get(i, 0) <= audio_atol]
    exact = [i for i in both if (mine[i].text, mine[i].pcm) == (base[i].text, base[i].pcm)]
    out: dict[str, Any] = {
        "compared": len(both), "equal_one_by_one": len(equal), "bit_equal": len(exact),
        "equal_fraction": _round(len(equal) / len(both)) if both else None,
        "audio_max_diff_lsb": max(diffs.values(), default=None), "audio_atol_lsb": audio_atol,
    }  # fmt: skip
    expected = {r.index: r.expected for r in requests}
    asr = [i for i in both if mine[i].task == "asr"]
    if asr:
        refs = [expected[i] for i in asr]
        out["asr_wer"] = _round(asr_metrics.error_rates(refs, [mine[i].text for i in asr]).wer)
        out["asr_wer_one_by_one"] = _round(
            asr_metrics.error_rates(refs, [base[i].text for i in asr]).wer
        )
    for task in ("tts", "vc"):
        rows = [i for i in both if mine[i].task == task and mine[i].pcm and base[i].pcm]
        if judge is None or not rows:
            continue
        refs = [expected[i] for i in rows]
        served = judge.transcribe([mine[i] for i in rows])
        alone = judge.transcribe([base[i] for i in rows])
        out[f"{task}_judge_wer"] = _round(asr_metrics.judge_wer_report(refs, served)["corpus_wer"])
        out[f"{task}_judge_wer_one_by_one"] = _round(
            asr_metrics.judge_wer_report(refs, alone)["corpus_wer"]
        )
    return out


# --- concurrency levels and GPA's table ----------------------------------------------------

DEFAULT_LEVELS = (1, 4, 16, 64)
GPU_LEVEL = 160  # GPA's largest published concurrency


def parse_levels(values: list[str], gpu: bool) -> list[int]:
    """The closed-loop levels: the flag's, else the defaults (160 added on a GPU)."""
    if not values:
        return [*DEFAULT_LEVELS, *((GPU_LEVEL,) if gpu else ())]
    levels = []
    for value in values:
        try:
            level = int(value)
        except ValueError:
            level = 0
        if level < 1:
            raise UserError(f"--concurrency: {value!r} is not a positive integer")
        levels.append(level)
    return sorted(set(levels))


def _cell(value: Any, scale: float = 1.0, digits: int = 3) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def _pair(row: dict, key: str) -> str:
    """'served (one by one)' of a quality figure."""
    if row.get(key) is None:
        return "–"
    return f"{row[key]:.3f} ({row[key + '_one_by_one']:.3f})"


TABLE_COLUMNS = ("Concurrency", "Requests ok", "TTS RTF p50", "TTS RTF p95",
                 "TTS first chunk p50 (ms)", "TTS first chunk p95 (ms)", "TTS audio (s)",
                 "VC RTF p50", "ASR latency p50 (ms)", "req/s", "ASR WER (alone)",
                 "TTS judge-WER (alone)", "VC judge-WER (alone)", "= one by one")  # fmt: skip


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """GPA's serving table (concurrency | TTS RTF | first chunk | ...), one line per run:
    p50 / p95 over its requests, req/s over its wall time; quality figures as 'served
    (the same requests one by one)'."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        tts, vc, asr = row["tts"], row["vc"], row["asr"]
        label = (str(row["concurrency"]) if row["mode"] == "closed"
                 else f"Poisson {row['rate']:.3g}/s")  # fmt: skip
        equal = "–" if row.get("equal_fraction") is None else (
            f"{row['equal_one_by_one']}/{row['compared']}")  # fmt: skip
        cells = [
            label, f"{row['ok']}/{row['sent']}", _cell(tts["rtf_p50"]), _cell(tts["rtf_p95"]),
            _cell(tts["ttfc_s_p50"], 1000, 0), _cell(tts["ttfc_s_p95"], 1000, 0),
            _cell(tts["audio_s_mean"], digits=2), _cell(vc["rtf_p50"]),
            _cell(asr["latency_s_p50"], 1000, 0), _cell(row["requests_per_s"]),
            _pair(row, "asr_wer"), _pair(row, "tts_judge_wer"), _pair(row, "vc_judge_wer"), equal,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
