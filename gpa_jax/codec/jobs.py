"""The codec stage as plain functions (what `launch/demo.py` and notebooks call).

    from gpa_jax.codec import jobs
    config = gpa_jax.config_utils.load_config("configs/codec_tiny.py")
    jobs.train_codec(config, workdir)            # CTC teacher (if needed) + codec
    jobs.tokenize_corpus(config, workdir)        # -> <workdir>/tokens/<corpus>/
    jobs.evaluate_codec(config, workdir)         # -> <workdir>/codec/eval_test.json
    jobs.probe_codec(config, workdir)            # -> <workdir>/codec/probe_test.json

Every function reads the corpus from `data_dir` (default <workdir>/tfds) and the trained
codec from <workdir>/codec/checkpoints; each is what the matching `launch.*` entry point
runs, so the command line and the demo cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

from gpa_jax import paths


def train_codec(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    data_dir: str | None = None,
    progress: bool = True,
):
    """Trains (or resumes) the codec of `config` on config.data.corpus; with teacher.kind
    'ctc' the content teacher is trained first when <workdir>/codec/teacher has none.
    Returns `train.TrainResult` (final step, last logged metrics, checkpoint steps)."""
    from gpa_jax.codec import train

    return train.train(
        config, workdir, data_dir=data_dir or paths.tfds_dir(workdir), progress=progress
    )


def tokenize_corpus(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    corpus: str | None = None,
    splits: Sequence[str] | None = None,
    data_dir: str | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Token shards of every (or the named) split of `corpus` (default config.data.corpus)
    in <workdir>/tokens/<corpus>; finished splits are skipped. kwargs: batch_size,
    bucket_frames, max_seconds, records_per_shard, progress."""
    from gpa_jax.codec import tokenization

    return tokenization.tokenize_workdir(
        config, workdir, corpus=corpus, splits=splits, data_dir=data_dir, **kwargs
    )


def evaluate_codec(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    split: str | None = None,
    max_utterances: int | None = None,
    data_dir: str | None = None,
    judge: Any = None,
    judge_report: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Judge WER (with a judge), mel distance, STOI, bitrate (and teacher CER) for full RVQ
    and RVQ-1 only on `split` (default config.eval.split); also written to
    <workdir>/codec/eval_<split>.json."""
    from gpa_jax.codec import evaluate

    return evaluate.evaluate_workdir(
        config,
        workdir,
        split=split,
        max_utterances=max_utterances,
        data_dir=data_dir,
        judge=judge,
        judge_report=judge_report,
        progress=progress,
    )


def probe_codec(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Per-RVQ-layer content probe (CER per layer); also <workdir>/codec/probe_<split>.json."""
    from gpa_jax.codec import probe

    return probe.probe_workdir(config, workdir, split=split, data_dir=data_dir, progress=progress)
