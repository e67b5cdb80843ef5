"""Codec training data: seeded random fixed-length crops of a TFDS speech corpus (grain).

The waveforms are read once (through `gpa_jax.corpora.speech_examples`, bad audio skipped and
counted) into memory: the codec only needs audio, and the synthetic corpora (and a few
hours of a public one) fit. The pipeline is then pure index arithmetic on a grain
`MapDataset`, so every batch is a function of (config seed, step):

    source(clips) -> shuffle(seed) -> repeat (reshuffled per epoch) -> random crop(seed)
      -> batch(batch_size, drop_remainder) -> IterDataset [-> mp_prefetch(num_workers)]

A crop is `crop_seconds` long; a shorter clip is zero-padded at the end and its `mask`
marks the real samples (`lengths` counts them), so the loss and the encoder BiLSTM can
ignore the padding. The iterator's `get_state()` / `set_state()` (a small dict) is saved
with the model checkpoint, so a resumed run sees exactly the batches a straight run would.

The tokenization job, which encodes a corpus with a trained codec, is
`gpa_jax.codec.tokenization` (it sits above the trainer; this module sits below it).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import grain
import ml_collections
import numpy as np

from gpa_jax import config_utils


@dataclasses.dataclass
class Clips:
    """Waveforms of one corpus split (float32 mono at the codec rate) and what was skipped."""

    audio: list[np.ndarray]
    ids: list[str]
    skipped: dict[str, int]
    skipped_ids: list[str]
    texts: list[str] = dataclasses.field(default_factory=list)
    speakers: list[str] = dataclasses.field(default_factory=list)


def load_clips(
    corpus: str,
    split: str,
    *,
    data_dir: str | None,
    sample_rate: int,
    max_seconds: float = 600.0,
    limit: int | None = None,
    per_speaker: int | None = None,
) -> Clips:
    """Reads a split into memory; bad audio is skipped and counted (never fatal).

    per_speaker: keep only each speaker's first N utterances (in split order), so scores
    weigh every voice alike; limit caps the total.
    """
    from gpa_jax import corpora  # Imported here: pulls in TFDS and registers builders.

    stats = corpora.LoadStats()
    audio, ids, texts, speakers = [], [], [], []
    kept: collections.Counter[str] = collections.Counter()
    for example in corpora.speech_examples(
        corpus,
        split,
        data_dir=data_dir,
        sample_rate=sample_rate,
        max_seconds=max_seconds,
        on_error="skip",
        stats=stats,
    ):
        if per_speaker is not None and kept[example["speaker"]] >= per_speaker:
            continue
        kept[example["speaker"]] += 1
        audio.append(np.asarray(example["audio"], np.float32))
        ids.append(example["id"])
        texts.append(example["text"])
        speakers.append(example["speaker"])
        if limit is not None and len(audio) >= limit:
            break
    if not audio:
        raise ValueError(
            f"{corpus}/{split}: no usable audio (skipped: {dict(stats.skipped)}) in {data_dir}"
        )
    return Clips(audio, ids, dict(stats.skipped), list(stats.skipped_ids), texts, speakers)


class ClipStore:
    """One corpus split's clips on disk: raw float32 samples + index.json, read by memmap.

    Grain worker processes are *spawned* and receive the dataset by pickling, so the crop
    source must not carry the waveforms: a `ClipStore` pickles as its directory and each
    process maps the file itself (the page cache shares the samples). Layout:
        audio.f32    all clips back to back (float32, the codec rate)
        index.json   {"sample_rate", "ids", "texts", "speakers", "offsets", "lengths",
                      "skipped", "skipped_ids"}; written last, so its presence marks the
                      store complete
    """

    def __init__(self, directory: str):
        import json
        import os

        self.directory = os.path.abspath(directory)
        index_path = os.path.join(self.directory, "index.json")
        if not os.path.isfile(index_path):
            raise FileNotFoundError(f"no clip store in {directory!r} (missing index.json)")
        with open(index_path) as f:
            self.index = json.load(f)
        self._audio: np.ndarray | None = None

    @property
    def audio(self) -> np.ndarray:
        if self._audio is None:
            import os

            path = os.path.join(self.directory, "audio.f32")
            self._audio = np.memmap(path, dtype=np.float32, mode="r")
        return self._audio

    def __getstate__(self):
        return {"directory": self.directory, "index": self.index}

    def __setstate__(self, state):
        self.directory, self.index, self._audio = state["directory"], state["index"], None

    def __len__(self) -> int:
        return len(self.index["ids"])

    def __getitem__(self, i: int) -> np.ndarray:
        start, n = int(self.index["offsets"][i]), int(self.index["lengths"][i])
        return np.array(self.audio[start : start + n])

    @property
    def ids(self) -> list[str]:
        return list(self.index["ids"])

    @property
    def texts(self) -> list[str]:
        return list(self.index["texts"])

    def view(self, i: int) -> np.ndarray:
        """Clip i as a read-only memmap slice (no copy)."""
        start, n = int(self.index["offsets"][i]), int(self.index["lengths"][i])
        return self.audio[start : start + n]

    def transcribed(self, max_seconds: float) -> tuple[list[np.ndarray], list[str]]:
        """(waveform views, transcripts) of the clips up to max_seconds long."""
        limit = max_seconds * int(self.index["sample_rate"])
        keep = [i for i, n in enumerate(self.index["lengths"]) if n <= limit]
        return [self.view(i) for i in keep], [self.index["texts"][i] for i in keep]

    @classmethod
    def write(
        cls,
        directory: str,
        ids: Sequence[str],
        audio: Sequence[np.ndarray],
        *,
        sample_rate: int,
        texts: Sequence[str] | None = None,
        speakers: Sequence[str] | None = None,
    ) -> ClipStore:
        """A store of in-memory clips (tests, notebooks, other corpora)."""
        import json
        import os

        if len(ids) != len(audio) or not ids:
            raise ValueError(
                f"need one id per clip and at least one clip, got {len(ids)} ids "
                f"for {len(audio)} clips"
            )
        os.makedirs(directory, exist_ok=True)
        offsets, lengths, offset = [], [], 0
        with open(os.path.join(directory, "audio.f32"), "wb") as f:
            for wav in audio:
                wav = np.ascontiguousarray(wav, np.float32)
                f.write(wav.tobytes())
                offsets.append(offset)
                lengths.append(len(wav))
                offset += len(wav)
        index = {
            "key": None,
            "sample_rate": sample_rate,
            "ids": list(ids),
            "texts": list(texts) if texts is not None else [""] * len(ids),
            "speakers": list(speakers) if speakers is not None else [""] * len(ids),
            "offsets": offsets,
            "lengths": lengths,
            "skipped": {},
            "skipped_ids": [],
        }
        with open(os.path.join(directory, "index.json"), "w") as f:
            json.dump(index, f)
        return cls(directory)

    @classmethod
    def build(
        cls,
        directory: str,
        corpus: str,
        split: str,
        *,
        data_dir: str | None,
        sample_rate: int,
        max_seconds: float,
    ) -> ClipStore:
        """Streams a TFDS split into a store (bad audio skipped and counted); reuses a
        complete store of the same corpus/split/rate/max_seconds."""
        import json
        import os

        from gpa_jax import corpora

        # The silence threshold (audio_io.SILENCE_RMS) is deliberately not in the key: a
        # store built before it existed is reused, so a resumed run keeps its data order.
        key = {
            "corpus": corpus,
            "split": split,
            "sample_rate": sample_rate,
            "max_seconds": float(max_seconds),
        }
        try:
            store = cls(directory)
            if store.index.get("key") == key:
                return store
        except FileNotFoundError:
            pass
        os.makedirs(directory, exist_ok=True)
        index_path = os.path.join(directory, "index.json")
        if os.path.exists(index_path):
            os.remove(index_path)
        stats = corpora.LoadStats()
        ids, texts, speakers, offsets, lengths = [], [], [], [], []
        offset = 0
        with open(os.path.join(directory, "audio.f32"), "wb") as f:
            for example in corpora.speech_examples(
                corpus,
                split,
                data_dir=data_dir,
                sample_rate=sample_rate,
                max_seconds=max_seconds,
                on_error="skip",
                stats=stats,
            ):
                wav = np.ascontiguousarray(example["audio"], np.float32)
                f.write(wav.tobytes())
                ids.append(example["id"])
                texts.append(example["text"])
                speakers.append(example["speaker"])
                offsets.append(offset)
                lengths.append(len(wav))
                offset += len(wav)
        if not ids:
            raise ValueError(
                f"{corpus}/{split}: no usable audio (skipped: {dict(stats.skipped)}) in {data_dir}"
            )
        index = {
            "key": key,
            "sample_rate": sample_rate,
            "ids": ids,
            "texts": texts,
            "speakers": speakers,
            "offsets": offsets,
            "lengths": lengths,
            "skipped": dict(stats.skipped),
            "skipped_ids": list(stats.skipped_ids),
            "bad_records": list(stats.bad_records),
        }
        with open(index_path + ".tmp", "w") as f:
            json.dump(index, f)
        os.replace(index_path + ".tmp", index_path)
        return cls(directory)


class FeatureStore:
    """Precomputed teacher features per utterance: features.f16 [frames, dim] + index.json.

    Written by `launch/precompute_hubert.py` (`FeatureStore.write`); index.json holds
    {"dim", "frame_hop", "source", "ids", "offsets", "frames"}. Pickles as its directory
    (see `ClipStore`).
    """

    def __init__(self, directory: str):
        import json
        import os

        self.directory = os.path.abspath(directory)
        index_path = os.path.join(self.directory, "index.json")
        if not os.path.isfile(index_path):
            raise FileNotFoundError(
                f"no teacher feature store in {directory!r} (missing index.json); make one "
                "with python -m launch.precompute_hubert"
            )
        with open(index_path) as f:
            self.index = json.load(f)
        self.dim = int(self.index["dim"])
        self.frame_hop = int(self.index["frame_hop"])
        self._row = {u: i for i, u in enumerate(self.index["ids"])}
        self._data: np.ndarray | None = None

    def __getstate__(self):
        return {"directory": self.directory}

    def __setstate__(self, state):
        self.__init__(state["directory"])

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            import os

            path = os.path.join(self.directory, "features.f16")
            self._data = np.memmap(path, dtype=np.float16, mode="r").reshape(-1, self.dim)
        return self._data

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._row

    def get(self, utt_id: str) -> np.ndarray:
        """float32 [frames, dim] of one utterance (KeyError naming the id if absent)."""
        if utt_id not in self._row:
            raise KeyError(f"utterance {utt_id!r} has no features in {self.directory}")
        i = self._row[utt_id]
        start, n = int(self.index["offsets"][i]), int(self.index["frames"][i])
        return np.asarray(self.data[start : start + n], np.float32)

    @staticmethod
    def write(
        directory: str,
        items: Any,
        *,
        dim: int,
        frame_hop: int,
        source: dict[str, Any] | None = None,
    ) -> FeatureStore:
        """Writes (id, features [frames, dim]) pairs from the iterable `items`."""
        import json
        import os

        os.makedirs(directory, exist_ok=True)
        ids, offsets, frames = [], [], []
        offset = 0
        with open(os.path.join(directory, "features.f16"), "wb") as f:
            for utt_id, feats in items:
                feats = np.asarray(feats, np.float32)
                if feats.ndim != 2 or feats.shape[1] != dim:
                    raise ValueError(
                        f"features of {utt_id!r} have shape {feats.shape}; want [T, {dim}]"
                    )
                f.write(feats.astype(np.float16).tobytes())
                ids.append(utt_id)
                offsets.append(offset)
                frames.append(len(feats))
                offset += len(feats)
        index = {
            "dim": dim,
            "frame_hop": frame_hop,
            "source": source or {},
            "ids": ids,
            "offsets": offsets,
            "frames": frames,
        }
        with open(os.path.join(directory, "index.json"), "w") as f:
            json.dump(index, f)
        return FeatureStore(directory)


class CropSource:
    """Grain map source: item i = {"audio": clip i} plus its teacher features if any."""

    def __init__(self, clips: Any, features: FeatureStore | None = None):
        self.clips = clips
        self.features = features
        if features is not None:
            ids = getattr(clips, "ids", None)
            if ids is None:
                raise ValueError("teacher features need clips with ids (a ClipStore)")
            missing = [u for u in ids if u not in features]
            if missing:
                raise ValueError(
                    f"{len(missing)} training utterances have no teacher features in "
                    f"{features.directory} (e.g. {missing[:3]}); recompute them for this corpus"
                )

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        item = {"audio": np.asarray(self.clips[i], np.float32)}
        if self.features is not None:
            item["features"] = self.features.get(self.clips.ids[i])
        return item


def random_crop(
    clip: np.ndarray | dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    crop_samples: int,
    frame_hop: int = 0,
) -> dict[str, np.ndarray]:
    """A uniformly placed crop of `crop_samples`; short clips are end-padded with zeros.

    `clip` is a waveform or {"audio", optional "features" [frames, dim]}. With features
    the crop starts on a multiple of `frame_hop` and carries the matching
    crop_samples / frame_hop feature frames ("teacher", zero-padded past the clip).
    """
    item = clip if isinstance(clip, dict) else {"audio": clip}
    wav = item["audio"]
    feats = item.get("features")
    n = len(wav)
    step = frame_hop if feats is not None else 1
    if feats is not None and (frame_hop < 1 or crop_samples % frame_hop):
        raise ValueError(f"crop of {crop_samples} samples is not a multiple of hop {frame_hop}")
    if n >= crop_samples:
        start = step * int(rng.integers(0, (n - crop_samples) // step + 1))
        audio = wav[start : start + crop_samples]
        length = crop_samples
    else:
        start = 0
        audio = np.zeros(crop_samples, np.float32)
        audio[:n] = wav
        length = n
    mask = np.zeros(crop_samples, np.float32)
    mask[:length] = 1.0
    out = {
        "audio": np.asarray(audio, np.float32),
        "mask": mask,
        "lengths": np.asarray(length, np.int32),
    }
    if feats is not None:
        frames = crop_samples // frame_hop
        first = start // frame_hop
        teacher = np.zeros((frames, feats.shape[1]), np.float32)
        got = feats[first : first + frames]
        teacher[: len(got)] = got
        out["teacher"] = teacher
    return out


def crop_dataset(
    clips: Sequence[np.ndarray] | Any,
    *,
    crop_samples: int,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    features: FeatureStore | None = None,
) -> grain.IterDataset:
    """The infinite batched crop pipeline (see the module docstring).

    `clips`: in-memory waveforms or a `ClipStore` (needed for num_workers > 0 with a big
    corpus: workers get the store's path, not the samples). `features`: precomputed
    teacher features, cropped frame-aligned into batch["teacher"].
    """
    if len(clips) == 0:
        raise ValueError("no clips to crop")
    if batch_size < 1 or crop_samples < 1:
        raise ValueError(f"batch_size {batch_size} and crop_samples {crop_samples} must be >= 1")
    if num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
    source = CropSource(clips if isinstance(clips, ClipStore) else list(clips), features)
    hop = features.frame_hop if features is not None else 0
    ds = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)
        .random_map(partial(random_crop, crop_samples=crop_samples, frame_hop=hop), seed=seed + 1)
        .batch(batch_size, drop_remainder=True)
    )
    # Crops are cheap: no read threads in-process, a couple per worker.
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if num_workers == 0 else 2))
    if num_workers > 0:
        config_utils.ensure_flags_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter_ds


def clips_dir(workdir: str, corpus: str, split: str) -> str:
    """<workdir>/codec/clips/<corpus>/<split>: the `ClipStore` the trainer reads.

    The store is memory-mapped, so it is always local: for a gs:// work dir it goes to the
    per-host cache (`gpa_jax.paths.cache_path`)."""
    import os

    from gpa_jax import paths

    return os.path.join(paths.cache_path(workdir), "codec", "clips", *corpus.split("/"), split)


def train_clips(
    config: ml_collections.ConfigDict, data_dir: str | None, workdir: str | None = None
) -> Clips | ClipStore:
    """The training split of `config.data.corpus` at the codec rate (bad audio skipped):
    a `ClipStore` under `clips_dir(workdir, ...)` when a workdir is given, else in memory."""
    d = config.data
    if workdir is not None:
        return ClipStore.build(
            clips_dir(workdir, d.corpus, d.split),
            d.corpus,
            d.split,
            data_dir=data_dir,
            sample_rate=int(config.codec.sample_rate),
            max_seconds=float(d.max_seconds),
        )
    return load_clips(
        d.corpus,
        d.split,
        data_dir=data_dir,
        sample_rate=config.codec.sample_rate,
        max_seconds=d.max_seconds,
    )
