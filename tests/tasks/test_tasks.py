"""TTS/ASR/VC serialized layouts, pairing rules, length-rule counters, determinism."""

import logging

import numpy as np
import pytest
import seqio

from gpa_jax.tasks import planning
from gpa_jax.tasks import tasks as tasks_lib
from gpa_jax.tasks.vocab import EOS_ID

from .conftest import CODEBOOK, SEQ_LEN, small_config


def _examples(handle, task, split="train", seed=None):
    """Unshuffled examples in plan order, with their plan rows."""
    source = handle.sources[task]
    rows, _ = source.plan(split, seed)
    ds = source.get_dataset(split, shuffle=False, seed=seed)
    return rows, list(ds.as_numpy_iterator())


def _bank(handle, split="train"):
    return handle.sources["tts"].bank(split)


def _a0(vocab, bank, u):
    s = bank.audio_start[u]
    return vocab.audio_to_ids(bank.codes[0, s : s + bank.frames[u]], 0)


def _split_at(seq, token):
    (where,) = np.flatnonzero(seq == token)
    return seq[:where], seq[where + 1 :]


def test_tts_layout_and_reference_rules(registered, vocab):
    handle, written = registered
    bank = _bank(handle)
    rows, examples = _examples(handle, "tts")
    assert len(rows) == len(examples) > 20
    d = vocab.delimiter_id
    for row, ex in zip(rows, examples, strict=True):
        t, r, start, n, _ = row
        inputs, targets = ex["inputs"], ex["targets"]
        assert inputs[0] == vocab.task_tag_id("tts") and inputs[1] == d("ref_audio")
        assert inputs[-1] == d("tgt_audio") and targets[-1] == EOS_ID
        assert EOS_ID not in inputs and list(targets).count(EOS_ID) == 1
        ref, rest = _split_at(inputs[2:-1], d("text"))
        # The reference: another utterance of the target's speaker, with another text.
        assert r != t and bank.speakers[r] == bank.speakers[t] and bank.texts[r] != bank.texts[t]
        assert 0 < n <= 40 and 0 <= start <= bank.frames[r] - n
        np.testing.assert_array_equal(ref, _a0(vocab, bank, r)[start : start + n])
        speaker, text, codes = written["train"][bank.ids[r]]
        np.testing.assert_array_equal(vocab.ids_to_audio(ref, 0), codes[0, start : start + n])
        assert vocab.decode(rest) == bank.texts[t]
        np.testing.assert_array_equal(targets[:-1], _a0(vocab, bank, t))
        assert len(inputs) + len(targets) <= SEQ_LEN


def test_asr_layout(registered, vocab):
    handle, _ = registered
    bank = _bank(handle)
    rows, examples = _examples(handle, "asr")
    d = vocab.delimiter_id
    for row, ex in zip(rows, examples, strict=True):
        t = row[planning.TGT]
        inputs, targets = ex["inputs"], ex["targets"]
        assert list(inputs[:2]) == [vocab.task_tag_id("asr"), d("src_audio")]
        assert inputs[-1] == d("text")
        np.testing.assert_array_equal(inputs[2:-1], _a0(vocab, bank, t))
        assert targets[-1] == EOS_ID and vocab.decode(targets) == bank.texts[t]
        assert vocab.is_text(targets[:-1]).all()


def test_vc_source_is_same_sentence_by_another_speaker(registered, vocab):
    handle, _ = registered
    bank = _bank(handle)
    rows, examples = _examples(handle, "vc")
    assert len(rows) > 20
    d = vocab.delimiter_id
    for row, ex in zip(rows, examples, strict=True):
        t, r, start, n, s = row
        inputs, targets = ex["inputs"], ex["targets"]
        assert list(inputs[:2]) == [vocab.task_tag_id("vc"), d("ref_audio")]
        assert inputs[-1] == d("tgt_audio") and targets[-1] == EOS_ID
        ref, src = _split_at(inputs[2:-1], d("src_audio"))
        assert bank.texts[s] == bank.texts[t] and bank.speakers[s] != bank.speakers[t]
        assert r != t and bank.speakers[r] == bank.speakers[t] and bank.texts[r] != bank.texts[t]
        np.testing.assert_array_equal(ref, _a0(vocab, bank, r)[start : start + n])
        np.testing.assert_array_equal(src, _a0(vocab, bank, s))
        np.testing.assert_array_equal(targets[:-1], _a0(vocab, bank, t))


def test_counters_for_dropped_and_trimmed_examples(registered):
    handle, _ = registered
    stats = handle.stats("train")
    n = _bank(handle).num_utterances
    for s in stats.values():
        assert s.candidates == n and s.examples + sum(s.dropped.values()) == n
    # train-long (400 frames) cannot fit 256 tokens in TTS or ASR.
    assert stats["asr"].dropped == {"too_long": 1}
    # train-solo has no second utterance (no reference); train-long is too long;
    # train-longish needs its reference trimmed.
    assert stats["tts"].dropped == {"no_reference": 1, "too_long": 1}
    assert stats["tts"].ref_trimmed >= 1
    # Unique sentences (solo, long, longish) have no parallel source.
    assert stats["vc"].dropped == {"no_parallel_source": 3}
    summary = handle.log_summary("train")
    assert "tts/train:" in summary and "no_reference=1" in summary


def test_without_trimming_the_longish_example_is_dropped(parallel_corpus, vocab):
    directory, _ = parallel_corpus
    handle = tasks_lib.register_tasks(
        directory,
        vocab,
        small_config(trim_ref_to_fit=False),
        sequence_length=SEQ_LEN,
        namespace="test_notrim",
    )
    stats = handle.stats("train")["tts"]
    assert stats.ref_trimmed == 0 and stats.dropped["too_long"] == 2


def test_multi_layer_reference_is_frame_major(parallel_corpus, vocab):
    directory, _ = parallel_corpus
    handle = tasks_lib.register_tasks(
        directory, vocab, small_config(ref_layers=3), sequence_length=SEQ_LEN, namespace="test_ref3"
    )
    bank = handle.sources["tts"].bank("train")
    rows, examples = _examples(handle, "tts")
    t, r, start, n, _ = rows[0]
    ref, _ = _split_at(examples[0]["inputs"][2:], vocab.delimiter_id("text"))
    assert len(ref) == 3 * n
    s0 = bank.audio_start[r] + start
    for k in range(3):
        np.testing.assert_array_equal(vocab.ids_to_audio(ref[k::3], k), bank.codes[k, s0 : s0 + n])
    assert all(len(e["inputs"]) + len(e["targets"]) <= SEQ_LEN for e in examples)


def test_same_seed_same_examples_other_seed_other_pairs(parallel_corpus, vocab):
    directory, _ = parallel_corpus
    a = tasks_lib.register_tasks(
        directory, vocab, small_config(), sequence_length=SEQ_LEN, namespace="test_det"
    )
    rows_a, ex_a = _examples(a, "vc", seed=7)
    b = tasks_lib.register_tasks(
        directory, vocab, small_config(), sequence_length=SEQ_LEN, namespace="test_det"
    )
    assert a.sources["vc"] is not b.sources["vc"]  # Re-registration replaced the task.
    rows_b, ex_b = _examples(b, "vc", seed=7)
    np.testing.assert_array_equal(rows_a, rows_b)
    for x, y in zip(ex_a, ex_b, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    rows_c, _ = b.sources["vc"].plan("train", 8)
    assert not np.array_equal(rows_a, rows_c)
    # Shuffled: an endless stream whose every epoch is a permutation of the examples; the
    # same for the same seed in every freshly built dataset (no hidden epoch counter).
    unshuffled = sorted(tuple(e["targets"][:3]) for e in _examples(b, "tts", seed=3)[1])
    n = len(unshuffled)

    def two_epochs():
        ds = b.sources["tts"].get_dataset("train", shuffle=True, seed=3).take(2 * n)
        return [tuple(e["targets"][:3]) for e in ds.as_numpy_iterator()]

    first = two_epochs()
    assert len(first) == 2 * n
    assert sorted(first[:n]) == unshuffled and sorted(first[n:]) == unshuffled
    assert first[:n] != first[n:]  # a fresh order per epoch
    assert two_epochs() == first


def test_nonparallel_corpus_gives_empty_vc_with_warning(nonparallel_corpus, vocab, caplog):
    directory, _ = nonparallel_corpus
    handle = tasks_lib.register_tasks(
        directory, vocab, small_config(), sequence_length=SEQ_LEN, namespace="test_np"
    )
    with caplog.at_level(logging.WARNING):
        stats = handle.stats("train")
    assert stats["vc"].examples == 0
    assert stats["vc"].dropped["no_parallel_source"] == stats["vc"].candidates
    assert "non-parallel" in caplog.text
    assert stats["tts"].examples > 0 and stats["asr"].examples > 0
    assert list(handle.sources["vc"].get_dataset("train", shuffle=True, seed=0)) == []


def test_registry_names_and_mismatched_codebook(registered, parallel_corpus):
    handle, _ = registered
    assert handle.task_names == {t: f"test_par_{t}" for t in ("tts", "asr", "vc")}
    assert handle.mixture == "test_par_mix"
    mix = seqio.get_mixture_or_task("test_par_mix")
    assert {t.name for t in mix.tasks} == set(handle.task_names.values())
    assert handle.splits == ("train", "validation")
    from gpa_jax.tasks.vocab import SpeechVocabulary

    other = SpeechVocabulary(
        seqio.ByteVocabulary(), num_audio_streams=4, codebook_size=CODEBOOK * 2
    )
    with pytest.raises(ValueError, match="codebook_size"):
        tasks_lib.register_tasks(
            parallel_corpus[0], other, small_config(), sequence_length=SEQ_LEN, namespace="bad"
        )


def test_tasks_config_rejects_unknown_and_inconsistent_fields():
    config = small_config()
    assert config.rates.to_dict() == {"tts": 0.4, "asr": 0.3, "vc": 0.3, "se": 0.0}
    with pytest.raises(ValueError, match="unknown tasks keys"):
        small_config(seq_len=5)
    with pytest.raises(ValueError, match=r"unknown tasks.rates keys \['s2tt'\]"):
        small_config(rates=dict(s2tt=1.0))
    with pytest.raises(ValueError, match="ref_layers=2 needs"):
        small_config(ref_layers=2, vocab=dict(audio_streams=1))


def test_phoneme_tts_text_spells_tts_prompts_asr_keeps_the_transcript(parallel_corpus, vocab):
    """tasks.tts_text='phonemes': the TTS prompt's text is the transcript's espeak-ng IPA,
    the planner's length rule counts those ids, and ASR still emits the transcript."""
    from gpa_jax.text import phonemize

    handle = tasks_lib.register_tasks(
        parallel_corpus[0], vocab, small_config(tts_text="phonemes"),
        sequence_length=SEQ_LEN, namespace="test_phon",
    )  # fmt: skip
    bank = handle.sources["tts"].bank("train")
    assert bank.tts_text == "phonemes"
    rows, examples = _examples(handle, "tts")
    assert len(rows) > 20
    d = vocab.delimiter_id
    for row, ex in zip(rows, examples, strict=True):
        t = row[planning.TGT]
        _, rest = _split_at(ex["inputs"][2:-1], d("text"))
        spelled = vocab.decode(rest)
        assert spelled == phonemize([bank.texts[t]])[0] != bank.texts[t]
        assert bank.tts_text_len[t] == len(rest)
    asr_rows, asr_examples = _examples(handle, "asr")
    for row, ex in zip(asr_rows, asr_examples, strict=True):
        assert vocab.decode(ex["targets"]) == bank.texts[row[planning.TGT]]
    # A bank that spells transcripts cannot plan phoneme TTS prompts (the lengths differ).
    plain = planning.load_bank(parallel_corpus[0], "train", vocab, 1)
    settings = handle.sources["tts"].settings
    with pytest.raises(ValueError, match="spells TTS prompts as 'transcript'"):
        planning.plan_task("tts", plain, settings, 0, "train")


def test_phoneme_tts_text_needs_byte_text():
    with pytest.raises(ValueError, match="tts_text='phonemes' needs tasks.vocab.text='byte'"):
        small_config(tts_text="phonemes", vocab=dict(text="spm"))
    with pytest.raises(ValueError, match="tasks.tts_text='ipa'"):
        small_config(tts_text="ipa")
