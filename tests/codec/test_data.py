"""Clip/feature stores and the crop pipeline, in process and with grain worker processes."""

import pickle

import numpy as np
import pytest

from gpa_jax.codec.data import ClipStore, FeatureStore, crop_dataset, random_crop


def _clips(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=int(rng.integers(2000, 9000))).astype(np.float32) for _ in range(n)]


@pytest.fixture()
def store(tmp_path):
    clips = _clips()
    ids = [f"utt{i}" for i in range(len(clips))]
    return ClipStore.write(str(tmp_path / "clips"), ids, clips, sample_rate=16000), clips


def test_clip_store_round_trip_and_pickles_without_samples(store):
    s, clips = store
    assert len(s) == len(clips) and s.ids[2] == "utt2"
    for i, clip in enumerate(clips):
        np.testing.assert_array_equal(s[i], clip)
    blob = pickle.dumps(s)
    assert len(blob) < 4096  # the path and index, not the audio
    np.testing.assert_array_equal(pickle.loads(blob)[3], clips[3])
    with pytest.raises(FileNotFoundError, match="no clip store"):
        ClipStore(str(store[0].directory) + "_missing")


def test_multi_worker_loading_matches_in_process(store):
    s, _ = store
    kwargs = dict(crop_samples=3000, batch_size=3, seed=11)
    local = iter(crop_dataset(s, num_workers=0, **kwargs))
    expected = [next(local) for _ in range(4)]
    workers = iter(crop_dataset(s, num_workers=2, **kwargs))
    got = [next(workers) for _ in range(4)]
    for e, g in zip(expected, got, strict=True):
        assert set(e) == set(g) == {"audio", "mask", "lengths"}
        for key in e:
            np.testing.assert_array_equal(e[key], g[key])
    # A worker iterator's state (what the trainer checkpoints) resumes a fresh one exactly.
    state = workers.get_state()
    following = next(workers)
    again = iter(crop_dataset(s, num_workers=2, **kwargs))
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["audio"], following["audio"])
    np.testing.assert_array_equal(following["audio"], next(local)["audio"])
    with pytest.raises(ValueError, match="num_workers"):
        crop_dataset(s, num_workers=-1, **kwargs)


def test_feature_crops_are_frame_aligned(store, tmp_path):
    s, clips = store
    hop = 320
    # Feature frame f of clip i is the constant (i, f): alignment is checkable exactly.
    feats = FeatureStore.write(
        str(tmp_path / "feats"),
        (
            (
                u,
                np.stack([np.full(len(c) // hop, i), np.arange(len(c) // hop)], -1).astype(
                    np.float32
                ),
            )
            for i, (u, c) in enumerate(zip(s.ids, clips, strict=True))
        ),
        dim=2,
        frame_hop=hop,
    )
    assert pickle.loads(pickle.dumps(feats)).get("utt1").shape == (len(clips[1]) // hop, 2)
    rng = np.random.default_rng(0)
    for i in range(len(clips)):
        item = {"audio": clips[i], "features": feats.get(f"utt{i}")}
        crop = random_crop(item, rng, crop_samples=6400, frame_hop=hop)
        teacher = crop["teacher"]
        assert teacher.shape == (20, 2)
        valid = teacher[:, 0] == i
        first = int(teacher[0, 1])
        start = first * hop
        if len(clips[i]) >= 6400:  # the audio crop starts where its first feature frame does
            np.testing.assert_array_equal(crop["audio"], clips[i][start : start + 6400])
        frames = teacher[valid, 1]
        np.testing.assert_array_equal(frames, first + np.arange(len(frames)))
    batch = next(iter(crop_dataset(s, crop_samples=6400, batch_size=2, seed=0, features=feats)))
    assert batch["teacher"].shape == (2, 20, 2)
    with pytest.raises(ValueError, match="not a multiple of hop"):
        random_crop(item, rng, crop_samples=6000, frame_hop=hop)
    with pytest.raises(KeyError, match="utt9"):
        feats.get("utt9")
