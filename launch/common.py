"""Flags and helpers shared by the launch/ entry points (each flag defined once, here)."""

from __future__ import annotations

from absl import flags

from gpa_jax import paths

_WORKDIR = flags.DEFINE_string(
    "workdir", None, f"Work directory (default: ${paths.WORKDIR_ENV} or {paths.DEFAULT_WORKDIR})."
)


def workdir() -> str:
    """The --workdir flag, else the documented default."""
    return _WORKDIR.value or paths.default_workdir()


# Streaming TTS/VC (launch.sample --stream, launch.bench_sample): gpa_jax.sampling.streaming.
_CHUNK_FRAMES = flags.DEFINE_integer("chunk_frames", 25, "Streaming: RVQ-1 frames of the first chunk (50 Hz).")
_CHUNK_GROWTH = flags.DEFINE_float("chunk_growth", 2.0, "Streaming: each later chunk is this times the last.")
_MAX_CHUNK = flags.DEFINE_integer("max_chunk_frames", 100, "Streaming: the largest chunk (frames).")


def stream_options() -> dict[str, float | int]:
    """The streaming flags as `stream_audio` keyword arguments."""
    return dict(chunk_frames=_CHUNK_FRAMES.value, chunk_growth=_CHUNK_GROWTH.value,
                max_chunk_frames=_MAX_CHUNK.value)  # fmt: skip


def codec_judge(kind: str = "whisper"):
    """(judge, judge_report) for scoring codec resynthesis: Whisper tiny.en by default.

    The codec layer takes both as arguments (`gpa_jax.codec.evaluate`), so it imports
    nothing from the evaluation layer above it.
    """
    from gpa_jax.evaluation import asr_metrics
    from gpa_jax.evaluation.judge import make_judge

    return make_judge(kind), asr_metrics.judge_wer_report
