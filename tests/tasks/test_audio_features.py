"""The continuous audio input's data path: bank features, input_frames, decoder_audio_frames.

A position with decoder_audio_mask = 1 must read (in decoder_input_tokens) an audio id of
the very bank frame whose features it gets: checked against the bank's codes, for every
position of packed and unpacked batches of all three tasks.
"""

import numpy as np
import pytest

from gpa_jax.tasks import layout, make_batches, planning
from gpa_jax.tasks import tasks as tasks_lib
from gpa_jax.tasks.feature_converter import AUDIO_FRAMES, INPUT_FRAMES, TASK_IDS
from gpa_jax.training.data_iter import (
    AUDIO_FEATURES_KEY,
    AUDIO_MASK_KEY,
    gather_audio_features,
)

from .conftest import FEATURE_DIM, SEQ_LEN, small_config


def _register(directory, vocab, namespace, audio_features=True, **overrides):
    return tasks_lib.register_tasks(
        directory,
        vocab,
        small_config(**overrides),
        sequence_length=SEQ_LEN,
        namespace=namespace,
        audio_features=audio_features,
    )


@pytest.fixture(scope="module")
def feature_tasks(feature_corpus, vocab):
    return _register(feature_corpus[0], vocab, "test_feat")


def _audio(vocab, token):
    """(layer, code) of an audio id, None for any other id."""
    for layer in range(vocab.num_audio_streams):
        lo, hi = vocab.audio_range(layer)
        if lo <= token < hi:
            return layer, int(token) - lo
    return None


def test_bank_holds_one_feature_row_per_global_frame(feature_corpus, parallel_corpus, vocab):
    directory, written = feature_corpus
    bank = planning.load_bank(directory, "train", vocab, layers=2, features=True)
    assert bank.features.dtype == np.float16
    assert bank.features.shape == (bank.codes.shape[1], FEATURE_DIM)
    for u, utt_id in enumerate(bank.ids):
        lo = int(bank.audio_start[u])
        rows = bank.features[lo : lo + int(bank.frames[u])]
        np.testing.assert_array_equal(rows, written["train"][utt_id][3])
    assert planning.load_bank(directory, "train", vocab, layers=2).features is None
    with pytest.raises(ValueError, match=r"split 'train' has no per-frame audio features.*"
                       r"tokenize with data.token_features=log_mel"):  # fmt: skip
        planning.load_bank(parallel_corpus[0], "train", vocab, 1, features=True)
    plain = planning.cached_bank(directory, "train", vocab, 1)
    rich = planning.cached_bank(directory, "train", vocab, 1, features=True)
    assert plain.features is None and rich.features is not None
    assert planning.cached_bank(directory, "train", vocab, 1, features=True) is rich


def test_input_frame_segments_mirror_input_segments(vocab):
    text = np.asarray(vocab.encode("hi you"), np.int32)
    ref_codes = np.array([[1, 2, 3], [4, 5, 6]])
    ref_frames, src_frames = np.array([10, 11, 12]), np.array([20, 21])
    src_ids = np.array([7, 8]) + vocab.audio_range(0)[0]
    n = layout.NO_FRAME
    want = {
        "tts": [n, n, 10, 10, 11, 11, 12, 12, n, *[n] * len(text), n],
        "asr": [n, n, 20, 21, n],
        "vc": [n, n, 10, 10, 11, 11, 12, 12, n, 20, 21, n],
    }
    for task, expected in want.items():
        ids = layout.join(
            layout.input_segments(
                task,
                vocab,
                text=text,
                reference=layout.reference_ids(ref_codes, vocab),
                source=src_ids,
            )
        )
        frames = layout.join(
            layout.input_frame_segments(
                task, vocab, text=text, reference=ref_frames, source=src_frames, ref_layers=2
            )
        )
        assert frames.dtype == np.int32
        np.testing.assert_array_equal(frames, expected)
        assert len(frames) == len(ids)
        for token, frame in zip(ids, frames, strict=True):
            assert (frame == n) == (_audio(vocab, token) is None)


@pytest.mark.parametrize("ref_layers", [1, 2])
def test_examples_name_the_bank_frame_of_every_audio_input(feature_corpus, vocab, ref_layers):
    handle = _register(feature_corpus[0], vocab, f"test_feat_l{ref_layers}", ref_layers=ref_layers)
    bank = handle.sources["tts"].bank("train")
    for task in handle.sources:  # the tasks registered: SE is opt-in (test_se_task)
        source = handle.sources[task]
        rows, _ = source.plan("train")
        examples = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
        assert len(examples) == len(rows) > 0
        for row, ex in zip(rows, examples, strict=True):
            inputs, frames = ex["inputs"], ex[INPUT_FRAMES]
            assert frames.dtype == np.int32 and frames.shape == inputs.shape

            def span(u, start=0, n=None):
                lo = int(bank.audio_start[u]) + start
                return np.arange(lo, lo + (int(bank.frames[u]) - start if n is None else n))

            ref = span(row[planning.REF], row[planning.REF_START], row[planning.REF_LEN])
            text = bank.text_ids[bank.text_start[row[0]] : bank.text_start[row[0]] + bank.text_len[row[0]]]  # fmt: skip
            parts = {
                "tts": dict(text=text, reference=ref),
                "asr": dict(source=span(row[planning.TGT])),
                "vc": dict(reference=ref, source=span(row[planning.SRC])),
            }[task]
            want = layout.input_frame_segments(task, vocab, ref_layers=ref_layers, **parts)
            np.testing.assert_array_equal(frames, layout.join(want))
            for token, frame in zip(inputs, frames, strict=True):
                audio = _audio(vocab, token)
                assert (frame == layout.NO_FRAME) == (audio is None)
                if audio is not None:  # the position holds that frame's code
                    assert bank.codes[audio[0], frame] == audio[1]


@pytest.mark.parametrize("pack", [True, False])
def test_batches_point_each_audio_input_position_at_its_frame(feature_tasks, vocab, pack):
    bank = feature_tasks.sources["tts"].bank("train")
    batches = make_batches(feature_tasks.mixture, "train", SEQ_LEN, 4, seed=1, shuffle=True,
                           pack=pack)  # fmt: skip
    covered = set()
    for _ in range(4):
        b = next(batches)
        frames = b[AUDIO_FRAMES]
        assert frames.dtype == np.int32 and frames.shape == (4, SEQ_LEN)
        gathered = gather_audio_features(bank, frames)
        feats, mask = gathered[AUDIO_FEATURES_KEY], gathered[AUDIO_MASK_KEY]
        assert feats.dtype == np.float32 and feats.shape == (4, SEQ_LEN, FEATURE_DIM)
        assert mask.dtype == np.int32
        np.testing.assert_array_equal(mask, frames > 0)
        tokens, prefix = b["decoder_input_tokens"], b["decoder_prefix_mask"]
        for r, i in np.ndindex(tokens.shape):
            audio = _audio(vocab, tokens[r, i])
            # The prefix positions read the inputs (shifted by one): audio there is input.
            assert mask[r, i] == (audio is not None and prefix[r, i] == 1), (r, i)
            if mask[r, i]:
                frame = frames[r, i] - 1
                assert bank.codes[audio[0], frame] == audio[1], (r, i)
                np.testing.assert_array_equal(feats[r, i], bank.features[frame].astype(np.float32))
                covered.add(int(b["decoder_task_ids"][r, i]))
            else:
                assert not feats[r, i].any()
        assert not mask[b["decoder_segment_ids"] == 0].any()  # padding
    # ASR sources, TTS / VC references, VC sources
    assert covered == {TASK_IDS[t] for t in feature_tasks.sources}


def test_features_off_leaves_the_batches_unchanged(feature_tasks, feature_corpus, vocab):
    plain = _register(feature_corpus[0], vocab, "test_feat_off", audio_features=False)
    for pack in (True, False):
        on = make_batches(feature_tasks.mixture, "train", SEQ_LEN, 4, seed=2, shuffle=True,
                          pack=pack)  # fmt: skip
        off = make_batches(plain.mixture, "train", SEQ_LEN, 4, seed=2, shuffle=True, pack=pack)
        for _ in range(3):
            a, b = next(on), next(off)
            assert set(a) == set(b) | {AUDIO_FRAMES}
            for key in b:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert INPUT_FRAMES not in plain.sources["tts"].get_dataset("train").element_spec


def test_gather_needs_a_bank_with_features_of_that_split(feature_tasks, parallel_corpus, vocab):
    bank = feature_tasks.sources["tts"].bank("validation")
    frames = np.array([[0, 1, len(bank.features)]], np.int32)
    out = gather_audio_features(bank, frames)
    np.testing.assert_array_equal(out[AUDIO_MASK_KEY], [[0, 1, 1]])
    np.testing.assert_array_equal(out[AUDIO_FEATURES_KEY][0, 2], bank.features[-1])
    with pytest.raises(ValueError, match="another split's bank"):
        gather_audio_features(bank, frames + 1)
    plain = planning.load_bank(parallel_corpus[0], "validation", vocab, 1)
    with pytest.raises(ValueError, match="features=True"):
        gather_audio_features(plain, frames)
