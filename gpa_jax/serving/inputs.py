"""Audio and text inputs -> sampler Requests, with the limits a request must meet first.

    limits = InputLimits(lm_config, codec_config)                # no model needed
    ref = limits.load_reference("r.wav", "--ref")                 # only the first ref_max_frames
    src = limits.load_source("x.wav", "--audio", "vc", reference_wav=ref)
    builder = RequestBuilder.from_models(codec, sampler, lm_config, codec_config, workdir)
    request = builder.build("vc", source_wav=src, reference_wav=ref, seed=3)

Shared by `launch.sample` (one request from files) and the HTTP server
(`gpa_jax.serving.server`), so both refuse the same inputs with the same reasons:
- a reference is read up to the longer of the sampler's ref_max_frames and the acoustic
  stage's voice prompt (`voice_frames`; the rest is never decoded) and
  one shorter than the LM config's tasks.ref_min_frames is refused (the LM was trained on
  longer ones and clones such a voice poorly) unless `allow_short`;
- a source longer than the LM can take (`max_source_frames`, stated in seconds) is
  refused from the file's header, undecoded.
Audio goes through `gpa_jax.audio.io.load_audio` (mono, resampled to the codec's rate; an
unreadable, empty or truncated file is an AudioError naming it). Codes come from
`codec_api.encode`; a continuous-input LM also gets the feature rows its token shards
carry (`harness.feature_kind` + `codec.tokenization.token_features_for`) of the same audio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging

from gpa_jax.audio import io as audio_io
from gpa_jax.errors import UserError
from gpa_jax.sampling import Request, sampling_config
from gpa_jax.sampling.config import max_source_frames


class InputError(UserError, ValueError):
    """An input that cannot be served; `field` names it (a flag or a request field)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class InputLimits:
    """What the LM and codec configs allow of a request's audio (module docstring)."""

    def __init__(self, lm_config: Any, codec_config: Any, sampling: Any = None, *,
                 voice_frames: int = 0):  # fmt: skip
        """voice_frames: the acoustic stage's voice prompt (its data.prompt_max_frames);
        a reference is read up to the longer of that and the LM's ref_max_frames (the
        sampler keeps the first ref_max_frames for the LM)."""
        self.sampling = sampling if sampling is not None else sampling_config()
        tasks = lm_config.tasks
        self.sample_rate = int(codec_config.codec.sample_rate)
        self.hop = math.prod(int(s) for s in codec_config.codec.strides)
        self.frame_rate = self.sample_rate / self.hop
        self.ref_max_frames = int(self.sampling.ref_max_frames or tasks.ref_max_frames)
        self.voice_frames = int(voice_frames)
        self.ref_min_frames = int(tasks.ref_min_frames)
        self.ref_layers = int(self.sampling.ref_layers or tasks.ref_layers)
        self.max_total_len = int(self.sampling.max_total_len or lm_config.model.max_len)

    def frames(self, wav: np.ndarray) -> int:
        return math.ceil(len(wav) / self.hop)

    def load_reference(self, path: str, field: str, *, allow_short: bool = False,
                       name: str | None = None, hint: str = "") -> np.ndarray:  # fmt: skip
        """The first max(ref_max_frames, voice_frames) of a reference clip; InputError if
        shorter than ref_min_frames (unless allow_short: then a warning). Messages start
        with `name` (default: the field and the path) and end with `hint`."""
        read = max(self.ref_max_frames, self.voice_frames)
        wav = audio_io.load_audio(path, self.sample_rate, first_seconds=read / self.frame_rate)
        frames = self.frames(wav)
        if frames < self.ref_min_frames:
            problem = (
                f"{name or f'{field} {path}'} is {len(wav) / self.sample_rate:.2f} s ({frames} frames), "
                f"shorter than the {self.ref_min_frames / self.frame_rate:.2f} s "
                f"(tasks.ref_min_frames={self.ref_min_frames}) of the references the LM was "
                "trained on; the voice would be cloned poorly"
            )
            if not allow_short:
                raise InputError(field, f"{problem}{hint}")
            logging.warning("%s (served anyway: short references allowed)", problem)
        return wav

    def max_source_seconds(self, task: str, reference_wav: np.ndarray | None = None) -> float:
        """The longest asr / vc / se source this LM takes with room for its output."""
        ref_ids = 0
        if reference_wav is not None:  # the reference can be cut to ref_min_frames
            ref_ids = min(self.frames(reference_wav), self.ref_min_frames) * self.ref_layers
        frames = max_source_frames(task, self.max_total_len, self.sampling, reference_ids=ref_ids)
        return frames / self.frame_rate

    def load_source(self, path: str, field: str, task: str, *,
                    reference_wav: np.ndarray | None = None, name: str | None = None,
                    hint: str = "") -> np.ndarray:  # fmt: skip
        """A source clip, refused from its header when longer than the LM takes. The
        message starts with `name` (default: the field and the path)."""
        limit = self.max_source_seconds(task, reference_wav)
        try:  # the duration comes from the header: an over-long file is never decoded
            return audio_io.load_audio(path, self.sample_rate, max_seconds=limit)
        except audio_io.AudioError as error:
            if error.kind != "too_long":
                raise
            what = f"{name}: {error.reason}" if name else f"{field} {error}"
            raise InputError(
                field,
                f"{what}; this LM takes at most {limit:.2f} s of {task} source "
                f"({self.max_total_len} tokens at {self.frame_rate:g} Hz, with room for the "
                f"output){hint}",
            ) from None


class RequestBuilder:
    """Waveforms (at the codec's rate) + text -> a sampler Request: codes, and feature
    rows for a continuous-input LM. Runs the codec: call it from the thread that owns the
    models."""

    def __init__(
        self,
        codec: Any,
        featurize: Callable[[np.ndarray, int], np.ndarray] | None = None,
        *,
        bucket_frames: int | None = None,
    ):
        """featurize(wav, frames) -> rows [frames, F] (None: a tokens-input LM);
        bucket_frames: the codec encoder's length bucket (None: codec_api's default)."""
        self.codec = codec
        self.featurize = featurize
        self.bucket_frames = bucket_frames

    @classmethod
    def from_models(cls, codec: Any, sampler: Any, lm_config: Any, codec_config: Any,
                    workdir: str | None, **kwargs: Any) -> RequestBuilder:  # fmt: skip
        """With the feature rows a continuous-input `sampler` reads (from the kind its
        token shards in `workdir` carry)."""
        from gpa_jax.evaluation import harness

        featurize = None
        if harness.reads_features(sampler):
            from gpa_jax.codec.tokenization import token_features_for

            kind = harness.feature_kind(lm_config, workdir)
            featurize = token_features_for(kind, codec, codec_config, workdir)
        return cls(codec, featurize, **kwargs)

    def encode(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """codes [n_q, frames] and (continuous LMs) feature rows [frames, F] of a clip."""
        from gpa_jax.codec import api as codec_api

        kw = {} if self.bucket_frames is None else {"bucket_frames": self.bucket_frames}
        codes = codec_api.encode(self.codec, wav, int(self.codec.sample_rate), **kw)
        rows = None if self.featurize is None else self.featurize(wav, codes.shape[1])
        return codes, rows

    def build(
        self,
        task: str,
        *,
        text: str | None = None,
        source_wav: np.ndarray | None = None,
        reference_wav: np.ndarray | None = None,
        **request: Any,
    ) -> Request:
        """The Request of one task (`request`: Request fields such as id, seed, params,
        max_new_tokens). Sources keep RVQ-1 only, references every layer; SE's noisy
        source keeps every layer too (the acoustic stage's voice prompt, `Request.se`)."""
        src = ref = (None, None)
        if source_wav is not None:
            src = self.encode(source_wav)
        if reference_wav is not None:
            ref = self.encode(reference_wav)
        if task == "asr":
            return Request.asr(src[0][:1], source_features=src[1], **request)
        if task == "tts":
            return Request.tts(text, ref[0], reference_features=ref[1], **request)
        if task == "vc":
            return Request.vc(src[0][:1], ref[0], source_features=src[1],
                              reference_features=ref[1], **request)  # fmt: skip
        if task == "se":
            return Request.se(src[0], source_features=src[1], **request)
        raise ValueError(f"unknown task {task!r}")
