"""Metric writers for training runs (TensorBoard files and log lines), plus readers.

The writers follow clu's `MetricWriter` interface (write_scalars / write_texts /
write_audios / write_images / write_hparams / flush / close) without importing it:
`clu.metric_writers` imports TensorFlow for its summary writer, and a training host
imports no TensorFlow (ARCHITECTURE.md, Layering). `create_default_writer(logdir)` writes
TensorBoard event files through tensorboardX (TF-free) and logs every scalar line, as
clu's default writer does; `read_scalars(logdir)` reads scalars back with TensorBoard's
own event reader (tests, notebooks); `MemoryWriter` keeps everything in memory (tests,
benchmarks).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from gpa_jax import paths


class MemoryWriter:
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


class TensorBoardWriter:
    """clu's MetricWriter interface over tensorboardX: event files in `logdir` (when given)
    and one absl log line per write_scalars call. A gs:// `logdir` is written in a local
    staging folder whose event files are uploaded (gpa_jax.paths) at most every
    `upload_every_s` seconds of writes, at flush and at close. (tensorboardX writes events
    from a thread and its flush does not wait for it: an upload before close holds what
    that thread had written, up to its 30 s flush interval behind.)"""

    def __init__(self, logdir: str | os.PathLike | None, upload_every_s: float = 60.0):
        self._tb, self._target, self._stage = None, None, None
        self._upload_every_s, self._uploaded_at = upload_every_s, time.monotonic()
        if logdir is not None:
            from tensorboardX import SummaryWriter

            local = os.fspath(logdir)
            if paths.is_remote(local):
                self._target, self._stage = local, tempfile.mkdtemp(prefix="gpa_jax-tb-")
                local = self._stage
            self._tb = SummaryWriter(local, flush_secs=30)

    def _upload(self) -> None:
        """Copies the staged (flushed) event files to the gs:// log dir (whole files: they
        only grow)."""
        for name in os.listdir(self._stage):
            paths.upload(os.path.join(self._stage, name), paths.join(self._target, name))
        self._uploaded_at = time.monotonic()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, int(step))
            if self._stage and time.monotonic() - self._uploaded_at > self._upload_every_s:
                self._tb.flush()
                self._upload()

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        if self._tb is not None:
            for k, v in texts.items():
                self._tb.add_text(k, v, int(step))

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
        """audios: {tag: float [batch, samples, channels]} (clu's layout); the first clip."""
        if self._tb is not None:
            for k, v in audios.items():
                clip = np.asarray(v, np.float32)[0, :, 0]
                self._tb.add_audio(k, clip, int(step), sample_rate=int(sample_rate))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """images: {tag: [batch, height, width, channels]} (clu's layout)."""
        if self._tb is not None:
            for k, v in images.items():
                self._tb.add_images(k, np.asarray(v), int(step), dataformats="NHWC")

    def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None) -> None:
        if self._tb is not None:
            for k, v in arrays.items():
                self._tb.add_histogram(
                    k, np.asarray(v), int(step), bins=num_buckets or "tensorflow"
                )

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        if self._tb is not None:
            self._tb.add_text("hparams", "\n".join(f"{k}: {v}" for k, v in hparams.items()), 0)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            if self._stage:
                self._upload()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            if self._stage:
                self._upload()
                shutil.rmtree(self._stage, ignore_errors=True)
            self._tb = None


def create_default_writer(logdir: str | os.PathLike | None, *, just_logging: bool = False):
    """Log lines, plus TensorBoard files in `logdir` on the main host.

    just_logging: log lines only (non-primary hosts of a multi-host run).
    """
    return TensorBoardWriter(None if just_logging or logdir is None else logdir)
