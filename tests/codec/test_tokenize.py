"""Tokenization job: trained codec -> token shards of every split, resumable, bad audio counted."""

import math
import os

import numpy as np
import pytest

from gpa_jax import paths
from gpa_jax.codec import data as codec_data
from gpa_jax.codec import decode
from gpa_jax.codec import train as codec_train
from gpa_jax.tasks.token_shards import iter_utterances, read_manifest

CORPUS = "synthetic_speech/tiny"
MAX_SECONDS = 6.0  # the tiny corpus has train clips up to ~8 s: some are skipped
KWARGS = dict(batch_size=8, bucket_frames=300, progress=False)


@pytest.fixture(scope="module")
def job(tiny_workdir):
    from data import corpora

    config, workdir = tiny_workdir
    data_dir = paths.tfds_dir(workdir)
    results = codec_data.tokenize_workdir(config, workdir, max_seconds=MAX_SECONDS, **KWARGS)
    lengths = {}
    for split in results:
        for ex in corpora.speech_examples(CORPUS, split, data_dir=data_dir):
            lengths[(split, ex["id"])] = len(ex["audio"])
    return config, workdir, results, lengths


def test_every_split_is_tokenized_with_the_frame_rule(job):
    config, workdir, results, lengths = job
    out = codec_data.tokens_dir(workdir, CORPUS)
    manifest = read_manifest(out, verify=True)
    assert set(results) == {"train", "validation", "test", "test_unseen_voice"}
    assert manifest["n_q"] == 8 and manifest["codebook_size"] == 256
    assert manifest["frame_rate"] == 50 and manifest["metadata"]["codec_step"] == 1
    codec, _ = codec_train.restore_codec(config, codec_train.checkpoint_dir(workdir))
    total = 0
    for split, entry in results.items():
        assert entry["status"] == "written"
        utts = list(iter_utterances(out, split))
        assert len(utts) == entry["num_utterances"] == manifest["splits"][split]["num_utterances"]
        total += len(utts) + entry["bad_audio"]["count"]
        for utt in utts:
            samples = lengths[(split, utt.id)]
            assert utt.codes.shape == (8, math.ceil(samples / 320))
            assert utt.codes.min() >= 0 and utt.codes.max() < 256
    assert total == len(lengths)
    utt = next(iter_utterances(out, "validation"))
    wav = decode(codec, utt.codes, bucket_frames=300)
    assert wav.shape == (utt.num_frames * 320,) and np.all(np.isfinite(wav))


def test_too_long_audio_is_counted_and_listed_not_fatal(job):
    _, workdir, results, lengths = job
    too_long = sorted(
        i for (s, i), n in lengths.items() if s == "train" and n > MAX_SECONDS * 16000
    )
    assert too_long, "the tiny corpus should have train clips over MAX_SECONDS"
    bad = read_manifest(codec_data.tokens_dir(workdir, CORPUS))["splits"]["train"]["bad_audio"]
    assert bad["count"] == len(too_long) and sorted(bad["ids"]) == too_long
    assert sum(bad["by_kind"].values()) == bad["count"]


def test_rerun_skips_finished_splits(job):
    config, workdir, _, _ = job
    out = codec_data.tokens_dir(workdir, CORPUS)
    shards = sorted(f for f in os.listdir(out) if f.endswith(".array_record"))
    mtimes = [os.path.getmtime(os.path.join(out, f)) for f in shards]
    again = codec_data.tokenize_workdir(config, workdir, max_seconds=MAX_SECONDS, **KWARGS)
    assert {entry["status"] for entry in again.values()} == {"skipped"}
    assert [os.path.getmtime(os.path.join(out, f)) for f in shards] == mtimes
    # A damaged shard makes its split incomplete: only that split is redone.
    victim = next(f for f in shards if f.startswith("test-"))
    with open(os.path.join(out, victim), "ab") as f:
        f.write(b"junk")
    redo = codec_data.tokenize_workdir(
        config, workdir, splits=["test", "validation"], max_seconds=MAX_SECONDS, **KWARGS
    )
    assert redo["test"]["status"] == "written" and redo["validation"]["status"] == "skipped"
    read_manifest(out, verify=True)
