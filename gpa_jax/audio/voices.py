"""The synthetic corpus' speakers: Debian's espeak-ng and flite voices, run as subprocesses.

Why these engines: both are packaged by Debian (`apt-get install espeak-ng flite`), run
on a CPU in milliseconds, are deterministic, and need no downloads, so a multi-speaker
corpus can be built anywhere. Flite's four 16 kHz voices (kal16, slt, rms, awb) sound the
most natural and always stay in training; espeak-ng adds accents (American, British, RP,
Scottish, Lancastrian, Caribbean, New York) with its voice variants and distinct speed and
pitch. Two espeak voices (one female, one male) are held out for the unseen-voice test.

`synthesize` returns float32 mono at 16 kHz, trimmed of leading/trailing silence and
validated; every failure is a `SynthesisError` naming voice, text and a short reason code,
so a corpus build can count failures by reason and carry on.

The corpus builder (`data/synthetic_speech`) and the open-text evaluation
(`gpa_jax.evaluation.open_text`, which speaks new sentences in the corpus voices) both
use it, so it lives in the library's audio layer.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import tempfile
from typing import Literal

import numpy as np
import soundfile as sf

from gpa_jax.audio.io import AudioError, check_waveform, float_to_int16, resample

SAMPLE_RATE = 16000
INSTALL_HINT = "apt-get install espeak-ng flite"
ENGINE_BINARIES = {"flite": "flite", "espeak-ng": "espeak-ng"}

# Reason codes carried by SynthesisError (the corpus report counts them).
REASONS = (
    "missing_binary",
    "unknown_voice",
    "engine_failed",
    "engine_timeout",
    "empty_output",
    "corrupt_output",
    "silent",
    "too_short",
    "too_long",
)

Engine = Literal["flite", "espeak-ng"]
Gender = Literal["female", "male"]


class SynthesisError(RuntimeError):
    """A voice could not render a text; `reason` is one of REASONS.

    All fields live in `args`, so the error pickles across worker processes.
    """

    def __init__(self, speaker: str, text: str, reason: str, detail: str) -> None:
        super().__init__(speaker, text, reason, detail)
        self.speaker = speaker
        self.text = text
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        text = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"voice {self.speaker}: {self.reason}: {self.detail} (text: {text!r})"


@dataclasses.dataclass(frozen=True)
class Voice:
    """One speaker: an engine plus the arguments that make its voice.

    For flite, `name` is a built-in voice (`flite -lv`). For espeak-ng, `name` is a
    language/accent voice (`espeak-ng --voices=en`), `variant` a voice variant
    (`espeak-ng --voices=variant`, e.g. "f3"), `speed` in words per minute and `pitch`
    in 0..99 (espeak's default is 175 wpm, pitch 50).
    """

    speaker: str
    engine: Engine
    name: str
    gender: Gender
    variant: str | None = None
    speed: int | None = None
    pitch: int | None = None
    held_out: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_BINARIES:
            raise ValueError(f"{self.speaker}: unknown engine {self.engine!r}")
        if self.gender not in ("female", "male"):
            raise ValueError(f"{self.speaker}: gender must be 'female' or 'male'")
        if self.engine == "flite" and (self.variant or self.speed or self.pitch):
            raise ValueError(f"{self.speaker}: flite voices take no variant/speed/pitch")
        if self.speed is not None and not 80 <= self.speed <= 450:
            raise ValueError(f"{self.speaker}: espeak speed {self.speed} outside 80..450 wpm")
        if self.pitch is not None and not 0 <= self.pitch <= 99:
            raise ValueError(f"{self.speaker}: espeak pitch {self.pitch} outside 0..99")

    def command(self, text_path: str, wav_path: str) -> list[str]:
        """The engine's command line, reading text from a file and writing a wav."""
        binary = ENGINE_BINARIES[self.engine]
        if self.engine == "flite":
            return [binary, "-voice", self.name, "-f", text_path, "-o", wav_path]
        voice = self.name + (f"+{self.variant}" if self.variant else "")
        cmd = [binary, "-v", voice, "-b", "1", "-w", wav_path]
        if self.speed is not None:
            cmd += ["-s", str(self.speed)]
        if self.pitch is not None:
            cmd += ["-p", str(self.pitch)]
        return cmd + ["-f", text_path]

    def metadata(self) -> dict[str, object]:
        """JSON-able description (stored in the dataset's metadata)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _espeak(
    accent: str, variant: str, gender: Gender, speed: int, pitch: int, held_out: bool = False
) -> Voice:
    return Voice(
        f"espeak_{accent}_{variant}",
        "espeak-ng",
        accent,
        gender,
        variant=variant,
        speed=speed,
        pitch=pitch,
        held_out=held_out,
    )


VOICES: tuple[Voice, ...] = (
    Voice("flite_slt", "flite", "slt", "female"),
    Voice("flite_kal16", "flite", "kal16", "male"),
    Voice("flite_rms", "flite", "rms", "male"),
    Voice("flite_awb", "flite", "awb", "male"),
    _espeak("en-us", "f3", "female", speed=160, pitch=72),
    _espeak("en", "f2", "female", speed=170, pitch=55),  # "en" is British; "en-gb" ignores variants
    _espeak("en-gb-scotland", "f4", "female", speed=150, pitch=66),
    _espeak("en-029", "f5", "female", speed=165, pitch=40),
    _espeak("en-gb-x-rp", "f1", "female", speed=155, pitch=58),
    _espeak("en-us", "m3", "male", speed=170, pitch=40),
    _espeak("en-gb-x-rp", "m7", "male", speed=150, pitch=30),
    _espeak("en-029", "m4", "male", speed=158, pitch=36),
    # Held out: never in train/validation/test, only in test_unseen_voice.
    _espeak("en-gb-x-gbclan", "f2", "female", speed=175, pitch=64, held_out=True),
    _espeak("en-us-nyc", "m2", "male", speed=165, pitch=44, held_out=True),
)


def voice_by_speaker(speaker: str) -> Voice:
    """Looks a voice up by its speaker id."""
    for voice in VOICES:
        if voice.speaker == speaker:
            return voice
    raise KeyError(f"unknown speaker {speaker!r}; known: {[v.speaker for v in VOICES]}")


def seen_voices() -> list[Voice]:
    return [v for v in VOICES if not v.held_out]


def held_out_voices() -> list[Voice]:
    return [v for v in VOICES if v.held_out]


@functools.cache
def _available_voice_names(engine: str, binary: str) -> frozenset[str]:
    """Voice (flite) or variant (espeak-ng) names the installed engine knows; cached."""
    if engine == "flite":
        out = subprocess.run([binary, "-lv"], capture_output=True, text=True, timeout=30)
        return frozenset(out.stdout.split(":", 1)[-1].split())
    out = subprocess.run([binary, "--voices=variant"], capture_output=True, text=True, timeout=30)
    names = set()
    for line in out.stdout.splitlines()[1:]:
        for field in line.split():
            if field.startswith("!v/"):
                names.add(field[3:])
    return frozenset(names)


def _check_voice_available(voice: Voice, text: str) -> None:
    """Flite silently falls back for unknown voices and espeak for unknown variants."""
    if shutil.which(ENGINE_BINARIES[voice.engine]) is None:
        raise SynthesisError(
            voice.speaker,
            text,
            "missing_binary",
            f"{ENGINE_BINARIES[voice.engine]} not found on PATH; install with `{INSTALL_HINT}`",
        )
    wanted = voice.name if voice.engine == "flite" else voice.variant
    if wanted is not None and wanted not in _available_voice_names(
        voice.engine, ENGINE_BINARIES[voice.engine]
    ):
        kind = "voice" if voice.engine == "flite" else "variant"
        raise SynthesisError(
            voice.speaker, text, "unknown_voice", f"{voice.engine} has no {kind} {wanted!r}"
        )


def _run_engine(voice: Voice, text: str, workdir: str, timeout: float) -> str:
    text_path = os.path.join(workdir, "text.txt")
    wav_path = os.path.join(workdir, "out.wav")
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    cmd = voice.command(text_path, wav_path)
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise SynthesisError(
            voice.speaker,
            text,
            "missing_binary",
            f"{cmd[0]} not found; install with `{INSTALL_HINT}`",
        ) from e
    except subprocess.TimeoutExpired as e:
        raise SynthesisError(
            voice.speaker, text, "engine_timeout", f"{cmd[0]} ran over {timeout:g} s"
        ) from e
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip()[-300:]
        raise SynthesisError(
            voice.speaker,
            text,
            "engine_failed",
            f"{' '.join(cmd[:-2])} exited with {proc.returncode}: {stderr}",
        )
    if not os.path.exists(wav_path) or os.path.getsize(wav_path) <= 44:
        raise SynthesisError(
            voice.speaker, text, "empty_output", f"{cmd[0]} wrote no audio samples"
        )
    return wav_path


def _trim(
    wav: np.ndarray,
    sample_rate: int,
    top_db: float,
    margin_s: float,
    frame: int = 512,
    hop: int = 128,
) -> np.ndarray:
    """Cuts leading/trailing silence, keeping a short margin so onsets stay intact.

    Same rule as librosa.effects.trim (frames quieter than `top_db` below the loudest frame
    are silence), written in numpy because librosa's first trim call costs ~4 s of lazy
    imports in every worker process.
    """
    if wav.size < frame:
        return wav
    frames = np.lib.stride_tricks.sliding_window_view(wav, frame)[::hop]
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    peak = max(float(rms.max()), 1e-10)
    loud = np.flatnonzero(20.0 * np.log10(np.maximum(rms, 1e-10) / peak) > -top_db)
    if loud.size == 0:
        return wav[:0]
    margin = int(margin_s * sample_rate)
    start = max(0, int(loud[0]) * hop - margin)
    end = min(wav.size, int(loud[-1]) * hop + frame + margin)
    return wav[start:end]


def synthesize(
    voice: Voice,
    text: str,
    *,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float = 0.3,
    max_seconds: float = 30.0,
    silence_rms: float = 2e-3,
    top_db: float = 40.0,
    margin_s: float = 0.05,
    timeout_s: float = 60.0,
) -> np.ndarray:
    """Renders `text` in `voice` as float32 mono at `sample_rate`, silence trimmed.

    Raises SynthesisError (never AudioError) so callers handle one exception type.
    """
    if not text.strip():
        raise ValueError(f"voice {voice.speaker}: empty text")
    _check_voice_available(voice, text)
    with tempfile.TemporaryDirectory(prefix="synth_") as workdir:
        wav_path = _run_engine(voice, text, workdir, timeout_s)
        try:
            raw, engine_sr = sf.read(wav_path, dtype="float32", always_2d=False)
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            raise SynthesisError(
                voice.speaker, text, "corrupt_output", f"unreadable wav from {voice.engine}: {e}"
            ) from e
    name = f"{voice.speaker} output"
    try:
        raw = check_waveform(raw, engine_sr, name=name, max_seconds=1e9)
    except AudioError as e:
        raise SynthesisError(voice.speaker, text, "corrupt_output", str(e)) from e
    try:
        check_waveform(raw, engine_sr, name=name, max_seconds=1e9, silence_rms=silence_rms)
    except AudioError as e:
        raise SynthesisError(voice.speaker, text, "silent", str(e)) from e
    wav = np.clip(resample(raw, engine_sr, sample_rate), -1.0, 1.0)
    wav = _trim(wav, sample_rate, top_db, margin_s)
    try:
        return check_waveform(
            wav,
            sample_rate,
            name=name,
            max_seconds=max_seconds,
            min_seconds=min_seconds,
            silence_rms=silence_rms,
        )
    except AudioError as e:
        seconds = wav.size / sample_rate
        reason = (
            "too_long"
            if seconds > max_seconds
            else "too_short"
            if seconds < min_seconds
            else "silent"
        )
        raise SynthesisError(voice.speaker, text, reason, str(e)) from e


SynthesisResult = tuple[str, "np.ndarray | None", "str | None", "str | None"]


def synthesis_worker(task: tuple[str, Voice, str, float, float]) -> SynthesisResult:
    """Pool entry point: (uid, voice, text, min_s, max_s) -> (uid, int16 audio, reason, msg).

    Failures come back as values, not exceptions, so one bad utterance never stops a pool.
    Audio travels as int16 to halve what crosses the process boundary.
    """
    uid, voice, text, min_seconds, max_seconds = task
    try:
        wav = synthesize(voice, text, min_seconds=min_seconds, max_seconds=max_seconds)
    except SynthesisError as e:
        return uid, None, e.reason, str(e)
    return uid, float_to_int16(wav), None, None
