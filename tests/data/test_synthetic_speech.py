"""Tests for the synthetic_speech TFDS builder: builds the real `tiny` corpus once."""

from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data.synthetic_speech as ss
from data.synthetic_speech import synthetic_speech_dataset_builder as builder_lib
from gpa_jax.audio import voices as voices_lib
from gpa_jax.audio.voices import VOICES, SynthesisError
from gpa_jax.text import normalize_transcript

TINY = next(c for c in ss.CONFIGS if c.name == "tiny")
DEFAULT = next(c for c in ss.CONFIGS if c.name == "default")
SEEN = {v.speaker for v in VOICES if not v.held_out}
HELD_OUT = {v.speaker for v in VOICES if v.held_out}


# A smaller corpus for the tests that build more than once (15 utterances).
MICRO = builder_lib.SyntheticSpeechConfig(name="micro", num_train=3, num_validation=1, num_test=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, tfds.core.DatasetBuilder]:
    # Two worker processes, so the pool path is what the tests see.
    data_dir = str(tmp_path_factory.mktemp("synthetic_speech"))
    return data_dir, ss.build("tiny", data_dir, num_workers=2)


@pytest.fixture(scope="module")
def examples(built) -> dict[str, list[dict]]:
    data_dir, _ = built
    out = {}
    for split in ss.SPLITS:
        ds = tfds.load("synthetic_speech/tiny", split=split, data_dir=data_dir)
        out[split] = list(tfds.as_numpy(ds))
    return out


def _decode(ex: dict) -> dict:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}


def test_registered_under_tfds_name() -> None:
    assert ss.Builder.name == "synthetic_speech"
    assert tfds.builder_cls("synthetic_speech") is ss.Builder
    assert {c.name for c in ss.CONFIGS} == {"tiny", "default"}


def test_schema(built, examples) -> None:
    data_dir, builder = built
    features = builder.info.features
    assert isinstance(features["audio"], tfds.features.Audio)
    assert features["audio"].sample_rate == 16000
    assert features["gender"].names == ["female", "male"]
    ds = tfds.load("synthetic_speech/tiny", split="train", data_dir=data_dir)
    spec = ds.element_spec
    expected = {
        "audio": "int16",
        "text": "string",
        "raw_text": "string",
        "speaker": "string",
        "gender": "int64",
        "id": "string",
        "sentence_id": "int32",
        "duration_s": "float32",
    }
    assert {k: v.dtype.name for k, v in spec.items()} == expected
    assert spec["audio"].shape.as_list() == [None]
    plan = ss.plan_for(TINY)
    for split in ss.SPLITS:
        assert builder.info.splits[split].num_examples == len(plan[split])
        assert len(examples[split]) == len(plan[split])


def test_every_voice_decodes(examples) -> None:
    gender_of = {v.speaker: v.gender for v in VOICES}
    first: dict[str, dict] = {}
    ids = set()
    for split, items in examples.items():
        for raw in items:
            ex = _decode(raw)
            assert ex["id"] not in ids
            ids.add(ex["id"])
            assert re.fullmatch(rf"{split}-\d{{6}}-{re.escape(ex['speaker'])}", ex["id"])
            assert ex["text"] == normalize_transcript(ex["raw_text"])
            assert ["female", "male"][ex["gender"]] == gender_of[ex["speaker"]]
            first.setdefault(ex["speaker"], ex)
    assert set(first) == {v.speaker for v in VOICES}
    for speaker, ex in first.items():
        audio = ex["audio"]
        assert audio.dtype == np.int16 and audio.ndim == 1
        seconds = audio.size / 16000
        assert TINY.min_seconds <= seconds <= TINY.max_seconds, speaker
        assert ex["duration_s"] == pytest.approx(seconds, abs=1e-4)
        rms = np.sqrt(np.mean((audio / 32768.0) ** 2))
        assert rms > 0.01, speaker


def test_splits(examples) -> None:
    sentences = {s: {ex["sentence_id"] for ex in items} for s, items in examples.items()}
    texts = {s: {ex["raw_text"] for ex in items} for s, items in examples.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not sentences[a] & sentences[b], (a, b)
        assert not texts[a] & texts[b], (a, b)
    assert sentences["test_unseen_voice"] == sentences["test"]
    speakers = {s: {ex["speaker"].decode() for ex in items} for s, items in examples.items()}
    assert speakers["test_unseen_voice"] == HELD_OUT
    for split in ("train", "validation", "test"):
        assert speakers[split] <= SEEN
    assert speakers["train"] == SEEN  # tiny still uses every seen voice in train


def test_train_sentences_have_several_voices(examples) -> None:
    voices_per_sentence = collections.defaultdict(set)
    for ex in examples["train"]:
        voices_per_sentence[ex["sentence_id"]].add(ex["speaker"])
    assert len(voices_per_sentence) == TINY.num_train
    assert all(len(v) == TINY.train_voices_per_sentence for v in voices_per_sentence.values())


def test_metadata_and_summary(built) -> None:
    data_dir, builder = built
    # Reload from disk: the metadata must have been written there.
    reloaded = tfds.builder("synthetic_speech/tiny", data_dir=data_dir)
    meta = reloaded.info.metadata
    assert meta["voices"]["flite_slt"]["gender"] == "female"
    assert {s for s, v in meta["voices"].items() if v.get("held_out")} == HELD_OUT
    assert meta["config"]["num_train"] == TINY.num_train
    report = meta["generation_report"]
    assert report["requested"] == report["stored"] == 60
    assert report["rejected"] == 0 and report["rejected_ids"] == []

    # Readable without the registered builder too (TFDS imports Int16Audio by name).
    from_dir = tfds.builder_from_directory(builder.data_dir)
    ex = next(iter(tfds.as_numpy(from_dir.as_dataset(split="test").take(1))))
    assert ex["audio"].dtype == np.int16 and ex["audio"].size > 16000

    summary = ss.summarize(reloaded)
    assert list(summary) == list(ss.SPLITS)
    assert summary["train"]["utterances"] == 36
    assert summary["train"]["voices"] == len(SEEN)
    assert summary["test_unseen_voice"]["speakers"] == sorted(HELD_OUT)
    assert 0 < summary["train"]["hours"] < 0.1
    assert TINY.min_seconds <= summary["train"]["min_seconds"] <= summary["train"]["max_seconds"]
    assert summary["train"]["max_seconds"] <= TINY.max_seconds
    table = ss.format_summary(summary)
    assert "test_unseen_voice" in table and "total" in table


def _failing_synthesize(target_text: str, target_speaker: str):
    real = voices_lib.synthesize

    def fake(voice, text, **kwargs):
        if voice.speaker == target_speaker and text == target_text:
            raise SynthesisError(voice.speaker, text, "silent", "injected for the test")
        return real(voice, text, **kwargs)

    return fake


def test_stored_audio_matches_fresh_synthesis(examples) -> None:
    # Pool workers and this process produce the same samples: the corpus is reproducible.
    by_speaker = {v.speaker: v for v in VOICES}
    for split in ss.SPLITS:
        ex = _decode(examples[split][0])
        task = (
            ex["id"],
            by_speaker[ex["speaker"]],
            ex["raw_text"],
            TINY.min_seconds,
            TINY.max_seconds,
        )
        uid, audio, reason, _ = voices_lib.synthesis_worker(task)
        assert reason is None
        np.testing.assert_array_equal(audio, ex["audio"])


def test_failed_utterance_is_counted_not_stored(tmp_path, monkeypatch) -> None:
    # An espeak voice: its id contains hyphens, like the ids' own separators.
    victim = next(u for u in ss.plan_for(MICRO)["train"] if "-" in u.speaker)
    monkeypatch.setattr(
        voices_lib, "synthesize", _failing_synthesize(victim.raw_text, victim.speaker)
    )
    # A loose limit: one failure in nine train utterances is 11 %.
    config = dataclasses.replace(MICRO, max_failure_fraction=0.2)
    builder = ss.Builder(config=config, data_dir=str(tmp_path), num_workers=1)
    builder.download_and_prepare()  # in-process, so the patch applies
    report = builder.info.metadata["generation_report"]
    assert report["rejected"] == 1
    assert report["rejected_ids"] == [victim.id]
    assert report["rejected_by_reason"] == {"silent": 1}
    assert report["per_split"]["train"] == {"requested": 9, "stored": 8, "rejected": 1}
    assert report["rejections"][0]["speaker"] == victim.speaker
    assert builder.info.splits["train"].num_examples == 8
    ids = {ex["id"].decode() for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
    assert victim.id not in ids and len(ids) == 8
    # The report is on disk too.
    reloaded = ss.Builder(config=config, data_dir=str(tmp_path))
    assert reloaded.info.metadata["generation_report"]["rejected_ids"] == [victim.id]


def test_renderer_serves_splits_in_any_order(monkeypatch) -> None:
    monkeypatch.setattr(
        voices_lib, "synthesis_worker", lambda task: (task[0], np.ones(8, np.int16), None, None)
    )
    plan = ss.plan_for(MICRO)
    renderer = builder_lib._Renderer(plan, 1, 0.5, 16.0)
    try:
        for split in reversed(ss.SPLITS):
            got = [uid for uid, *_ in renderer.results(split)]
            assert got == [u.id for u in plan[split]]
    finally:
        renderer.close()


def test_too_many_failures_stop_the_build(tmp_path, monkeypatch) -> None:
    def always_fails(voice, text, **kwargs):
        raise SynthesisError(voice.speaker, text, "engine_failed", "injected")

    monkeypatch.setattr(voices_lib, "synthesize", always_fails)
    config = builder_lib.SyntheticSpeechConfig(
        name="micro", num_train=2, num_validation=1, num_test=1
    )
    builder = ss.Builder(config=config, data_dir=str(tmp_path), num_workers=1)
    with pytest.raises(ss.CorpusBuildError, match="engine_failed"):
        builder.download_and_prepare()


def test_plan_is_deterministic_and_balanced() -> None:
    plan = ss.plan_for(TINY)
    assert plan == ss.plan_for(TINY)
    other = builder_lib.SyntheticSpeechConfig(name="other", seed=1)
    other_plan = ss.plan_for(other)
    assert [u.raw_text for u in other_plan["train"]] != [u.raw_text for u in plan["train"]]
    for split, items in plan.items():
        counts = collections.Counter(u.speaker for u in items)
        assert max(counts.values()) - min(counts.values()) <= 1, (split, counts)
    # A few fixed facts, so a change in the generator or assignment is noticed.
    assert [u.sentence_id for u in plan["test"]][:2] == [0, 0]
    assert plan["validation"][0].sentence_id == TINY.num_test
    assert plan["train"][0].sentence_id == TINY.num_test + TINY.num_validation


def test_default_plan_without_synthesis() -> None:
    plan = ss.plan_for(DEFAULT)
    sentences = {}
    for split in ("train", "validation", "test"):
        sentences[split] = {u.raw_text for u in plan[split]}
    everything = set().union(*sentences.values())
    assert len(everything) >= 3000
    assert sum(len(s) for s in sentences.values()) == len(everything)  # disjoint
    speakers = {u.speaker for items in plan.values() for u in items}
    assert len(speakers) >= 10
    assert {u.speaker for u in plan["test_unseen_voice"]} == HELD_OUT
    assert len(HELD_OUT) >= 2
    assert len({u.id for items in plan.values() for u in items}) == sum(
        len(items) for items in plan.values()
    )
    counts = collections.Counter(u.speaker for u in plan["train"])
    assert max(counts.values()) - min(counts.values()) <= 1
    pairs = collections.Counter()
    by_sentence = collections.defaultdict(list)
    for u in plan["train"]:
        by_sentence[u.sentence_id].append(u.speaker)
    for group in by_sentence.values():
        pairs.update((a, b) for a in group for b in group if a < b)
    n_seen = len(SEEN)
    assert len(pairs) == n_seen * (n_seen - 1) // 2  # every seen voice pair shares sentences


def test_common_schema_loader_reads_the_built_corpus(built) -> None:
    """gpa_jax.corpora serves the synthetic corpus in the same schema as LibriSpeech."""
    from gpa_jax import corpora

    data_dir, _ = built
    rows = list(corpora.speech_examples("synthetic_speech/tiny", "test", data_dir=data_dir))
    assert rows and all(set(r) == {"audio", "text", "speaker", "id"} for r in rows)
    for row in rows:
        assert row["audio"].dtype == np.float32 and len(row["audio"]) >= 0.5 * 16000
        assert row["text"] == normalize_transcript(row["text"]) and row["speaker"] in SEEN
