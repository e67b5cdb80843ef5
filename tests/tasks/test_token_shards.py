"""Token shards: write/read round trip, manifest + checksums, rolling, bad records."""

import json
import os

import numpy as np
import pytest
from array_record.python import array_record_module

from gpa_jax.tasks import token_shards as ts


def _utts(n, rng, n_q=3, codebook=50):
    return [
        (
            f"id{i:02d}",
            f"spk{i % 3}",
            f"sentence number {i}",
            rng.integers(0, codebook, size=(n_q, int(rng.integers(1, 30)))),
        )
        for i in range(n)
    ]


def _write(directory, split, utts, n_q=3, codebook=50, per_shard=4):
    with ts.ShardWriter(
        directory,
        split,
        n_q=n_q,
        codebook_size=codebook,
        frame_rate=50,
        records_per_shard=per_shard,
        metadata={"codec": "test"},
    ) as writer:
        for utt in utts:
            writer.write(*utt)


def test_round_trip_manifest_and_random_access(tmp_path):
    rng = np.random.default_rng(0)
    utts = _utts(10, rng)
    _write(str(tmp_path), "train", utts)
    names = sorted(p for p in os.listdir(tmp_path) if p.endswith(".array_record"))
    assert names == [f"train-{k:05d}-of-00003.array_record" for k in range(3)]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    manifest = ts.read_manifest(str(tmp_path), verify=True)
    assert (manifest["n_q"], manifest["codebook_size"], manifest["frame_rate"]) == (3, 50, 50)
    assert manifest["codes_dtype"] == "int16" and manifest["metadata"] == {"codec": "test"}
    entry = manifest["splits"]["train"]
    assert entry["num_utterances"] == 10 and entry["num_speakers"] == 3
    assert entry["num_frames"] == sum(u[3].shape[1] for u in utts)
    assert [s["num_records"] for s in entry["shards"]] == [4, 4, 2]
    assert all(len(s["sha256"]) == 64 for s in entry["shards"])

    read = list(ts.iter_utterances(str(tmp_path), "train"))
    assert [(u.id, u.speaker, u.text) for u in read] == [u[:3] for u in utts]
    for got, want in zip(read, utts, strict=True):
        np.testing.assert_array_equal(got.codes, want[3])
        assert got.codes.dtype == np.int16

    source = ts.UtteranceSource(str(tmp_path), "train")
    assert len(source) == 10
    for i in (9, 0, 5, -1):
        np.testing.assert_array_equal(source[i].codes, utts[i][3])
    with pytest.raises(IndexError):
        source[10]
    source.close()


def test_splits_accumulate_and_rewrite_replaces(tmp_path):
    rng = np.random.default_rng(1)
    _write(str(tmp_path), "train", _utts(9, rng))
    _write(str(tmp_path), "validation", _utts(3, rng))
    _write(str(tmp_path), "train", _utts(2, rng))  # Rewrite: 1 shard instead of 3.
    manifest = ts.read_manifest(str(tmp_path), verify=True)
    assert sorted(manifest["splits"]) == ["train", "validation"]
    assert manifest["splits"]["train"]["num_utterances"] == 2
    shards = sorted(p for p in os.listdir(tmp_path) if p.startswith("train-"))
    assert shards == ["train-00000-of-00001.array_record"]
    with pytest.raises(ts.ShardError, match="n_q=3 but this writer has n_q=4"):
        _write(str(tmp_path), "test", _utts(1, rng, n_q=4), n_q=4)


def test_checksum_mismatch_names_the_shard(tmp_path):
    _write(str(tmp_path), "train", _utts(5, np.random.default_rng(2)))
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"]["train"]["shards"][1]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    ts.read_manifest(str(tmp_path))  # Fine without verification.
    with pytest.raises(ts.ShardError, match=r"train-00001-of-00002.array_record: sha256"):
        ts.read_manifest(str(tmp_path), verify=True)


def test_bad_record_names_file_and_index(tmp_path):
    good = ts.encode_record(ts.Utterance("a", "s", "hi", np.zeros((2, 3), np.int16)), np.int16)
    truncated = ts.encode_record(
        ts.Utterance("b", "s", "hi", np.zeros((2, 3), np.int16)), np.int16
    )[:-4]
    name = ts.shard_name("train", 0, 1)
    writer = array_record_module.ArrayRecordWriter(str(tmp_path / name), ts.WRITER_OPTIONS)
    for record in (good, b"\xc1 not msgpack", truncated):
        writer.write(record)
    writer.close()
    ts.write_manifest(
        str(tmp_path),
        {
            "format": ts.FORMAT,
            "version": 1,
            "n_q": 2,
            "codebook_size": 8,
            "frame_rate": 50,
            "splits": {
                "train": {
                    "num_utterances": 3,
                    "shards": [{"file": name, "num_records": 3, "sha256": ""}],
                }
            },
        },
    )
    utts = ts.iter_utterances(str(tmp_path), "train")
    assert next(utts).id == "a"
    with pytest.raises(ts.ShardError, match=rf"{name}: record 1: not a msgpack token record"):
        next(utts)
    with pytest.raises(ts.ShardError, match=rf"{name}: record 2: "):
        ts.UtteranceSource(str(tmp_path), "train")[2]
    with pytest.raises(KeyError, match="split 'test' not in"):
        list(ts.iter_utterances(str(tmp_path), "test"))


def test_writer_rejects_bad_input_and_cleans_up_on_error(tmp_path):
    writer = ts.ShardWriter(str(tmp_path), "train", n_q=2, codebook_size=8, frame_rate=50)
    ok = np.zeros((2, 4), np.int64)
    writer.write("x", "s", "fine text", ok)
    with pytest.raises(ValueError, match="duplicate utterance id"):
        writer.write("x", "s", "fine text", ok)
    with pytest.raises(ValueError, match=r"codes shape \(3, 4\)"):
        writer.write("y", "s", "fine text", np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="outside"):
        writer.write("y", "s", "fine text", ok + 8)
    with pytest.raises(ValueError, match="not normalised"):
        writer.write("y", "s", "Not Normalised!", ok)
    writer.abort()
    with (
        pytest.raises(RuntimeError),
        ts.ShardWriter(str(tmp_path), "train", n_q=2, codebook_size=8, frame_rate=50) as w,
    ):
        w.write("z", "s", "text", ok)
        raise RuntimeError("job failed")
    assert os.listdir(tmp_path) == []  # No shards, no temp files, no manifest.


def test_large_codebooks_use_int32(tmp_path):
    codes = np.array([[0, 40_000, 65_535]])
    with ts.ShardWriter(str(tmp_path), "train", n_q=1, codebook_size=65_536, frame_rate=75) as w:
        w.write("big", "s", "text", codes)
    (utt,) = ts.iter_utterances(str(tmp_path), "train")
    assert utt.codes.dtype == np.int32
    np.testing.assert_array_equal(utt.codes, codes)
