"""Codec training data: seeded random fixed-length crops of a TFDS speech corpus (grain).

The waveforms are read once (through `data.corpora.speech_examples`, bad audio skipped and
counted) into memory: the codec only needs audio, and the synthetic corpora (and a few
hours of a public one) fit. The pipeline is then pure index arithmetic on a grain
`MapDataset`, so every batch is a function of (config seed, step):

    source(clips) -> shuffle(seed) -> repeat (reshuffled per epoch) -> random crop(seed)
      -> batch(batch_size, drop_remainder) -> IterDataset [-> mp_prefetch(num_workers)]

A crop is `crop_seconds` long; a shorter clip is zero-padded at the end and its `mask`
marks the real samples (`lengths` counts them), so the loss and the encoder BiLSTM can
ignore the padding. The iterator's `get_state()` / `set_state()` (a small dict) is saved
with the model checkpoint, so a resumed run sees exactly the batches a straight run would.
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

from gpa_jax import config_utils, preemption


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
    from data import corpora  # Imported here: pulls in TFDS and registers builders.

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

        from data import corpora

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


# --- the tokenization job ----------------------------------------------------------------

# config.data.token_features: what the token shards carry per codec frame besides codes,
# the LM's continuous audio input (model.audio_input="continuous"):
#   ""             nothing (codes only)
#   "log_mel"      `gpa_jax.audio.features.token_aligned_log_mel` of the clip the codec
#                  encodes (LauraGPT's input)
#   "ctc_teacher"  the codec's CTC content teacher's features of that clip
#                  (`gpa_jax.codec.teacher.content_rows`, teacher.dim wide): a content
#                  encoder trained on the corpus transcripts, as LauraGPT/GPA feed a
#                  pretrained speech encoder's output
TOKEN_FEATURES = ("", "log_mel", "ctc_teacher")


class TokenFeatures:
    """The per-frame features of one kind for clips this codec encodes.

    `spec` is the shards' description ({"kind", "dim"}, None for ""); calling it on a clip
    and its number of code frames gives float32 [frames, dim]. `teacher` (a
    `gpa_jax.codec.teacher.ContentTeacher`) is needed for "ctc_teacher" only.
    """

    def __init__(self, kind: str, codec: Any, teacher: Any = None):
        if kind not in TOKEN_FEATURES:
            raise ValueError(f"data.token_features={kind!r}; supported: {TOKEN_FEATURES}")
        self.kind, self.codec, self.teacher = kind, codec, teacher
        self.spec: dict[str, Any] | None = None
        if kind == "log_mel":
            from gpa_jax.audio.features import MelConfig

            mel = MelConfig()
            if codec.sample_rate != mel.sample_rate or codec.hop_length % mel.hop_length:
                raise ValueError(
                    f"data.token_features='log_mel' needs a {mel.sample_rate} Hz codec whose hop "
                    f"is a multiple of {mel.hop_length} samples; this codec has "
                    f"{codec.sample_rate} Hz, hop {codec.hop_length}"
                )
            self.spec = {"kind": kind, "dim": (codec.hop_length // mel.hop_length) * mel.n_mels}
        elif kind == "ctc_teacher":
            if teacher is None:
                raise ValueError(
                    "data.token_features='ctc_teacher' needs the codec's trained CTC teacher"
                )
            if int(teacher.hop) != int(codec.hop_length):
                raise ValueError(
                    f"the CTC teacher's hop {teacher.hop} is not the codec's {codec.hop_length}"
                )
            self.spec = {"kind": kind, "dim": int(teacher.dim)}

    def __call__(self, wav: np.ndarray, frames: int) -> np.ndarray:
        if self.kind == "log_mel":
            from gpa_jax.audio.features import token_aligned_log_mel

            return token_aligned_log_mel(wav, frames, codec_hop=self.codec.hop_length)
        if self.kind == "ctc_teacher":
            from gpa_jax.codec.teacher import content_rows

            return content_rows(self.teacher, wav, frames)
        raise ValueError("token_features='' has no features to compute")


def token_features_for(
    kind: str, codec: Any, config: ml_collections.ConfigDict, workdir: str
) -> TokenFeatures:
    """`TokenFeatures` of `kind` for a codec trained in `workdir` with `config` (loads the
    CTC teacher from its directory when the kind needs it)."""
    teacher = None
    if kind == "ctc_teacher":
        from gpa_jax.codec import teacher as teacher_lib

        teacher = teacher_lib.load_teacher(config, teacher_lib.teacher_dir(config, workdir))
    return TokenFeatures(kind, codec, teacher)


def corpus_splits(corpus: str, data_dir: str | None) -> dict[str, int]:
    """{split: number of examples} of a prepared TFDS speech corpus."""
    import tensorflow_datasets as tfds

    from data import corpora

    corpora.adapter_for(corpus)  # Registers builders defined in this repo.
    builder = tfds.builder(corpus, data_dir=data_dir)
    return {name: int(info.num_examples) for name, info in builder.info.splits.items()}


def split_is_complete(out_dir: str, split: str, token_features: str = "") -> bool:
    """True when the manifest lists `split` as finished and its shards match their sha256.

    With `token_features` (config.data.token_features) the split must also carry features
    of that kind: a split tokenized without them is unfinished (it is retokenized, said in
    a log line). A split with features where none are asked for is complete (the tasks
    read features only when asked).
    """
    import hashlib
    import os

    from absl import logging

    from gpa_jax import paths
    from gpa_jax.tasks import token_shards

    try:
        manifest = token_shards.read_manifest(out_dir)
    except (FileNotFoundError, token_shards.ShardError):
        return False
    entry = manifest["splits"].get(split)
    if entry is None or "bad_audio" not in entry:  # bad_audio is written last.
        return False
    if token_features:
        have = token_shards.split_features(manifest, split)
        if (have or {}).get("kind") != token_features:
            logging.info(
                "tokenize: split %s in %s has features %s, not data.token_features=%r: "
                "retokenizing it",
                split,
                out_dir,
                have,
                token_features,
            )
            return False
    for shard in entry["shards"]:
        path = os.path.join(out_dir, shard["file"])
        if not paths.isfile(path):
            return False
        digest = hashlib.sha256()
        with paths.open_file(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != shard["sha256"]:
            return False
    return True


SORT_POOL_BATCHES = 16


def tokenize_split(
    codec: Any,
    corpus: str,
    split: str,
    out_dir: str,
    *,
    data_dir: str | None,
    batch_size: int = 16,
    bucket_frames: int = 25,
    max_seconds: float = 600.0,
    records_per_shard: int = 4096,
    metadata: dict[str, Any] | None = None,
    total: int | None = None,
    progress: bool = True,
    max_bad_fraction: float | None = None,
    token_features: str = "",
    teacher: Any = None,
) -> dict[str, Any]:
    """Encodes one split into ArrayRecord token shards; bad records are skipped and counted.

    `token_features` (see `TOKEN_FEATURES`): per-frame features stored with each
    utterance's codes, computed from the very clip the codec encodes (decoded, at the
    codec rate, before batch padding) with one row per code frame; "ctc_teacher" needs
    the codec's `teacher` (`TokenFeatures`).

    Returns the split's manifest entry, with `bad_audio` {count, by_kind, ids, records,
    max_bad_fraction} added (its presence marks the split complete for
    `split_is_complete`); `records` names each bad record's corpus, split, id and shard
    file (`data.corpora.LoadStats`). More faults than `max_bad_fraction` of the split
    (default `data.corpora.MAX_BAD_FRACTION`) stop the job with `CorpusError`.
    """
    from tqdm import tqdm

    from data import corpora
    from gpa_jax.codec import api
    from gpa_jax.tasks import token_shards

    stats = corpora.LoadStats()
    if max_bad_fraction is None:
        max_bad_fraction = corpora.MAX_BAD_FRACTION
    frame_rate = codec.sample_rate / codec.hop_length
    featurizer = TokenFeatures(token_features, codec, teacher)
    bar = tqdm(total=total, desc=f"tokenize {split}", unit="utt", disable=not progress)
    pending: list[dict[str, Any]] = []

    # Clips are gathered into pools of SORT_POOL batches and encoded shortest first, so a
    # batch pads to a length close to its members' (half the work of batching in corpus
    # order on the synthetic corpus, whose clips run 1.5-11 s) and few length buckets
    # compile.
    pool = batch_size * SORT_POOL_BATCHES

    def flush(writer: token_shards.ShardWriter) -> None:
        if not pending:
            return
        pending.sort(key=lambda p: len(p["audio"]))
        for start in range(0, len(pending), batch_size):
            group = pending[start : start + batch_size]
            wavs = [p["audio"] for p in group]
            # A short final batch is filled with 1-sample clips: one compile per batch size.
            wavs += [np.zeros(1, np.float32)] * (batch_size - len(wavs))
            codes = api.encode_batch(codec, wavs, codec.sample_rate, bucket_frames=bucket_frames)
            for example, c in zip(group, codes, strict=False):
                feats = None
                if featurizer.spec is not None:
                    feats = featurizer(example["audio"], c.shape[1])
                writer.write(example["id"], example["speaker"], example["text"], c, feats)
            bar.update(len(group))
        pending.clear()
        bar.update(stats.read + sum(stats.skipped.values()) - bar.n)  # skipped ones count too

    with token_shards.ShardWriter(
        out_dir,
        split,
        n_q=codec.n_q,
        codebook_size=codec.codebook_size,
        frame_rate=frame_rate,
        records_per_shard=records_per_shard,
        metadata=metadata,
        features=featurizer.spec,
    ) as writer:
        for example in corpora.speech_examples(
            corpus,
            split,
            data_dir=data_dir,
            sample_rate=codec.sample_rate,
            max_seconds=max_seconds,
            on_error="skip",
            stats=stats,
            max_bad_fraction=max_bad_fraction,
        ):
            pending.append(example)
            if len(pending) == pool:
                flush(writer)
        flush(writer)
    bar.update(stats.read + sum(stats.skipped.values()) - bar.n)
    bar.close()
    manifest = token_shards.read_manifest(out_dir)
    entry = manifest["splits"][split]
    entry["bad_audio"] = {
        "count": int(sum(stats.skipped.values())),
        "by_kind": dict(stats.skipped),
        "ids": list(stats.skipped_ids),
        "records": list(stats.bad_records),
        "max_bad_fraction": max_bad_fraction,
    }
    token_shards.write_manifest(out_dir, manifest)
    return entry


def tokenize_corpus(
    codec: Any,
    corpus: str,
    out_dir: str,
    *,
    data_dir: str | None,
    splits: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    token_features: str = "",
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Tokenizes every (or the named) split of `corpus`; finished splits are skipped.

    `token_features` (`TOKEN_FEATURES`, config.data.token_features): per-frame features
    stored with the codes (a `teacher=` kwarg for "ctc_teacher"); a finished split with
    other features or none is redone (`split_is_complete`).

    Returns {split: {"status": "written" | "skipped", **manifest entry}}. Tokens of one
    directory must come from one codec: a manifest naming another codec checkpoint or
    step (in `metadata`) is an error rather than a silent mix. SIGTERM / SIGINT stop it at
    once (`gpa_jax.preemption.Preempted`, exit 143 / 130) with a message naming the splits
    kept and the one a rerun resumes at.
    """
    from gpa_jax.tasks import token_shards

    available = corpus_splits(corpus, data_dir)
    wanted = list(splits) if splits else list(available)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ValueError(f"{corpus} has no split(s) {unknown}; it has {sorted(available)}")
    metadata = dict(metadata or {})
    try:
        existing = token_shards.read_manifest(out_dir).get("metadata", {})
    except FileNotFoundError:
        existing = {}
    for key in ("codec_checkpoint", "codec_step", "corpus"):
        if key in existing and key in metadata and existing[key] != metadata[key]:
            raise ValueError(
                f"{out_dir} holds tokens made with {key}={existing[key]!r}, not "
                f"{metadata[key]!r}: tokenize into another directory or delete it"
            )
    results: dict[str, dict[str, Any]] = {}
    current: list[str] = []

    def kept() -> str:  # what a SIGTERM/SIGINT leaves, said when it comes
        done = ", ".join(results) or "none"
        return (
            f"finished splits are kept in {out_dir} ({done}); split {current[-1]} was not "
            "finished and none of it was kept; rerun the same command to resume at it"
        )

    # Immediate: a split's shards are renamed into place and listed in the manifest only
    # when it is complete (ShardWriter), so stopping anywhere loses only the split in hand.
    with preemption.watch("tokenization", immediate=True, note=kept):
        for split in wanted:
            current.append(split)
            if split_is_complete(out_dir, split, token_features):
                entry = token_shards.read_manifest(out_dir)["splits"][split]
                results[split] = {"status": "skipped", **entry}
                continue
            entry = tokenize_split(
                codec,
                corpus,
                split,
                out_dir,
                data_dir=data_dir,
                metadata=metadata,
                total=available[split],
                token_features=token_features,
                **kwargs,
            )
            results[split] = {"status": "written", **entry}
    return results


def tokens_dir(workdir: str, corpus: str) -> str:
    """<workdir>/tokens/<corpus>, e.g. runs/demo/tokens/synthetic_speech/tiny."""
    import os

    return os.path.join(workdir, "tokens", *corpus.split("/"))


def tokenize_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    checkpoint_dir: str | None = None,
    corpus: str | None = None,
    splits: Sequence[str] | None = None,
    data_dir: str | None = None,
    max_seconds: float | None = None,
    token_features: str | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """The tokenization job (`launch.tokenize`): restores the latest codec checkpoint of
    `workdir` (or `checkpoint_dir`) and tokenizes `corpus` (default config.data.corpus) from
    `data_dir` (default <workdir>/tfds) into `tokens_dir(workdir, corpus)`, with the
    per-frame features of `token_features` (default config.data.token_features)."""

    from absl import logging

    from gpa_jax import paths
    from gpa_jax.codec import train

    checkpoint_dir = paths.absolute(checkpoint_dir or train.checkpoint_dir(workdir))
    corpus = corpus or config.data.corpus
    if token_features is None:
        token_features = str(config.data.get("token_features", ""))
    if token_features not in TOKEN_FEATURES:  # fails before the codec is restored
        raise ValueError(f"data.token_features={token_features!r}; supported: {TOKEN_FEATURES}")
    codec, step = train.restore_codec(config, checkpoint_dir)
    logging.info("tokenize: codec step %d from %s", step, checkpoint_dir)
    if token_features == "ctc_teacher":
        kwargs["teacher"] = token_features_for(token_features, codec, config, workdir).teacher
    return tokenize_corpus(
        codec,
        corpus,
        tokens_dir(workdir, corpus),
        data_dir=data_dir or paths.tfds_dir(workdir),
        splits=splits,
        metadata={"codec_checkpoint": checkpoint_dir, "codec_step": step, "corpus": corpus},
        max_seconds=config.data.max_seconds if max_seconds is None else max_seconds,
        token_features=token_features,
        **kwargs,
    )
