"""Streaming TTS/VC/SE: audio in chunks while the LM is still generating.

    for chunk in stream_audio(sampler, codec, [Request.tts("hello there", ref)]):
        play(chunk.wav)          # chunk.start: its first sample's offset in the utterance

The LM decodes RVQ-1 frames in chunks (`Decoder.stream`: one compiled while_loop per
chunk, the KV cache carried between them, the same tokens as one-shot decoding): the
first chunk has `chunk_frames` frames, each later one `chunk_growth` times the last, at
most `max_chunk_frames`. A small first chunk keeps the time to first audio short; the
later chunks play while the next is made, and larger ones cost fewer acoustic-stage and
codec passes (each pass re-reads the voice prompt and `context_frames` of left context).

After each decode chunk every row with new frames is synthesized (acoustic stage + codec
decoder, all rows of the batch at once) over a window that starts
`context_frames` before its new frames, so the non-causal acoustic stage and the codec's
convolutions see left context, and the window's audio is joined to what was emitted by a
`Crossfader`: each sample of the utterance is emitted exactly once, the last `overlap`
samples of a window are held back and crossfaded with the next window's decode of the
same span. The samples of all chunks of a request, concatenated, are its utterance:
frames * hop samples.

Continuous batching (`EngineAudio`, `stream_engine_audio`): with `gpa_jax.sampling.engine`
the LM decodes a few steps per call for every request in its slots, and each request gets
its windows on its own schedule (the chunk sizes above, counted in its own new frames);
the windows of the requests due together are synthesized in one batch.

Timing: every chunk carries `elapsed_s` since `stream_audio` was called (device work
finished, the samples on the host); a request's first chunk gives its time to first chunk
(TTFC). Rejected requests yield one final chunk with `error` set and no samples; a row
whose synthesis fails ends the same way, the other rows go on.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging

from gpa_jax.sampling.decode import EOS_ID, PAD_ID, chunk_schedule
from gpa_jax.sampling.sampler import Request, RequestError, Sampler

# The tasks whose output is speech. Each window is rendered from the request's voice
# prompt (`Request.voice_prompt`): the reference for TTS / VC, SE's noisy input itself.
AUDIO_TASKS = ("tts", "vc", "se")

Synthesize = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]
DEFAULT_CHUNK_FRAMES = 25  # 0.5 s at 50 Hz
DEFAULT_CHUNK_GROWTH = 2.0
DEFAULT_MAX_CHUNK_FRAMES = 100  # 2 s
DEFAULT_CONTEXT_FRAMES = 8
DEFAULT_OVERLAP_FRAMES = 1


@dataclasses.dataclass
class AudioChunk:
    index: int  # position of the request in the list given to stream_audio
    id: str
    wav: np.ndarray  # float32 [n] new samples
    start: int  # offset of wav[0] in the utterance (samples)
    final: bool  # the request's last chunk
    elapsed_s: float  # since stream_audio was called
    error: str | None = None


class Crossfader:
    """Joins the decodes of overlapping windows into one stream, each sample once.

    push(wav, start, final): `wav` is the decode of samples [start, start + len(wav)) of
    the utterance; `start` may not lie after the first sample not yet emitted, and the
    window must reach past everything emitted or held. Returns the samples to emit now:
    the held-back span crossfaded (linear ramps, summing to 1) with this window's decode of
    it, then the window's new samples, minus the last `overlap` samples (held back for the
    next window) unless `final`.
    """

    def __init__(self, overlap: int):
        if overlap < 0:
            raise ValueError(f"overlap={overlap} must be >= 0")
        self.overlap = int(overlap)
        self.emitted = 0  # samples emitted so far
        self.tail = np.zeros(0, np.float32)  # held back: samples [emitted, emitted + len)

    def push(self, wav: np.ndarray, start: int, final: bool = False) -> np.ndarray:
        wav = np.asarray(wav, np.float32)
        end = start + len(wav)
        held_end = self.emitted + len(self.tail)
        if start > self.emitted or end < held_end:
            raise ValueError(
                f"window [{start}, {end}) must cover the held-back span "
                f"[{self.emitted}, {held_end})"
            )
        out = wav[self.emitted - start :].copy()
        n = len(self.tail)
        if n:
            fade_in = (np.arange(n, dtype=np.float32) + 1.0) / (n + 1.0)
            out[:n] = self.tail * (1.0 - fade_in) + out[:n] * fade_in
        keep = len(out) if final else max(n, len(out) - self.overlap)
        self.tail = out[keep:]
        self.emitted += keep
        return out[:keep]


def synthesizer(codec, stage=None) -> Synthesize:
    """rvq1 [T] lists + prompt codes [n_q, P] lists -> waveforms: an acoustic stage (an
    `AcousticStage`: codes or latent, then the codec decoder), or without one RVQ-1-only
    codec decoding."""
    from gpa_jax.acoustic import api as acoustic_api
    from gpa_jax.codec import api as codec_api

    if stage is None:
        return lambda rvq1, prompts: codec_api.decode_batch(codec, [r[None] for r in rvq1])
    if not hasattr(stage, "complete_batch"):
        raise TypeError("streaming needs an AcousticStage-like acoustic stage (complete_batch)")
    return lambda rvq1, prompts: acoustic_api.synthesize(stage, codec, rvq1, prompts)


@dataclasses.dataclass(eq=False)
class AudioStream:
    """One TTS/VC/SE request's audio as its RVQ-1 frames arrive (module docstring's windows).

    With `sizes` (a `chunk_schedule`) it is `due` for a window once that many new frames
    have come; without, only when it is finished (one window: the whole utterance)."""

    index: int
    request: Request
    fader: Crossfader | None = None  # None once its last chunk is out
    t0: float = 0.0  # its chunks' elapsed_s count from here
    sizes: Iterator[int] | None = None
    frames: list[int] = dataclasses.field(default_factory=list)  # RVQ-1 codes so far
    synthesized: int = 0  # frames already covered by a decode window
    finished: bool = False
    target: int = 0  # new frames the next window waits for (0: take the next size)

    def add(self, codes: Sequence[int], finished: bool) -> None:
        self.frames.extend(int(c) for c in codes)
        self.finished = self.finished or bool(finished)

    @property
    def due(self) -> bool:
        if self.fader is None:
            return False
        if self.finished:
            return True
        if self.sizes is None:
            return False
        if not self.target:
            self.target = next(self.sizes)
        return len(self.frames) - self.synthesized >= self.target


def _check_options(chunk_frames, chunk_growth, max_chunk_frames, context_frames, overlap_frames):
    """Validates the streaming options; returns max_chunk_frames (at least chunk_frames)."""
    if context_frames < 0 or overlap_frames < 0:
        raise ValueError("context_frames and overlap_frames must be >= 0")
    if max_chunk_frames is not None:  # a first chunk above the cap makes the cap
        max_chunk_frames = max(int(max_chunk_frames), int(chunk_frames))
    next(chunk_schedule(chunk_frames, chunk_growth, max_chunk_frames))  # checks the sizes
    if overlap_frames > context_frames:
        raise ValueError(
            f"overlap_frames={overlap_frames} > context_frames={context_frames}: the next "
            "window must cover the held-back samples"
        )
    return max_chunk_frames


def stream_audio(
    sampler: Sampler,
    codec,
    requests: Sequence[Request],
    *,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    chunk_growth: float = DEFAULT_CHUNK_GROWTH,
    max_chunk_frames: int | None = DEFAULT_MAX_CHUNK_FRAMES,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    overlap_frames: int = DEFAULT_OVERLAP_FRAMES,
    synthesize: Synthesize | None = None,
) -> Iterator[AudioChunk]:
    """Yields AudioChunks of TTS/VC/SE `requests` as they are generated (module docstring).
    Requests are served in batches of sampling.max_batch, in the order given. `synthesize`
    defaults to `synthesizer(codec, sampler.acoustic)`."""
    max_chunk_frames = _check_options(chunk_frames, chunk_growth, max_chunk_frames,
                                      context_frames, overlap_frames)  # fmt: skip
    t0 = time.perf_counter()
    synthesize = synthesize or synthesizer(codec, sampler.acoustic)
    hop = int(codec.hop_length)
    prepared = []
    for i, request in enumerate(requests):
        try:
            if request.task not in AUDIO_TASKS:
                raise RequestError(f"streaming serves {', '.join(AUDIO_TASKS)}, not {request.task!r}")
            prepared.append(sampler.prepare(request, i))
        except RequestError as e:
            logging.warning("request %s rejected: %s", request.id or i, e)
            yield AudioChunk(i, request.id, np.zeros(0, np.float32), 0, True,
                             time.perf_counter() - t0, str(e))  # fmt: skip
    size = int(sampler.sampling.max_batch)
    for lo in range(0, len(prepared), size):
        chunk = prepared[lo : lo + size]
        rows = [AudioStream(p.index, p.request, Crossfader(overlap_frames * hop), t0) for p in chunk]
        batch, steps = sampler.decode_batch(chunk)
        chunks = sampler.decoder.stream(batch, steps, chunk_frames, growth=chunk_growth,
                                        max_chunk_steps=max_chunk_frames)  # fmt: skip
        for _, _, tokens, done in chunks:
            for b, row in enumerate(rows):
                if row.finished or row.fader is None:
                    continue
                new = tokens[b]
                eos = np.flatnonzero(new == EOS_ID)  # the row's generation ended
                new = new[: eos[0]] if eos.size else new
                new = new[new != PAD_ID]  # after a row stopped
                row.add(sampler.vocab.ids_to_audio(new, 0), done[b])
            yield from _synthesize_rows(rows, synthesize, hop, context_frames)


def _synthesize_rows(rows, synthesize, hop, context_frames) -> Iterator[AudioChunk]:
    """One decode window per row with new frames (or that just finished), batched."""
    todo = [r for r in rows if r.fader is not None and (len(r.frames) > r.synthesized or r.finished)]
    if not todo:
        return
    # Each window starts context_frames before the row's first new frame.
    items = [(r, max(0, r.synthesized - context_frames)) for r in todo]
    items = [(r, w0) for r, w0 in items if len(r.frames) > w0]
    try:
        wavs = synthesize(
            [np.asarray(r.frames[w0:], np.int32) for r, w0 in items],
            [np.asarray(r.request.voice_prompt) for r, _ in items],
        ) if items else []  # fmt: skip
    except Exception as e:  # noqa: BLE001  (reported on the rows it hit)
        logging.warning("streaming synthesis failed: %s", e)
        for r, _ in items:
            r.fader = None
            yield AudioChunk(r.index, r.request.id, np.zeros(0, np.float32), r.synthesized * hop,
                             True, time.perf_counter() - r.t0, f"synthesis failed: {e}")  # fmt: skip
        return
    by_row = {id(r): (w0, wav) for (r, w0), wav in zip(items, wavs, strict=True)}
    for r in todo:
        start = r.fader.emitted
        if id(r) in by_row:
            w0, wav = by_row[id(r)]
            out = r.fader.push(np.asarray(wav)[: (len(r.frames) - w0) * hop], w0 * hop, r.finished)
        else:  # finished without new frames: flush what is held back
            out = r.fader.push(r.fader.tail.copy(), r.fader.emitted, True)
        r.synthesized, r.target = len(r.frames), 0
        yield AudioChunk(r.index, r.request.id, out, start, r.finished, time.perf_counter() - r.t0)
        if r.finished:
            r.fader = None


# --- continuous batching ----------------------------------------------------------------


class EngineAudio:
    """Audio of the TTS/VC/SE requests an `Engine` serves, each on its own chunk schedule.

        audio = EngineAudio(engine, codec)
        ticket = engine.submit(Request.tts("hello", ref))
        audio.track(ticket)                       # stream=False: one chunk at the end
        for event in ...: chunks = audio.feed(engine.step())

    `feed` takes the engine's Events and returns (ticket, AudioChunk) pairs: a request
    gets a window once it has `chunk_frames` new frames (then `chunk_growth` times more,
    at most `max_chunk_frames`, as `stream_audio`) or has finished; the windows of all
    requests due in one call are synthesized together. A chunk's `index` is the ticket's
    serial and `elapsed_s` counts from its submission.
    """

    def __init__(
        self,
        engine,
        codec,
        *,
        synthesize: Synthesize | None = None,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        chunk_growth: float = DEFAULT_CHUNK_GROWTH,
        max_chunk_frames: int | None = DEFAULT_MAX_CHUNK_FRAMES,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
        overlap_frames: int = DEFAULT_OVERLAP_FRAMES,
    ):
        self.max_chunk_frames = _check_options(chunk_frames, chunk_growth, max_chunk_frames,
                                               context_frames, overlap_frames)  # fmt: skip
        self.engine = engine
        self.vocab = engine.sampler.vocab
        self.synthesize = synthesize or synthesizer(codec, engine.sampler.acoustic)
        self.hop = int(codec.hop_length)
        self.chunk_frames, self.chunk_growth = int(chunk_frames), float(chunk_growth)
        self.context_frames, self.overlap_frames = int(context_frames), int(overlap_frames)
        self._streams: dict[int, tuple[Any, AudioStream]] = {}  # ticket serial -> stream

    def track(self, ticket, stream: bool = True) -> None:
        """Makes audio for `ticket` (a tts/vc/se request): in chunks, or at its end."""
        if ticket.request.task not in AUDIO_TASKS:
            raise RequestError(f"audio is made for {', '.join(AUDIO_TASKS)}, not {ticket.request.task!r}")
        sizes = None
        if stream:
            sizes = chunk_schedule(self.chunk_frames, self.chunk_growth, self.max_chunk_frames)
        self._streams[ticket.serial] = (ticket, AudioStream(
            ticket.serial, ticket.request, Crossfader(self.overlap_frames * self.hop),
            ticket.submitted_s, sizes,
        ))  # fmt: skip

    def forget(self, ticket) -> None:
        self._streams.pop(ticket.serial, None)

    def feed(self, events) -> list[tuple[Any, AudioChunk]]:
        for event in events:
            entry = self._streams.get(event.ticket.serial)
            if entry is not None:
                entry[1].add(self.vocab.ids_to_audio(event.tokens, 0), event.finished)
        due = [s for _, s in self._streams.values() if s.due]
        out = []
        for chunk in _synthesize_rows(due, self.synthesize, self.hop, self.context_frames):
            out.append((self._streams[chunk.index][0], chunk))
            if chunk.final:
                del self._streams[chunk.index]
        return out


def stream_engine_audio(engine, codec, requests: Sequence[Request], **options) -> Iterator[AudioChunk]:
    """`stream_audio` through continuous batching: submits the TTS/VC/SE `requests` as the
    engine's queue allows, steps it until they are done, and yields each request's
    AudioChunks as they come (`index`: its position in `requests`). `options`: EngineAudio's."""
    audio = EngineAudio(engine, codec, **options)
    position: dict[int, int] = {}
    pending = collections.deque(enumerate(requests))
    t0 = time.perf_counter()
    while pending or position:
        while pending and engine.waiting < engine.max_queue:
            i, request = pending.popleft()
            try:
                if request.task not in AUDIO_TASKS:
                    raise RequestError(f"streaming serves {', '.join(AUDIO_TASKS)}, not {request.task!r}")
                ticket = engine.submit(request)
            except RequestError as e:
                yield AudioChunk(i, request.id, np.zeros(0, np.float32), 0, True,
                                 time.perf_counter() - t0, str(e))  # fmt: skip
                continue
            position[ticket.serial] = i
            audio.track(ticket)
        for ticket, chunk in audio.feed(engine.step()):
            yield dataclasses.replace(chunk, index=position[ticket.serial])
            if chunk.final:
                del position[ticket.serial]
