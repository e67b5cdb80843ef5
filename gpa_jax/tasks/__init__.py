"""Vocabulary, token shards, SeqIO tasks/mixture and the packing pipeline for the LM.

    token_shards       on-disk format written by the codec tokenization job
    vocab              SpeechVocabulary: control + text + audio ids (layout table)
    spm                SentencePiece training on corpus transcripts
    config             tasks_config(): the `config.tasks` section
    planning           pairing (references, VC sources), crops, length rule, counters
    tasks              register_tasks(): <ns>_tts/_asr/_vc + mixture <ns>_mix
    feature_converter  packing prefix-LM converter with per-token task ids
    pipeline           make_batches / make_iterator: numpy batches in the trainer layout
    baseline           per-task unigram baselines of the loss-weighted output tokens

Names are imported lazily, so `from gpa_jax.tasks import token_shards` (the codec
tokenization job's only need) does not pull in TensorFlow and seqio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "config": ("TASK_NAMES", "tasks_config", "validate_tasks_config"),
    "feature_converter": ("TASK_IDS", "SpeechPrefixLMFeatureConverter", "feature_lengths"),
    "pipeline": (
        "PREFIX_RENAME",
        "DataIterator",
        "make_batches",
        "make_dataset",
        "make_iterator",
        "to_trainer_batch",
    ),
    "planning": ("TaskStats",),
    "tasks": ("SpeechTasks", "register_tasks"),
    "token_shards": (
        "NoisyInput",
        "ShardError",
        "ShardWriter",
        "Utterance",
        "UtteranceSource",
        "iter_utterances",
        "read_manifest",
        "write_manifest",
    ),
    "vocab": ("SpeechVocabulary", "make_text_vocabulary", "make_vocabulary"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
