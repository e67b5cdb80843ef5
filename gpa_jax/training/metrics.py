"""Metric writers for training runs: clu's TensorBoard writer, plus readers for tests.

`create_default_writer(logdir)` is clu's (absl log lines + TensorBoard summaries). clu
writes through TensorFlow, so GPUs are hidden from TensorFlow first: it must not claim
accelerator memory that JAX uses. `read_scalars(logdir)` reads scalars back with
TensorBoard's own event reader (tests, notebooks); `MemoryWriter` keeps everything in
memory (tests, benchmarks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers

from gpa_jax import paths


class MemoryWriter(metric_writers.MetricWriter):
    """Keeps every scalar/text in memory: `scalars[tag] = [(step, value), ...]`."""

    def __init__(self):
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.texts: dict[str, list[tuple[int, str]]] = {}
        self.hparams: dict[str, Any] = {}

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for k, v in scalars.items():
            self.scalars.setdefault(k, []).append((int(step), float(v)))

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for k, v in texts.items():
            self.texts.setdefault(k, []).append((int(step), v))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)

    def write_summaries(self, step, values, metadata=None) -> None:
        del step, values, metadata

    def write_images(self, step, images) -> None:
        del step, images

    def write_videos(self, step, videos) -> None:
        del step, videos

    def write_audios(self, step, audios, *, sample_rate) -> None:
        del step, audios, sample_rate

    def write_histograms(self, step, arrays, num_buckets=None) -> None:
        del step, arrays, num_buckets

    def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None) -> None:
        del step, point_clouds, point_colors, configs

    def series(self, tag: str) -> dict[int, float]:
        """{step: value} of one tag."""
        return dict(self.scalars.get(tag, []))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every event file under `logdir` (recursively; local
    or gs://, event files read through `gpa_jax.paths.local_path`)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    out: dict[str, list[tuple[int, float]]] = {}
    for path in paths.find_files(logdir, "*tfevents*"):
        for event in EventFileLoader(paths.local_path(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalar = value.simple_value
                elif value.HasField("tensor") and not value.tensor.string_val:
                    array = tensor_util.make_ndarray(value.tensor)
                    if array.size != 1:
                        continue
                    scalar = float(np.asarray(array).reshape(()))
                else:
                    continue
                out.setdefault(value.tag, []).append((int(event.step), float(scalar)))
    return out


def create_default_writer(logdir: str | os.PathLike | None, *, just_logging: bool = False):
    """clu's default writer: log lines, plus TensorBoard files in `logdir` on the main host.

    just_logging: log lines only (non-primary hosts of a multi-host run).
    """
    try:  # clu writes through TensorFlow: keep TF off the accelerators JAX uses.
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # Devices already initialised: nothing more to do.
        pass
    return metric_writers.create_default_writer(
        None if just_logging else os.fspath(logdir), just_logging=just_logging
    )
