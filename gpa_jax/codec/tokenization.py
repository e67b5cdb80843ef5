"""The tokenization job: a TFDS speech corpus -> ArrayRecord token shards of a trained codec.

    tokenize_workdir(config, workdir)   every (or the named) split of config.data.corpus
                                        into <workdir>/tokens/<corpus> (`tokens_dir`)
    tokenize_corpus / tokenize_split    the same for a codec in hand, per corpus / split
    split_is_complete                   whether a split's shards are whole (resume)
    TOKEN_FEATURES / TokenFeatures      per-frame features the shards carry besides codes
    noise_settings                      whether (and how) the shards carry SE noisy inputs

It sits above the codec's trainer and content teacher (it loads their checkpoints), while
`gpa_jax.codec.data` (clip loading, stores and crops) sits below them; finished splits
are skipped, so a rerun resumes.

Speech enhancement (opt-in: config.data.noisy_inputs, `launch.tokenize --noisy_inputs`):
every utterance also gets a noisy version of its clip (`gpa_jax.audio.noise.make_noisy`,
deterministic from data.noise_seed and the utterance id), encoded by the same codec in
the same batches (and featurized like the clean clip), stored as the record's "noisy"
input (`gpa_jax.tasks.token_shards`). Babble is made of the split's first
`gpa_jax.audio.noise.BABBLE_POOL` utterances in corpus order, whose ids the manifest
keeps, so the evaluation can rebuild the very same noisy wav from the recordings. Off,
nothing of this runs and the shards are as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np

from gpa_jax import preemption

if TYPE_CHECKING:
    from gpa_jax.audio.noise import NoiseSettings

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

    from gpa_jax import corpora

    corpora.adapter_for(corpus)  # Registers builders defined in this repo.
    builder = tfds.builder(corpus, data_dir=data_dir)
    return {name: int(info.num_examples) for name, info in builder.info.splits.items()}


def noise_settings(config: ml_collections.ConfigDict) -> NoiseSettings | None:
    """The `gpa_jax.audio.noise.NoiseSettings` of config.data's noisy inputs, None = off."""
    data = config.data
    if not bool(data.get("noisy_inputs", False)):
        return None
    from gpa_jax.audio.noise import SNR_RANGE_DB, NoiseSettings

    return NoiseSettings(
        seed=int(data.get("noise_seed", 0)), snr_db=tuple(data.get("noise_snr_db", SNR_RANGE_DB))
    )


def split_is_complete(
    out_dir: str, split: str, token_features: str = "", noise: NoiseSettings | None = None
) -> bool:
    """True when the manifest lists `split` as finished and its shards match their sha256.

    With `token_features` (config.data.token_features) the split must also carry features
    of that kind: a split tokenized without them is unfinished (it is retokenized, said in
    a log line). A split with features where none are asked for is complete (the tasks
    read features only when asked). Likewise with `noise` (`noise_settings`): the
    split must carry noisy inputs made with those settings.
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
    if noise is not None:
        have = token_shards.split_noisy(manifest, split) or {}
        want = noise.as_dict()
        if {k: have.get(k) for k in want} != want:
            logging.info(
                "tokenize: split %s in %s has noisy inputs %s, not %s: retokenizing it",
                split, out_dir, have or None, want,
            )  # fmt: skip
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
    noise: NoiseSettings | None = None,
) -> dict[str, Any]:
    """Encodes one split into ArrayRecord token shards; bad records are skipped and counted.

    `noise` (`noise_settings`, None = off): each record also carries its SE noisy
    input (module docstring).

    `token_features` (see `TOKEN_FEATURES`): per-frame features stored with each
    utterance's codes, computed from the very clip the codec encodes (decoded, at the
    codec rate, before batch padding) with one row per code frame; "ctc_teacher" needs
    the codec's `teacher` (`TokenFeatures`).

    Returns the split's manifest entry, with `bad_audio` {count, by_kind, ids, records,
    max_bad_fraction} added (its presence marks the split complete for
    `split_is_complete`); `records` names each bad record's corpus, split, id and shard
    file (`gpa_jax.corpora.LoadStats`). More faults than `max_bad_fraction` of the split
    (default `gpa_jax.corpora.MAX_BAD_FRACTION`) stop the job with `CorpusError`.
    """
    import itertools

    from tqdm import tqdm

    from gpa_jax import corpora
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
    examples = corpora.speech_examples(
        corpus,
        split,
        data_dir=data_dir,
        sample_rate=codec.sample_rate,
        max_seconds=max_seconds,
        on_error="skip",
        stats=stats,
        max_bad_fraction=max_bad_fraction,
    )
    pool_clips, noisy_spec = None, None
    if noise is not None:
        from gpa_jax.audio.noise import BABBLE_POOL, BabblePool

        # Babble is made of the split's first utterances (corpus order; module docstring).
        head = list(itertools.islice(examples, BABBLE_POOL))
        pool_clips = BabblePool.from_clips(
            [e["id"] for e in head], [e["speaker"] for e in head], [e["audio"] for e in head]
        )
        noisy_spec = {**noise.as_dict(), "babble_ids": list(pool_clips.ids)}
        examples = itertools.chain(head, examples)

    def _noisy_inputs(group, codes):
        """The group's noisy inputs: mixtures encoded in one batch like the clean clips."""
        from gpa_jax.audio.noise import make_noisy

        made = [make_noisy(e["audio"], e["id"], e["speaker"], pool_clips, noise) for e in group]
        wavs = [m.wav for m in made] + [np.zeros(1, np.float32)] * (batch_size - len(made))
        noisy_codes = api.encode_batch(codec, wavs, codec.sample_rate, bucket_frames=bucket_frames)
        out = []
        for example, m, clean, c in zip(group, made, codes, noisy_codes, strict=False):
            if c.shape != clean.shape:
                raise RuntimeError(
                    f"{split}/{example['id']}: noisy codes {c.shape} but clean {clean.shape}"
                )
            feats = featurizer(m.wav, c.shape[1]) if featurizer.spec is not None else None
            out.append(token_shards.NoisyInput(c, m.snr_db, m.kind, feats))
        return out

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
            noisy = [None] * len(group)
            if noise is not None:
                noisy = _noisy_inputs(group, codes)
            for example, c, n in zip(group, codes, noisy, strict=False):
                feats = None
                if featurizer.spec is not None:
                    feats = featurizer(example["audio"], c.shape[1])
                writer.write(example["id"], example["speaker"], example["text"], c, feats, n)
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
        noisy=noisy_spec,
    ) as writer:
        for example in examples:
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
    noise: NoiseSettings | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Tokenizes every (or the named) split of `corpus`; finished splits are skipped.

    `noise` (`noise_settings`, None = off): records carry SE noisy inputs; a
    finished split without them (or made otherwise) is redone.

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
            if split_is_complete(out_dir, split, token_features, noise):
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
                noise=noise,
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
    noisy_inputs: bool | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """The tokenization job (`launch.tokenize`): restores the latest codec checkpoint of
    `workdir` (or `checkpoint_dir`) and tokenizes `corpus` (default config.data.corpus) from
    `data_dir` (default <workdir>/tfds) into `tokens_dir(workdir, corpus)`, with the
    per-frame features of `token_features` (default config.data.token_features) and, when
    `noisy_inputs` (default config.data.noisy_inputs), the SE noisy inputs."""

    from absl import logging

    from gpa_jax import paths
    from gpa_jax.codec import train

    checkpoint_dir = paths.absolute(checkpoint_dir or train.checkpoint_dir(workdir))
    corpus = corpus or config.data.corpus
    if token_features is None:
        token_features = str(config.data.get("token_features", ""))
    if token_features not in TOKEN_FEATURES:  # fails before the codec is restored
        raise ValueError(f"data.token_features={token_features!r}; supported: {TOKEN_FEATURES}")
    if noisy_inputs is not None:
        config = config.copy_and_resolve_references()
        config.data.noisy_inputs = bool(noisy_inputs)
    noisy = noise_settings(config)  # fails before the codec is restored too
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
        noise=noisy,
        **kwargs,
    )
