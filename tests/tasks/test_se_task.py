"""The opt-in SE task: noisy RVQ-1 (or its feature rows) in, the clean RVQ-1 out."""

import numpy as np
import pytest
import seqio

from gpa_jax.tasks import layout, make_batches, planning
from gpa_jax.tasks import tasks as tasks_lib
from gpa_jax.tasks.config import registered_tasks, tasks_config, validate_tasks_config
from gpa_jax.tasks.feature_converter import AUDIO_FRAMES, INPUT_FRAMES, TASK_IDS
from gpa_jax.tasks.vocab import EOS_ID
from gpa_jax.training.data_iter import AUDIO_FEATURES_KEY, gather_audio_features

from .conftest import SEQ_LEN, small_config

SE_RATES = dict(tts=0.3, asr=0.3, vc=0.2, se=0.2)


def _register(directory, vocab, namespace, audio_features=False, **overrides):
    return tasks_lib.register_tasks(
        directory, vocab, small_config(**overrides), sequence_length=SEQ_LEN,
        namespace=namespace, audio_features=audio_features,
    )  # fmt: skip


@pytest.fixture(scope="module")
def se_tasks(noisy_corpus, vocab):
    return _register(noisy_corpus[0], vocab, "test_se", audio_features=True, rates=SE_RATES)


def test_se_is_opt_in_and_absent_at_rate_zero(parallel_corpus, vocab):
    config = small_config()
    assert config.rates.se == 0 and registered_tasks(config) == ("tts", "asr", "vc")
    handle = _register(parallel_corpus[0], vocab, "test_se_off")
    assert set(handle.sources) == {"tts", "asr", "vc"}
    assert "test_se_off_se" not in seqio.TaskRegistry.names()
    # A config saved before SE existed names no se rate: it still validates, as rate 0.
    old = tasks_config()
    del old.rates["se"]
    validate_tasks_config(old)
    assert registered_tasks(old) == ("tts", "asr", "vc")
    del old.rates["vc"]
    with pytest.raises(ValueError, match=r"tasks.rates must name \('tts', 'asr', 'vc'\)"):
        validate_tasks_config(old)


def test_se_on_shards_without_noisy_inputs_names_the_flag(parallel_corpus, vocab):
    with pytest.raises(ValueError, match=r"tasks.rates.se=0.2 .* no noisy inputs.*--noisy_inputs"):
        _register(parallel_corpus[0], vocab, "test_se_bare", rates=SE_RATES)


def test_se_examples_map_the_noisy_input_to_the_clean_target(se_tasks, noisy_corpus, vocab):
    _, written = noisy_corpus
    source = se_tasks.sources["se"]
    rows, stats = source.plan("train")
    bank = source.bank("train")
    assert bank.has_noisy and len(rows) == stats.examples > 20
    # train-long (400 frames) and train-longish (224) do not fit 3 + 2 * frames + 1 <= 256.
    assert stats.dropped["too_long"] == 2 and stats.examples == stats.candidates - 2
    examples = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
    d = vocab.delimiter_id
    for row, ex in zip(rows, examples, strict=True):
        t = int(row[planning.TGT])
        assert row[planning.SRC] == t and row[planning.REF] == -1
        clean, noisy = written["train"][bank.ids[t]][2], written["train"][bank.ids[t]][-1]
        inputs, targets = ex["inputs"], ex["targets"]
        assert list(inputs[:2]) == [vocab.task_tag_id("se"), d("src_audio")]
        assert inputs[-1] == d("tgt_audio") and list(targets).count(EOS_ID) == 1
        np.testing.assert_array_equal(vocab.ids_to_audio(inputs[2:-1], 0), noisy.codes[0])
        np.testing.assert_array_equal(vocab.ids_to_audio(targets[:-1], 0), clean[0])
        # Its source positions read the noisy input's own feature rows.
        frames = ex[INPUT_FRAMES]
        np.testing.assert_array_equal(frames[2:-1], bank.noisy_row(t, np.arange(bank.frames[t])))
        assert (frames[[0, 1, -1]] == layout.NO_FRAME).all()
        np.testing.assert_array_equal(bank.features[frames[2:-1]], noisy.features)
        np.testing.assert_array_equal(bank.utterance_noisy_features(t), noisy.features)


def test_other_tasks_read_the_clean_rows_of_the_shared_bank(se_tasks, noisy_corpus):
    _, written = noisy_corpus
    bank = se_tasks.sources["asr"].bank("train")
    assert bank is se_tasks.sources["se"].bank("train")  # one bank: one frame index space
    assert bank.features.shape[0] == 2 * bank.total_frames
    for u, utt_id in enumerate(bank.ids):
        np.testing.assert_array_equal(bank.utterance_features(u), written["train"][utt_id][3])
        noisy = written["train"][utt_id][-1]
        np.testing.assert_array_equal(bank.utterance_noisy_codes(u), noisy.codes[: bank.num_layers])
        assert bank.noisy_snr_db[u] == pytest.approx(noisy.snr_db)


def test_mixed_batches_carry_se_rows_with_their_noisy_features(se_tasks, vocab):
    bank = se_tasks.sources["se"].bank("train")
    batches = make_batches(se_tasks.mixture, "train", SEQ_LEN, 4, seed=3, shuffle=True)
    seen = 0
    for _ in range(6):
        b = next(batches)
        se = (b["decoder_task_ids"] == TASK_IDS["se"]) & (b[AUDIO_FRAMES] > 0)
        seen += int(se.sum())
        feats = gather_audio_features(bank, b[AUDIO_FRAMES])[AUDIO_FEATURES_KEY]
        rows = b[AUDIO_FRAMES][se] - 1
        assert (rows >= bank.total_frames).all()  # SE sources read noisy rows only
        np.testing.assert_array_equal(feats[se], bank.features[rows].astype(np.float32))
        lo = vocab.audio_range(0)[0]
        np.testing.assert_array_equal(
            b["decoder_input_tokens"][se] - lo, bank.noisy_codes[0, rows - bank.total_frames]
        )
    assert seen > 0


def test_se_plans_are_deterministic_from_the_seed(se_tasks):
    source = se_tasks.sources["se"]
    a = list(source.get_dataset("train", shuffle=True, seed=4).take(8).as_numpy_iterator())
    b = list(source.get_dataset("train", shuffle=True, seed=4).take(8).as_numpy_iterator())
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
