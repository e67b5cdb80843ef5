"""Data jobs with injected faults: an undecodable record, a silent clip, a cut TFRecord shard.

The tiny synthetic corpus is built once (real TFDS shards); each test damages its own copy:
a record rewritten with an odd number of audio bytes (valid TFRecord framing, so only that
record is bad), a record whose audio is replaced by silence, a shard cut in half.
"""

import glob
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from gpa_jax import corpora
from gpa_jax.audio import io as audio_io

CORPUS = "synthetic_speech/tiny"
SPLIT = "validation"  # 8 utterances in one shard


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    from data import synthetic_speech

    data_dir = tmp_path_factory.mktemp("faults_tfds")
    synthetic_speech.build("tiny", data_dir)
    return data_dir


@pytest.fixture
def data_dir(corpus_dir, tmp_path):
    """A private copy of the corpus that the test may damage."""
    copy = tmp_path / "tfds"
    shutil.copytree(corpus_dir, copy)
    return str(copy)


def _shard(data_dir: str, split: str = SPLIT) -> str:
    (path,) = glob.glob(
        os.path.join(data_dir, "synthetic_speech", "tiny", "*", f"*-{split}.tfrecord-*")
    )
    return path


def _rewrite(path: str, index: int, audio: bytes | None = None, odd: bool = False) -> str:
    """Rewrites record `index` of a shard (odd audio length, or new audio bytes); its id."""
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    example = tf.train.Example.FromString(records[index])
    feature = example.features.feature
    data = feature["audio"].bytes_list.value[0]
    feature["audio"].bytes_list.value[0] = data[:-1] if odd else audio
    records[index] = example.SerializeToString()
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return feature["id"].bytes_list.value[0].decode()


def _silence_of(path: str, index: int, rms: float) -> bytes:
    record = next(iter(tf.data.TFRecordDataset(path).skip(index).take(1).as_numpy_iterator()))
    data = tf.train.Example.FromString(record).features.feature["audio"].bytes_list.value[0]
    n = len(data) // 2
    noise = np.random.default_rng(0).standard_normal(n) * rms
    return audio_io.float_to_int16(noise).tobytes()


def _read(data_dir, **kwargs):
    stats = corpora.LoadStats()
    examples = list(
        corpora.speech_examples(
            CORPUS, SPLIT, data_dir=data_dir, on_error="skip", stats=stats, **kwargs
        )
    )
    return examples, stats


def test_undecodable_record_is_named_skipped_and_counted(data_dir):
    path = _shard(data_dir)
    bad_id = _rewrite(path, 2, odd=True)
    examples, stats = _read(data_dir, max_bad_fraction=0.2)
    assert len(examples) == 7 and bad_id not in {e["id"] for e in examples}
    assert stats.skipped == {"undecodable": 1} and stats.skipped_ids == [bad_id]
    (record,) = stats.bad_records
    assert record["corpus"] == CORPUS and record["split"] == SPLIT
    assert record["id"] == bad_id and record["file"] == path and record["count"] == 1
    with pytest.raises(audio_io.AudioError) as excinfo:  # on_error="raise" names it too
        list(corpora.speech_examples(CORPUS, SPLIT, data_dir=data_dir))
    message = str(excinfo.value)
    assert f"{CORPUS}/{SPLIT}/{bad_id}" in message and path in message


def test_near_silent_clip_is_skipped_and_counted(data_dir):
    path = _shard(data_dir)
    silent_id = _rewrite(path, 4, audio=_silence_of(path, 4, rms=3e-4))  # about -70 dBFS
    examples, stats = _read(data_dir, max_bad_fraction=0.2)
    assert len(examples) == 7 and stats.skipped == {"silent": 1}
    assert stats.bad_records[0]["id"] == silent_id and "RMS" in stats.bad_records[0]["reason"]


def test_cut_shard_is_reported_by_path_and_earlier_records_kept(data_dir):
    path = _shard(data_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    examples, stats = _read(data_dir, max_bad_fraction=1.0)
    assert 0 < len(examples) < 8
    (record,) = stats.bad_records
    assert record["kind"] == "truncated_shard" and record["file"] == path
    assert record["count"] == 8 - len(examples) == stats.skipped["truncated_shard"]
    assert "truncated record" in record["reason"]


def test_more_bad_records_than_the_fraction_stop_the_pass(data_dir):
    # Length filters are the caller's choice, not faults: they never stop a pass.
    examples, stats = _read(data_dir, max_bad_fraction=0.0, max_seconds=1e-3)
    assert examples == [] and stats.skipped == {"too_long": 8} and stats.failed == 0
    path = _shard(data_dir)
    bad_id = _rewrite(path, 1, odd=True)
    with pytest.raises(corpora.CorpusError) as excinfo:
        _read(data_dir)  # 1 of 8 is above the default 5%
    message = str(excinfo.value)
    assert "1 of 8 records are bad" in message and "max_bad_fraction=0.05" in message
    assert bad_id in message and path in message
    examples, _ = _read(data_dir, max_bad_fraction=0.125)  # exactly at the fraction: goes on
    assert len(examples) == 7


def test_tokenization_lists_bad_records_in_the_manifest_and_stops_past_the_fraction(
    data_dir, tmp_path
):
    from gpa_jax.codec import tokenization
    from gpa_jax.codec.model import Codec
    from gpa_jax.tasks import token_shards
    from tests.codec.test_train import tiny_config

    path = _shard(data_dir)
    bad_id = _rewrite(path, 2, odd=True)
    silent_id = _rewrite(path, 5, audio=_silence_of(path, 5, rms=1e-4))
    codec = Codec.from_config(tiny_config())  # untrained: the job's bookkeeping is tested
    out = str(tmp_path / "tokens")
    kwargs = dict(
        data_dir=data_dir, splits=[SPLIT], batch_size=8, bucket_frames=600, progress=False
    )
    with pytest.raises(corpora.CorpusError, match="1 of 8 records are bad"):  # stops at once
        tokenization.tokenize_corpus(codec, CORPUS, out, **kwargs)
    assert not tokenization.split_is_complete(out, SPLIT)
    results = tokenization.tokenize_corpus(codec, CORPUS, out, max_bad_fraction=0.25, **kwargs)
    entry = results[SPLIT]
    assert entry["status"] == "written" and entry["num_utterances"] == 6
    manifest = token_shards.read_manifest(out)["splits"][SPLIT]["bad_audio"]
    assert manifest["count"] == 2 and manifest["by_kind"] == {"undecodable": 1, "silent": 1}
    assert manifest["max_bad_fraction"] == 0.25
    listed = {(r["id"], r["kind"], r["file"], r["corpus"], r["split"]) for r in manifest["records"]}
    assert listed == {
        (bad_id, "undecodable", path, CORPUS, SPLIT),
        (silent_id, "silent", path, CORPUS, SPLIT),
    }
    written = {u.id for u in token_shards.iter_utterances(out, SPLIT)}
    assert bad_id not in written and silent_id not in written and len(written) == 6
