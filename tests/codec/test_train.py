"""Codec training: crop pipeline, checkpoint + exact resume (data position included), NaN stop."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from gpa_jax.codec import train as codec_train
from gpa_jax.codec.data import crop_dataset, random_crop
from gpa_jax.config_utils import load_config

# Small enough to compile once per test session (k-means init off: it doubles compile time
# and has its own tests in test_rvq.py); shared with test_tokenize.py.
TINY_OVERRIDES = {
    "data.crop_seconds": 0.25,
    "data.batch_size": 2,
    "codec.kmeans_init": False,
    # The log-mel stand-in teacher and the discriminator keep these tests fast and cover
    # the adversarial path; the CTC teacher has its own tests (test_teacher.py).
    "teacher.kind": "log_mel",
    "teacher.dim": 32,
    # codec_tiny's RVQ-1 is a VQ-bottleneck CTC teacher's codes ('teacher'); these tests
    # use the plain RVQ and recogniser unless they ask (test_teacher.py).
    "codec.quantizer": "rvq",
    "teacher.ctc_vq_codes": 0,
    "loss.adversarial": True,
    "loss.mel_scales": (5, 6, 7),
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.summary_every": 4,
    "train.keep_checkpoints": 2,
    "train.summary_seconds": 0.25,
}


def tiny_config(**overrides):
    return load_config("configs/codec_tiny.py", {**TINY_OVERRIDES, **overrides})


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for f, n in [(150, 6000), (220, 2500), (300, 9000), (90, 5000)]:
        t = np.arange(n) / 16000
        out.append((0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.normal(size=n)).astype(np.float32))
    return out


def test_crops_pad_short_clips_and_resume_from_state():
    clips = _clips()
    ds = crop_dataset(clips, crop_samples=4000, batch_size=3, seed=7)
    it = iter(ds)
    first = [next(it) for _ in range(3)]
    batch = first[0]
    assert batch["audio"].shape == (3, 4000) and batch["mask"].shape == (3, 4000)
    assert batch["lengths"].dtype == np.int32
    np.testing.assert_array_equal(batch["mask"].sum(1), batch["lengths"])
    state = it.get_state()
    expected = next(it)
    again = iter(crop_dataset(clips, crop_samples=4000, batch_size=3, seed=7))
    np.testing.assert_array_equal(next(again)["audio"], first[0]["audio"])  # seeded
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["audio"], expected["audio"])
    short = random_crop(clips[1], np.random.default_rng(0), crop_samples=4000)
    assert short["lengths"] == 2500 and np.all(short["audio"][2500:] == 0)
    np.testing.assert_array_equal(short["audio"][:2500], clips[1])


def _params(codec) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(codec, nnx.Param))]


def test_checkpoint_and_exact_resume(tmp_path):
    clips = _clips()
    seen_straight, seen_resumed = {}, {}

    def record(into):
        return lambda step, batch: into.__setitem__(step, batch["audio"].copy())

    straight = str(tmp_path / "straight")
    result = codec_train.train(
        tiny_config(**{"train.num_steps": 4}),
        straight,
        clips=clips,
        summary_clip=clips[0],
        on_batch=record(seen_straight),
        progress=False,
    )
    assert result.step == 4 and result.checkpoint_steps == [2, 4]
    assert np.isfinite(result.metrics["loss/total"]) and "d_loss" in result.metrics
    assert {"perplexity/rvq1", "active_codes/mean", "loss/mel", "loss/distill"} <= set(
        result.metrics
    )
    audio = os.listdir(os.path.join(straight, "codec", "audio"))
    assert {"00000004_original.wav", "00000004_full_rvq.wav", "00000004_rvq1_only.wav"} <= set(
        audio
    )

    resumed = str(tmp_path / "resumed")
    first = codec_train.train(
        tiny_config(**{"train.num_steps": 2}), resumed, clips=clips, progress=False
    )
    assert first.checkpoint_steps == [2]
    second = codec_train.train(
        tiny_config(**{"train.num_steps": 4}),
        resumed,
        clips=clips,
        on_batch=record(seen_resumed),
        progress=False,
    )
    assert second.step == 4 and sorted(seen_resumed) == [3, 4]
    for step in (3, 4):  # the resumed run continues the data stream where it stopped
        np.testing.assert_array_equal(seen_resumed[step], seen_straight[step])

    config = tiny_config()
    a, step_a = codec_train.restore_codec(config, codec_train.checkpoint_dir(straight))
    b, step_b = codec_train.restore_codec(config, codec_train.checkpoint_dir(resumed))
    assert step_a == step_b == 4
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # Codebook buffers and the quantizer's RNG stream come back too.
    np.testing.assert_allclose(
        np.asarray(a.quantizer.embed[...]), np.asarray(b.quantizer.embed[...]), rtol=1e-5, atol=1e-6
    )
    assert int(a.quantizer.rngs.quantizer.count[...]) == 4
    fresh = codec_train.Codec.from_config(config)
    assert not np.allclose(_params(fresh)[0], _params(a)[0])


def test_nan_loss_stops_naming_the_step(tmp_path):
    clips = _clips()
    clips[1] = np.full_like(clips[1], np.nan)
    with pytest.raises(FloatingPointError, match=r"non-finite total.* at step 1 "):
        codec_train.train(
            tiny_config(**{"train.num_steps": 3}), str(tmp_path), clips=clips, progress=False
        )
    assert not os.listdir(codec_train.checkpoint_dir(str(tmp_path)))


def test_config_has_train_section_and_rejects_hubert_without_features():
    config = load_config("configs/codec_paper.py")
    assert config.train.keep_checkpoints >= 1 and config.data.num_workers == 0
    assert codec_train.total_steps(config) == config.optimizer.num_train_steps
    with pytest.raises(ValueError, match="teacher.path"):
        codec_train.check_trainable(config)
    with pytest.raises(ValueError, match="teacher.kind 'hubrt'"):
        codec_train.check_trainable(load_config("configs/codec_paper.py", ["teacher.kind=hubrt"]))
