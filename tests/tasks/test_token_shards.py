"""Token shards: write/read round trip, manifest + checksums, rolling, bad records."""

import glob
import json
import os
import tempfile

import msgpack
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


FEATURES = {"kind": "log_mel", "dim": 6}


def _raw_split(directory, records, features=None, version=ts.VERSION):
    """Writes raw records as split "train" with a hand-made manifest (old or odd files)."""
    name = ts.shard_name("train", 0, 1)
    writer = array_record_module.ArrayRecordWriter(str(directory / name), ts.WRITER_OPTIONS)
    for record in records:
        writer.write(record)
    writer.close()
    shards = [{"file": name, "num_records": len(records)}]
    entry = {"num_utterances": len(records), "shards": shards}
    if features is not None:
        entry["features"] = features
    ts.write_manifest(
        str(directory),
        {
            "format": ts.FORMAT,
            "version": version,
            "n_q": 2,
            "codebook_size": 8,
            "frame_rate": 50,
            "splits": {"train": entry},
        },
    )
    return name


def test_features_round_trip_as_float16_with_the_manifest_entry(tmp_path):
    rng = np.random.default_rng(3)
    utts = _utts(6, rng)
    feats = [rng.standard_normal((u[3].shape[1], 6)).astype(np.float32) for u in utts]
    with ts.ShardWriter(
        str(tmp_path), "train", n_q=3, codebook_size=50, frame_rate=50, records_per_shard=4,
        features=FEATURES,
    ) as writer:  # fmt: skip
        for utt, f in zip(utts, feats, strict=True):
            writer.write(*utt, features=f)
    _write(str(tmp_path), "validation", _utts(2, rng))  # codes only, same directory
    manifest = ts.read_manifest(str(tmp_path), verify=True)
    assert manifest["version"] == 2
    assert manifest["splits"]["train"]["features"] == {**FEATURES, "dtype": "float16"}
    assert ts.split_features(manifest, "train") == {**FEATURES, "dtype": "float16"}
    assert manifest["splits"]["validation"]["features"] is None
    assert ts.split_features(manifest, "validation") is None
    read = list(ts.iter_utterances(str(tmp_path), "train"))
    source = ts.UtteranceSource(str(tmp_path), "train")
    for i, (got, want) in enumerate(zip(read, feats, strict=True)):
        assert got.features.dtype == np.float16 and got.features.shape == want.shape
        np.testing.assert_array_equal(got.features, want.astype(np.float16))
        np.testing.assert_array_equal(source[i].features, got.features)
        np.testing.assert_array_equal(got.codes, utts[i][3])
    source.close()
    assert all(u.features is None for u in ts.iter_utterances(str(tmp_path), "validation"))


def test_version_1_records_and_manifests_still_read(tmp_path):

    codes = np.arange(6, dtype=np.int16).reshape(2, 3) % 8
    v1 = msgpack.packb(
        {"v": 1, "id": "old", "speaker": "s", "text": "hi", "shape": [2, 3], "dtype": "<i2",
         "codes": codes.tobytes()},
        use_bin_type=True,
    )  # fmt: skip
    _raw_split(tmp_path, [v1], version=1)
    (utt,) = ts.iter_utterances(str(tmp_path), "train")
    assert utt.id == "old" and utt.features is None
    np.testing.assert_array_equal(utt.codes, codes)
    assert ts.split_features(ts.read_manifest(str(tmp_path)), "train") is None
    # A newer writer adds a split to the old directory; the old split still reads.
    _write(str(tmp_path), "validation", _utts(1, np.random.default_rng(4), n_q=2, codebook=8),
           n_q=2, codebook=8)  # fmt: skip
    assert next(ts.iter_utterances(str(tmp_path), "train")).id == "old"


def test_features_rows_must_match_codes_frames(tmp_path):
    codes = np.zeros((2, 3), np.int16)
    spec = {**FEATURES, "dtype": "float16"}
    good = ts.encode_record(ts.Utterance("a", "s", "hi", codes, np.zeros((3, 6))), np.int16)
    short = ts.encode_record(ts.Utterance("b", "s", "hi", codes, np.zeros((2, 6))), np.int16)
    bare = ts.encode_record(ts.Utterance("c", "s", "hi", codes), np.int16)
    name = _raw_split(tmp_path, [good, short, bare], features=spec)
    utts = ts.iter_utterances(str(tmp_path), "train")
    assert next(utts).features.shape == (3, 6)
    with pytest.raises(ts.ShardError, match=rf"{name}: record 1: features shape \(2, 6\)"):
        next(utts)
    with pytest.raises(ts.ShardError, match=rf"{name}: record 2: record lacks features"):
        ts.UtteranceSource(str(tmp_path), "train")[2]

    torn = msgpack.unpackb(short)
    torn["features"] = torn["features"][:-2]
    with pytest.raises(ts.ShardError, match=r"where: bad features \(11 values do not fill"):
        ts.decode_record(msgpack.packb(torn, use_bin_type=True), "where")


def test_writer_checks_features(tmp_path):
    writer = ts.ShardWriter(
        str(tmp_path), "train", n_q=2, codebook_size=8, frame_rate=50, features=FEATURES
    )
    codes = np.zeros((2, 4), np.int64)
    with pytest.raises(ValueError, match="features missing"):
        writer.write("x", "s", "text", codes)
    with pytest.raises(ValueError, match=r"features shape \(3, 6\), expected \[4 frames, 6\]"):
        writer.write("x", "s", "text", codes, features=np.zeros((3, 6)))
    with pytest.raises(ValueError, match="not finite in float16"):
        writer.write("x", "s", "text", codes, features=np.full((4, 6), 1e6))
    writer.abort()
    plain = ts.ShardWriter(str(tmp_path), "train", n_q=2, codebook_size=8, frame_rate=50)
    with pytest.raises(ValueError, match="features given"):
        plain.write("x", "s", "text", codes, features=np.zeros((4, 6)))
    plain.abort()
    with pytest.raises(ValueError, match="needs a 'kind' and a 'dim'"):
        ts.ShardWriter(str(tmp_path), "t", n_q=2, codebook_size=8, frame_rate=50,
                       features={"kind": "log_mel"})  # fmt: skip


def test_shards_and_manifest_round_trip_on_gs(fake_gcs, tmp_path):
    """Backend: in-memory fake gs:// (tests/fake_gcs.py). ArrayRecord shards are staged
    locally and uploaded; readers get them through the per-host cache (local_path)."""
    from gpa_jax import paths

    directory = f"{fake_gcs}/run/tokens/tiny"
    rng = np.random.default_rng(7)
    utts = _utts(10, rng)
    _write(directory, "train", utts)
    _write(directory, "validation", _utts(3, rng))
    assert paths.listdir(directory) == [
        "manifest.json", *[f"train-{k:05d}-of-00003.array_record" for k in range(3)],
        "validation-00000-of-00001.array_record",
    ]
    manifest = ts.read_manifest(directory, verify=True)
    assert manifest["splits"]["train"]["num_utterances"] == 10
    read = list(ts.iter_utterances(directory, "train"))
    assert [u.id for u in read] == [u[0] for u in utts]
    source = ts.UtteranceSource(directory, "train")
    np.testing.assert_array_equal(source[7].codes, utts[7][3])
    source.close()
    _write(directory, "train", utts[:2])  # rewrite: the old shards go, the cache follows
    assert [u.id for u in ts.iter_utterances(directory, "train")] == ["id00", "id01"]
    assert not any(n.startswith("train-") and "of-00003" in n for n in paths.listdir(directory))
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "gpa_jax-train-*"))  # unstaged

    paths.remove(f"{directory}/validation-00000-of-00001.array_record")
    with pytest.raises(ts.ShardError, match=r"gs://fake-bucket/.*validation-00000.*missing"):
        list(ts.iter_utterances(directory, "validation"))
    with pytest.raises(FileNotFoundError, match="gs://fake-bucket/run/nowhere"):
        ts.read_manifest(f"{fake_gcs}/run/nowhere")


def test_tokenization_resume_check_on_gs(fake_gcs):
    """Backend: in-memory fake gs://. The tokenization job's "is this split finished"
    check (manifest entry + every shard's sha256) reads the bucket."""
    from gpa_jax import paths
    from gpa_jax.codec.tokenization import split_is_complete

    directory = f"{fake_gcs}/w/tokens/c"
    assert not split_is_complete(directory, "train")  # nothing there yet
    _write(directory, "train", _utts(5, np.random.default_rng(3)))
    assert not split_is_complete(directory, "train")  # no bad_audio entry: unfinished
    manifest = ts.read_manifest(directory)
    manifest["splits"]["train"]["bad_audio"] = {"count": 0}
    ts.write_manifest(directory, manifest)
    assert split_is_complete(directory, "train")
    paths.atomic_write_text(f"{directory}/train-00001-of-00002.array_record", b"rewritten")
    assert not split_is_complete(directory, "train")  # checksum mismatch


NOISY = {"seed": 0, "snr_db": [0.0, 15.0], "kinds": ["white", "babble"], "babble_talkers": 3,
         "babble_ids": ["u1"]}  # fmt: skip


def test_noisy_inputs_round_trip_frame_for_frame_with_the_manifest_entry(tmp_path):
    rng = np.random.default_rng(5)
    utts = _utts(5, rng)
    noisy, feats = [], []
    with ts.ShardWriter(str(tmp_path), "train", n_q=3, codebook_size=50, frame_rate=50,
                        records_per_shard=2, features=FEATURES, noisy=NOISY) as writer:  # fmt: skip
        for i, utt in enumerate(utts):
            frames = utt[3].shape[1]
            f = rng.standard_normal((frames, 6)).astype(np.float16)
            n = ts.NoisyInput(rng.integers(0, 50, utt[3].shape), 1.5 * i, "white",
                              rng.standard_normal((frames, 6)).astype(np.float16))  # fmt: skip
            writer.write(*utt, features=f, noisy=n)
            noisy.append(n)
            feats.append(f)
    _write(str(tmp_path), "validation", _utts(2, rng))  # no noisy inputs, same directory
    manifest = ts.read_manifest(str(tmp_path), verify=True)
    assert ts.split_noisy(manifest, "train") == NOISY
    assert ts.split_noisy(manifest, "validation") is None
    source = ts.UtteranceSource(str(tmp_path), "train")
    for i, got in enumerate(ts.iter_utterances(str(tmp_path), "train")):
        want = noisy[i]
        np.testing.assert_array_equal(got.noisy.codes, want.codes)
        np.testing.assert_array_equal(got.noisy.features, want.features)
        np.testing.assert_array_equal(got.features, feats[i])  # the clean rows stay the clean ones
        assert got.noisy.snr_db == want.snr_db and got.noisy.kind == "white"
        np.testing.assert_array_equal(source[i].noisy.codes, want.codes)
    source.close()
    assert all(u.noisy is None for u in ts.iter_utterances(str(tmp_path), "validation"))


def test_writer_checks_noisy_inputs(tmp_path):
    writer = ts.ShardWriter(str(tmp_path), "train", n_q=2, codebook_size=8, frame_rate=50,
                            noisy=NOISY)  # fmt: skip
    codes = np.zeros((2, 4), np.int64)
    with pytest.raises(ValueError, match="noisy input missing"):
        writer.write("x", "s", "text", codes)
    with pytest.raises(ValueError, match=r"x \(noisy input\): codes int64 \(2, 3\), expected"):
        writer.write("x", "s", "text", codes, noisy=ts.NoisyInput(np.zeros((2, 3), np.int64), 5, "white"))
    with pytest.raises(ValueError, match=r"SNR 16.0 dB outside the split's \[0.0, 15.0\]"):
        writer.write("x", "s", "text", codes, noisy=ts.NoisyInput(codes, 16.0, "white"))
    with pytest.raises(ValueError, match=r"noisy input\): codes span \[0, 9\]"):
        writer.write("x", "s", "text", codes, noisy=ts.NoisyInput(codes + np.arange(4) * 3, 5, "pink"))
    with pytest.raises(ValueError, match="features must be given exactly when"):
        writer.write("x", "s", "text", codes, noisy=ts.NoisyInput(codes, 5, "pink", np.zeros((4, 6))))
    writer.abort()
    plain = ts.ShardWriter(str(tmp_path), "train", n_q=2, codebook_size=8, frame_rate=50)
    with pytest.raises(ValueError, match="noisy input given"):
        plain.write("x", "s", "text", codes, noisy=ts.NoisyInput(codes, 5, "white"))
    plain.abort()


def test_a_record_without_the_noisy_input_its_split_lists_is_named(tmp_path):
    codes = np.zeros((2, 3), np.int16)
    good = ts.encode_record(ts.Utterance("a", "s", "hi", codes, None, ts.NoisyInput(codes, 3.0, "pink")), np.int16)
    bare = ts.encode_record(ts.Utterance("b", "s", "hi", codes), np.int16)
    name = _raw_split(tmp_path, [good, bare])
    manifest = ts.read_manifest(str(tmp_path))
    manifest["splits"]["train"]["noisy"] = NOISY
    ts.write_manifest(str(tmp_path), manifest)
    utts = ts.iter_utterances(str(tmp_path), "train")
    assert next(utts).noisy.kind == "pink"
    with pytest.raises(ts.ShardError, match=rf"{name}: record 1: record lacks a noisy input"):
        next(utts)
    torn = msgpack.unpackb(good)
    torn["noisy"]["codes"] = torn["noisy"]["codes"][:-2]
    with pytest.raises(ts.ShardError, match=r"where: bad noisy input \(5 noisy codes"):
        ts.decode_record(msgpack.packb(torn, use_bin_type=True), "where")
