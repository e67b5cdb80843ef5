"""TFDS builder for the synthetic multi-speaker speech corpus (registered as synthetic_speech).

Everything is generated on the spot: grammar sentences (data.sentences) spoken by
espeak-ng and flite voices (gpa_jax.audio.voices), so the corpus needs no download and is the same
for the same seed. Synthesis runs in a process pool with a progress bar while TFDS writes
the examples; an utterance whose synthesis fails (engine error, corrupt or silent output,
duration out of range) is logged, counted in the generation report and left out, and the
build only stops when more than `max_failure_fraction` of a split fails.

Workers are spawned (the parent holds TensorFlow's threads, which fork can deadlock), and
spawned workers re-import the main module: a script that builds must do so under
`if __name__ == "__main__":`, and should import this package inside its main function so
that the workers need not import TensorFlow as well.

Audio is stored as raw int16 bytes (Encoding.BYTES, see Int16Audio): the default encoding
would widen each sample to an int64 varint, 10 bytes for a negative sample, instead of 2.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tqdm.auto import tqdm

from data.synthetic_speech.plan import SPLITS, PlannedUtterance, make_plan
from gpa_jax.audio import voices as voices_lib

SAMPLE_RATE = voices_lib.SAMPLE_RATE
GENDERS = ("female", "male")


class Int16Audio(tfds.features.Audio):
    """tfds.features.Audio that applies its `encoding` to numpy input.

    TFDS 4.9.10's Audio.encode_example returns numpy arrays unencoded, so Encoding.BYTES
    fails on them; this passes them through Tensor's encoder instead. Decoding is
    Audio's own: readers get int16 [samples] as from any Audio feature.
    """

    def encode_example(self, audio_or_path_or_fobj):
        if isinstance(audio_or_path_or_fobj, np.ndarray | list):
            return tfds.features.Tensor.encode_example(self, np.asarray(audio_or_path_or_fobj))
        return super().encode_example(audio_or_path_or_fobj)


class CorpusBuildError(RuntimeError):
    """Too many utterances failed to synthesize; the message carries the report."""


@dataclasses.dataclass(eq=False)
class SyntheticSpeechConfig(tfds.core.BuilderConfig):
    """Corpus size and generation settings.

    voices_per_sentence is per split; test_unseen_voice takes at most the number of
    held-out voices. Utterances outside [min_seconds, max_seconds] after trimming are
    rejected (and counted) rather than stored.
    """

    num_train: int = 12
    num_validation: int = 4
    num_test: int = 4
    train_voices_per_sentence: int = 3
    eval_voices_per_sentence: int = 2
    unseen_voices_per_sentence: int = 2
    seed: int = 0
    min_seconds: float = 0.5
    max_seconds: float = 16.0
    max_failure_fraction: float = 0.05

    def num_sentences(self) -> dict[str, int]:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}

    def voices_per_sentence(self) -> dict[str, int]:
        return {
            "train": self.train_voices_per_sentence,
            "validation": self.eval_voices_per_sentence,
            "test": self.eval_voices_per_sentence,
            "test_unseen_voice": self.unseen_voices_per_sentence,
        }

    def settings(self) -> dict[str, object]:
        """The generation settings as JSON-able values (stored in the metadata)."""
        keep = (
            "num_train",
            "num_validation",
            "num_test",
            "train_voices_per_sentence",
            "eval_voices_per_sentence",
            "unseen_voices_per_sentence",
            "seed",
            "min_seconds",
            "max_seconds",
            "max_failure_fraction",
        )
        return {k: getattr(self, k) for k in keep}


CONFIGS = (
    SyntheticSpeechConfig(
        name="tiny",
        description="20 sentences, 60 utterances; builds in seconds (tests, smoke runs).",
    ),
    SyntheticSpeechConfig(
        name="default",
        description="3,000 sentences (2,700 train / 150 validation / 150 test), "
        "about 9,000 utterances; minutes on two cores.",
        num_train=2700,
        num_validation=150,
        num_test=150,
    ),
)


def plan_for(config: SyntheticSpeechConfig) -> dict[str, list[PlannedUtterance]]:
    """The config's utterance plan (no synthesis)."""
    n_held_out = len(voices_lib.held_out_voices())
    per_split = config.voices_per_sentence()
    per_split["test_unseen_voice"] = min(per_split["test_unseen_voice"], n_held_out)
    return make_plan(
        num_sentences=config.num_sentences(),
        voices_per_sentence=per_split,
        seed=config.seed,
        voices=voices_lib.VOICES,
    )


class _Report:
    """Counts requested/stored/rejected utterances per split and reason."""

    def __init__(self, plan: Mapping[str, Sequence[PlannedUtterance]]) -> None:
        self.requested = {split: len(items) for split, items in plan.items()}
        self.stored = dict.fromkeys(plan, 0)
        self.rejected: list[dict[str, str]] = []
        self.seconds = 0.0

    def reject(self, item: PlannedUtterance, reason: str, message: str) -> None:
        self.rejected.append(
            {
                "id": item.id,
                "split": item.split,
                "speaker": item.speaker,
                "reason": reason,
                "message": message,
            }
        )

    def failure_fraction(self, split: str) -> float:
        failed = sum(r["split"] == split for r in self.rejected)
        return failed / max(1, self.requested[split])

    def to_dict(self) -> dict[str, object]:
        by_reason = collections.Counter(r["reason"] for r in self.rejected)
        by_split = collections.Counter(r["split"] for r in self.rejected)
        return {
            "requested": sum(self.requested.values()),
            "stored": sum(self.stored.values()),
            "rejected": len(self.rejected),
            "rejected_by_reason": dict(sorted(by_reason.items())),
            "per_split": {
                split: {
                    "requested": self.requested[split],
                    "stored": self.stored[split],
                    "rejected": by_split.get(split, 0),
                }
                for split in self.requested
            },
            "rejected_ids": [r["id"] for r in self.rejected],
            "rejections": self.rejected,
            "synthesis_seconds": round(self.seconds, 1),
        }


class _Renderer:
    """Synthesizes every planned utterance once, in a pool, in plan order.

    All tasks are submitted up front (so workers keep busy while TFDS finalizes a split);
    each split's generator pulls its own results from the shared stream, and results for
    a split that TFDS asks for later wait in a stash.
    """

    def __init__(
        self,
        plan: Mapping[str, Sequence[PlannedUtterance]],
        num_workers: int,
        min_seconds: float,
        max_seconds: float,
    ) -> None:
        self._plan = plan
        self._num_workers = num_workers
        self._limits = (min_seconds, max_seconds)
        self._split_of = {item.id: split for split, items in plan.items() for item in items}
        self._stash: dict[str, list[voices_lib.SynthesisResult]] = collections.defaultdict(list)
        self._done: set[str] = set()
        self._stream: Iterator[voices_lib.SynthesisResult] | None = None
        self._pool = None
        self._bar = None
        self._start_time = 0.0

    def _start(self) -> None:
        by_speaker = {v.speaker: v for v in voices_lib.VOICES}
        tasks = [
            (item.id, by_speaker[item.speaker], item.raw_text, *self._limits)
            for items in self._plan.values()
            for item in items
        ]
        self._start_time = time.monotonic()
        self._bar = tqdm(
            total=len(tasks),
            desc="Synthesizing utterances",
            unit=" utt",
            mininterval=1.0,
            dynamic_ncols=True,
        )
        if self._num_workers <= 1:
            self._stream = (voices_lib.synthesis_worker(task) for task in tasks)
        else:
            # spawn, not fork: the parent holds TensorFlow's threads, which fork can deadlock.
            # An executor, not multiprocessing.Pool: a worker that dies (e.g. a main module
            # without the `if __name__ == "__main__":` guard) raises BrokenProcessPool
            # instead of hanging the build.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self._num_workers, mp_context=multiprocessing.get_context("spawn")
            )
            chunk = max(1, min(16, len(tasks) // (8 * self._num_workers)))
            self._stream = self._pool.map(voices_lib.synthesis_worker, tasks, chunksize=chunk)

    def results(self, split: str) -> Iterator[voices_lib.SynthesisResult]:
        if self._stream is None:
            self._start()
        remaining = len(self._plan[split])
        for result in self._stash.pop(split, []):
            remaining -= 1
            yield result
        while remaining > 0:
            try:
                result = next(self._stream)
            except concurrent.futures.process.BrokenProcessPool as e:
                raise CorpusBuildError(
                    "a synthesis worker process died. With spawned workers the main module "
                    "is re-imported in each worker: a script that builds at import time "
                    "must do so under `if __name__ == '__main__':`."
                ) from e
            self._bar.update(1)
            owner = self._split_of[result[0]]
            if owner == split:
                remaining -= 1
                yield result
            elif owner not in self._done:
                self._stash[owner].append(result)
        self._done.add(split)

    def elapsed(self) -> float:
        return time.monotonic() - self._start_time if self._start_time else 0.0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Builder(tfds.core.GeneratorBasedBuilder):
    """Synthetic parallel multi-speaker English speech (espeak-ng + flite)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = list(CONFIGS)
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *, num_workers: int | None = None, **kwargs) -> None:
        """num_workers: synthesis processes (default os.cpu_count(); 1 = in-process)."""
        self._num_workers = num_workers
        self._renderer: _Renderer | None = None
        self._report: _Report | None = None
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config: SyntheticSpeechConfig = self.builder_config
        metadata = tfds.core.MetadataDict(
            voices={v.speaker: v.metadata() for v in voices_lib.VOICES},
            config=config.settings(),
        )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "audio": Int16Audio(
                        sample_rate=SAMPLE_RATE,
                        dtype=np.int16,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "text": tfds.features.Text(doc="Normalised transcript (gpa_jax.text)."),
                    "raw_text": tfds.features.Text(doc="The sentence as synthesized."),
                    "speaker": tfds.features.Text(doc="Voice id, e.g. flite_slt."),
                    "gender": tfds.features.ClassLabel(names=list(GENDERS)),
                    "id": tfds.features.Text(doc="<split>-<sentence_id>-<speaker>, unique."),
                    "sentence_id": tfds.features.Scalar(
                        np.int32, doc="Same for every voice of a sentence; unique across splits."
                    ),
                    "duration_s": tfds.features.Scalar(
                        np.float32, doc="len(audio) / 16000, after silence trimming."
                    ),
                }
            ),
            supervised_keys=None,
            metadata=metadata,
        )

    def plan(self) -> dict[str, list[PlannedUtterance]]:
        return plan_for(self.builder_config)

    def download_and_prepare(self, *, download_config=None, **kwargs) -> None:
        """As TFDS's, but never asks GCS for a prebuilt copy and always stops the pool."""
        config = download_config or tfds.download.DownloadConfig()
        config = dataclasses.replace(config, try_download_gcs=False)
        try:
            super().download_and_prepare(download_config=config, **kwargs)
        finally:
            if self._renderer is not None:
                self._renderer.close()
                self._renderer = None

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download.
        config: SyntheticSpeechConfig = self.builder_config
        plan = self.plan()
        workers = self._num_workers or os.cpu_count() or 1
        self._report = _Report(plan)
        self._renderer = _Renderer(plan, workers, config.min_seconds, config.max_seconds)
        logging.info(
            "synthetic_speech/%s: %d utterances with %d worker(s)",
            config.name,
            sum(len(v) for v in plan.values()),
            workers,
        )
        return {split: self._generate_examples(split, plan[split]) for split in SPLITS}

    def _generate_examples(self, split: str, items: Sequence[PlannedUtterance]):
        config: SyntheticSpeechConfig = self.builder_config
        by_id = {item.id: item for item in items}
        gender_of = {v.speaker: v.gender for v in voices_lib.VOICES}
        for uid, audio, reason, message in self._renderer.results(split):
            item = by_id[uid]
            if audio is None:
                logging.warning(
                    "synthetic_speech: dropped %s (voice %s): %s", uid, item.speaker, message
                )
                self._report.reject(item, reason or "unknown", message or "")
                continue
            self._report.stored[split] += 1
            yield (
                uid,
                {
                    "audio": audio,
                    "text": item.text,
                    "raw_text": item.raw_text,
                    "speaker": item.speaker,
                    "gender": gender_of[item.speaker],
                    "id": uid,
                    "sentence_id": item.sentence_id,
                    "duration_s": audio.size / SAMPLE_RATE,
                },
            )
        self._report.seconds = self._renderer.elapsed()
        report = self._report.to_dict()
        self.info.metadata["generation_report"] = report
        fraction = self._report.failure_fraction(split)
        if fraction > config.max_failure_fraction:
            raise CorpusBuildError(
                f"synthetic_speech/{config.name}: {fraction:.1%} of split {split!r} failed "
                f"(limit {config.max_failure_fraction:.0%}); report: "
                f"{json.dumps({k: v for k, v in report.items() if k != 'rejections'})}"
            )
