"""Tokenization job: trained codec -> token shards of every split, resumable, bad audio counted.

The tiny config asks for token features (data.token_features="log_mel"), so the job
here also writes each utterance's token-aligned log-mel.
"""

import json
import logging
import math
import os

import numpy as np
import pytest

from gpa_jax import paths
from gpa_jax.audio.features import TOKEN_FEATURE_DIM, token_aligned_log_mel
from gpa_jax.codec import decode, tokenization
from gpa_jax.codec import train as codec_train
from gpa_jax.tasks.token_shards import iter_utterances, read_manifest

CORPUS = "synthetic_speech/tiny"
MAX_SECONDS = 6.0  # the tiny corpus has train clips up to ~8 s: some are skipped
KWARGS = dict(batch_size=8, bucket_frames=300, progress=False)


@pytest.fixture(scope="module")
def job(tiny_workdir):
    from gpa_jax import corpora

    config, workdir = tiny_workdir
    data_dir = paths.tfds_dir(workdir)
    results = tokenization.tokenize_workdir(config, workdir, max_seconds=MAX_SECONDS, **KWARGS)
    lengths = {}
    for split in results:
        for ex in corpora.speech_examples(CORPUS, split, data_dir=data_dir):
            lengths[(split, ex["id"])] = len(ex["audio"])
    return config, workdir, results, lengths


def test_every_split_is_tokenized_with_the_frame_rule(job):
    config, workdir, results, lengths = job
    out = tokenization.tokens_dir(workdir, CORPUS)
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
    bad = read_manifest(tokenization.tokens_dir(workdir, CORPUS))["splits"]["train"]["bad_audio"]
    assert bad["count"] == len(too_long) and sorted(bad["ids"]) == too_long
    assert sum(bad["by_kind"].values()) == bad["count"]


def test_shards_carry_the_token_aligned_log_mel_of_each_clip(job):
    from gpa_jax import corpora

    config, workdir, results, _ = job
    assert config.data.token_features == "log_mel"
    out = tokenization.tokens_dir(workdir, CORPUS)
    manifest = read_manifest(out)
    spec = {"kind": "log_mel", "dim": TOKEN_FEATURE_DIM, "dtype": "float16"}
    assert all(manifest["splits"][split]["features"] == spec for split in results)
    clips = {
        ex["id"]: ex["audio"]
        for ex in corpora.speech_examples(CORPUS, "validation", data_dir=paths.tfds_dir(workdir))
    }
    for utt in iter_utterances(out, "validation"):
        assert utt.features.shape == (utt.num_frames, TOKEN_FEATURE_DIM)
        want = token_aligned_log_mel(clips[utt.id], utt.num_frames).astype(np.float16)
        np.testing.assert_array_equal(utt.features, want)


def test_a_split_without_the_asked_for_features_is_redone(job, caplog):
    config, workdir, _, _ = job
    out = tokenization.tokens_dir(workdir, CORPUS)
    path = os.path.join(out, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest["splits"]["validation"]["features"] = None  # as if tokenized without them
    with open(path, "w") as f:
        json.dump(manifest, f)
    assert tokenization.split_is_complete(out, "validation")  # none asked for: complete
    with caplog.at_level(logging.INFO):
        assert not tokenization.split_is_complete(out, "validation", "log_mel")
    assert "not data.token_features='log_mel': retokenizing" in caplog.text
    redo = tokenization.tokenize_workdir(
        config, workdir, splits=["validation", "test"], max_seconds=MAX_SECONDS, **KWARGS
    )
    assert redo["validation"]["status"] == "written" and redo["test"]["status"] == "skipped"
    assert redo["validation"]["features"]["kind"] == "log_mel"
    assert all(u.features is not None for u in iter_utterances(out, "validation"))
    # A split with features is complete for a job that asks for none.
    plain = tokenization.tokenize_workdir(
        config, workdir, splits=["test"], token_features="", max_seconds=MAX_SECONDS, **KWARGS
    )
    assert plain["test"]["status"] == "skipped"
    with pytest.raises(ValueError, match="data.token_features='mfcc'; supported"):
        tokenization.tokenize_workdir(config, workdir, token_features="mfcc", **KWARGS)


def test_rerun_skips_finished_splits(job):
    config, workdir, _, _ = job
    out = tokenization.tokens_dir(workdir, CORPUS)
    shards = sorted(f for f in os.listdir(out) if f.endswith(".array_record"))
    mtimes = [os.path.getmtime(os.path.join(out, f)) for f in shards]
    again = tokenization.tokenize_workdir(config, workdir, max_seconds=MAX_SECONDS, **KWARGS)
    assert {entry["status"] for entry in again.values()} == {"skipped"}
    assert [os.path.getmtime(os.path.join(out, f)) for f in shards] == mtimes
    # A damaged shard makes its split incomplete: only that split is redone.
    victim = next(f for f in shards if f.startswith("test-"))
    with open(os.path.join(out, victim), "ab") as f:
        f.write(b"junk")
    redo = tokenization.tokenize_workdir(
        config, workdir, splits=["test", "validation"], max_seconds=MAX_SECONDS, **KWARGS
    )
    assert redo["test"]["status"] == "written" and redo["validation"]["status"] == "skipped"
    read_manifest(out, verify=True)


def _random_ctc_teacher(config):
    from flax import nnx

    from gpa_jax.codec.teacher import ContentTeacher

    cfg = config.copy_and_resolve_references()
    cfg.teacher.kind, cfg.teacher.dim, cfg.teacher.ctc_layers = "ctc", 16, 2
    return ContentTeacher(cfg, rngs=nnx.Rngs(3))


def test_ctc_teacher_rows_do_not_depend_on_the_padding_bucket(job):
    """A clip's rows are the same however much silence pads it to its bucket (the teacher
    masks past the clip's length); frames past the clip are zeros."""
    import jax.numpy as jnp

    from gpa_jax.codec.teacher import content_rows

    teacher = _random_ctc_teacher(job[0])
    wav = np.random.default_rng(0).standard_normal(16000 + 1234).astype(np.float32) * 0.1
    frames = math.ceil(len(wav) / 320)
    rows = content_rows(teacher, wav, frames)
    assert rows.shape == (frames, 16) and np.all(np.isfinite(rows))
    assert np.abs(rows).max() > 1e-3
    longer = np.zeros((1, 5 * 8000), np.float32)  # two more 25-frame buckets of padding
    longer[0, : len(wav)] = wav
    padded = np.asarray(teacher(jnp.asarray(longer), jnp.asarray([len(wav)], jnp.int32)))[0]
    np.testing.assert_allclose(rows, padded[:frames], atol=1e-4)
    assert np.all(content_rows(teacher, wav, frames + 3)[frames:] == 0)


def test_shards_can_carry_the_ctc_teachers_rows(job, tmp_path):
    from gpa_jax import corpora

    config, workdir, _, _ = job
    codec, _ = codec_train.restore_codec(config, codec_train.checkpoint_dir(workdir))
    teacher = _random_ctc_teacher(config)
    out = str(tmp_path / "tokens")
    tokenization.tokenize_corpus(
        codec, CORPUS, out, data_dir=paths.tfds_dir(workdir), splits=["validation"],
        token_features="ctc_teacher", teacher=teacher, max_seconds=MAX_SECONDS, **KWARGS,
    )  # fmt: skip
    spec = {"kind": "ctc_teacher", "dim": 16, "dtype": "float16"}
    assert read_manifest(out)["splits"]["validation"]["features"] == spec
    clips = {
        ex["id"]: ex["audio"]
        for ex in corpora.speech_examples(CORPUS, "validation", data_dir=paths.tfds_dir(workdir))
    }
    featurize = tokenization.TokenFeatures("ctc_teacher", codec, teacher)
    for utt in iter_utterances(out, "validation"):
        want = featurize(clips[utt.id], utt.num_frames).astype(np.float16)
        np.testing.assert_array_equal(utt.features, want)
    with pytest.raises(ValueError, match="needs the codec's trained CTC teacher"):
        tokenization.TokenFeatures("ctc_teacher", codec)


def test_noisy_inputs_are_opt_in_deterministic_and_rebuildable(tiny_workdir, tmp_path):
    """SE inputs: every record carries the codes and log-mel of its own noisy clip, which
    the recordings and the manifest rebuild exactly; the SNRs lie in the range."""
    from gpa_jax import corpora
    from gpa_jax.audio import noise

    config, workdir = tiny_workdir
    data_dir = paths.tfds_dir(workdir)
    codec, _ = codec_train.restore_codec(config, codec_train.checkpoint_dir(workdir))
    settings = noise.NoiseSettings(seed=5, snr_db=(2.0, 12.0))
    out = str(tmp_path / "tokens")
    kw = dict(data_dir=data_dir, splits=["validation"], token_features="log_mel", **KWARGS)
    first = tokenization.tokenize_corpus(codec, CORPUS, out, noise=settings, **kw)
    spec = read_manifest(out)["splits"]["validation"]["noisy"]
    assert first["validation"]["noisy"] == spec
    assert {k: spec[k] for k in settings.as_dict()} == settings.as_dict()
    examples = list(corpora.speech_examples(CORPUS, "validation", data_dir=data_dir))
    clips = {ex["id"]: ex for ex in examples}
    # Babble comes from the split's first utterances in corpus order.
    assert spec["babble_ids"] == [ex["id"] for ex in examples[: noise.BABBLE_POOL]]
    pool = noise.BabblePool.from_clips(
        spec["babble_ids"], [clips[i]["speaker"] for i in spec["babble_ids"]],
        [clips[i]["audio"] for i in spec["babble_ids"]],
    )  # fmt: skip
    utts = list(iter_utterances(out, "validation"))
    assert utts and all(u.noisy is not None for u in utts)
    for utt in utts:
        ex = clips[utt.id]
        made = noise.make_noisy(ex["audio"], utt.id, ex["speaker"], pool, settings)
        assert 2.0 <= utt.noisy.snr_db <= 12.0
        assert utt.noisy.snr_db == pytest.approx(made.snr_db) and utt.noisy.kind == made.kind
        assert utt.noisy.codes.shape == utt.codes.shape
        want = token_aligned_log_mel(made.wav, utt.num_frames).astype(np.float16)
        np.testing.assert_array_equal(utt.noisy.features, want)
    assert any(not np.array_equal(u.noisy.codes[0], u.codes[0]) for u in utts)
    # Complete for the same settings, redone (and the same again) for a changed seed and back.
    assert tokenization.split_is_complete(out, "validation", "log_mel", settings)
    assert tokenization.split_is_complete(out, "validation", "log_mel")  # none asked for
    other = noise.NoiseSettings(seed=6, snr_db=(2.0, 12.0))
    assert not tokenization.split_is_complete(out, "validation", "log_mel", other)
    again = tokenization.tokenize_corpus(codec, CORPUS, str(tmp_path / "again"),
                                         noise=settings, **kw)  # fmt: skip
    assert again["validation"]["noisy"] == spec
    for a, b in zip(utts, iter_utterances(str(tmp_path / "again"), "validation"), strict=True):
        np.testing.assert_array_equal(a.noisy.codes, b.noisy.codes)
        assert a.noisy.snr_db == b.noisy.snr_db


def test_noisy_inputs_come_from_the_config_or_the_flag(tiny_workdir):
    config, _ = tiny_workdir
    assert tokenization.noise_settings(config) is None  # off by default
    on = config.copy_and_resolve_references()
    on.data.noisy_inputs = True
    on.data.noise_seed = 3
    assert tokenization.noise_settings(on).seed == 3
    assert tokenization.noise_settings(on).snr_db == (0.0, 15.0)
