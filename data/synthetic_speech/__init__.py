"""Synthetic multi-speaker English speech corpus, generated on the spot (TFDS: synthetic_speech).

Importing this package registers the TFDS builder, after which
`tfds.load("synthetic_speech/tiny", data_dir=...)` works once the data is built
(`build("tiny", data_dir)`, or `tfds.load(..., download=True)`).
"""

from data.synthetic_speech.corpus import build, format_summary, summarize
from data.synthetic_speech.plan import SPLITS, PlannedUtterance, assign_voices, make_plan
from data.synthetic_speech.synthetic_speech_dataset_builder import (
    CONFIGS,
    Builder,
    CorpusBuildError,
    SyntheticSpeechConfig,
    plan_for,
)

__all__ = [
    "CONFIGS",
    "SPLITS",
    "Builder",
    "CorpusBuildError",
    "PlannedUtterance",
    "SyntheticSpeechConfig",
    "assign_voices",
    "build",
    "format_summary",
    "make_plan",
    "plan_for",
    "summarize",
]
