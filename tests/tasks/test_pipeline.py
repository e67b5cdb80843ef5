"""Packed batches in the trainer's layout: segments, positions, masks, task ids, rates, resume."""

import numpy as np
import pytest

from gpa_jax.tasks import TASK_IDS, make_batches, make_iterator
from gpa_jax.tasks import tasks as tasks_lib
from gpa_jax.tasks.pipeline import DataIterator, shuffled_epochs
from gpa_jax.tasks.vocab import EOS_ID
from gpa_jax.training.train_step import BATCH_KEYS, PREFIX_KEY

from .conftest import SEQ_LEN, small_config

TAG_TO_TASK = {4: TASK_IDS["tts"], 5: TASK_IDS["asr"], 6: TASK_IDS["vc"]}


def _check_row(b, i):
    """Every packed segment of row i is a well-formed example in the trainer layout."""
    seg = b["decoder_segment_ids"][i]
    tokens = b["decoder_target_tokens"][i]
    pad = seg == 0
    for key in (
        "decoder_target_tokens",
        "decoder_input_tokens",
        "decoder_loss_weights",
        "decoder_prefix_mask",
        "decoder_task_ids",
        "decoder_positions",
    ):
        assert not b[key][i][pad].any(), key
    ids = [s for s in np.unique(seg) if s]
    assert ids == list(range(1, len(ids) + 1))
    n_segments = 0
    for s in ids:
        where = np.flatnonzero(seg == s)
        assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # Contiguous.
        toks = tokens[where]
        np.testing.assert_array_equal(b["decoder_positions"][i][where], np.arange(len(where)))
        np.testing.assert_array_equal(b["decoder_input_tokens"][i][where], [0, *toks[:-1]])
        assert set(b["decoder_task_ids"][i][where]) == {TAG_TO_TASK[int(toks[0])]}
        loss = b["decoder_loss_weights"][i][where]
        n_prefix = int(np.argmax(loss))  # Loss: 0 on the prefix, then 1 to the end.
        assert n_prefix > 0 and loss[n_prefix:].all() and not loss[:n_prefix].any()
        assert toks[-1] == EOS_ID and EOS_ID not in toks[:-1]
        prefix = b["decoder_prefix_mask"][i][where]
        np.testing.assert_array_equal(prefix, np.arange(len(where)) <= n_prefix)
        n_segments += 1
    return n_segments


def test_packed_batches_match_the_trainer_layout(registered):
    handle, _ = registered
    batches = make_batches(handle.mixture, "train", SEQ_LEN, batch_size=4, seed=0, shuffle=True)
    b = next(batches)
    assert set(b) == set(BATCH_KEYS) | {PREFIX_KEY, "decoder_task_ids"}
    for v in b.values():
        assert v.shape == (4, SEQ_LEN) and v.dtype == np.int32
    segments = sum(_check_row(b, i) for i in range(4))
    assert segments > 4  # Packing put several examples in a row.
    assert len({int(t) for t in np.unique(b["decoder_task_ids"])} - {0}) >= 2


def test_unpacked_rows_hold_one_example_with_loss_on_its_targets(registered):
    handle, _ = registered
    name = handle.task_names["asr"]
    b = next(
        make_batches(name, "validation", SEQ_LEN, batch_size=3, seed=0, shuffle=False, pack=False)
    )
    source = handle.sources["asr"].get_dataset("validation", shuffle=False)
    for i, ex in enumerate(source.take(3).as_numpy_iterator()):
        assert _check_row(b, i) == 1
        n_in, n_out = len(ex["inputs"]), len(ex["targets"])
        np.testing.assert_array_equal(
            b["decoder_target_tokens"][i][: n_in + n_out],
            np.concatenate([ex["inputs"], ex["targets"]]),
        )
        np.testing.assert_array_equal(
            np.flatnonzero(b["decoder_loss_weights"][i]), np.arange(n_in, n_in + n_out)
        )
        assert b["decoder_prefix_mask"][i].sum() == n_in + 1
    assert set(np.unique(b["decoder_task_ids"])) == {0, TASK_IDS["asr"]}


def test_mixture_rates_are_roughly_respected(parallel_corpus, vocab):
    directory, _ = parallel_corpus
    handle = tasks_lib.register_tasks(
        directory,
        vocab,
        small_config(rates=dict(tts=0.6, asr=0.3, vc=0.1)),
        sequence_length=SEQ_LEN,
        namespace="test_rate",
    )
    batches = make_batches(
        handle.mixture, "train", SEQ_LEN, batch_size=50, seed=1, shuffle=True, pack=False
    )
    counts = np.zeros(4)
    for _ in range(12):
        task_of_row = next(batches)["decoder_task_ids"][:, 0]
        counts += np.bincount(task_of_row, minlength=4)
    fractions = counts[1:] / counts.sum()
    np.testing.assert_allclose(fractions, [0.6, 0.3, 0.1], atol=0.06)


def test_nonparallel_mixture_still_yields_without_vc(nonparallel_corpus, vocab):
    directory, _ = nonparallel_corpus
    handle = tasks_lib.register_tasks(
        directory, vocab, small_config(), sequence_length=SEQ_LEN, namespace="test_np_mix"
    )
    batches = make_batches(
        handle.mixture, "train", SEQ_LEN, batch_size=64, seed=0, shuffle=True, pack=False
    )
    b = next(batches)
    assert set(np.unique(b["decoder_task_ids"][:, 0])) == {TASK_IDS["tts"], TASK_IDS["asr"]}
    assert TASK_IDS["vc"] not in set(np.unique(b["decoder_task_ids"]))


def test_same_seed_same_batches_and_iterator_state_resumes(registered):
    handle, _ = registered
    args = (handle.mixture, "train", SEQ_LEN, 2)
    first = make_iterator(*args, seed=5, shuffle=True)
    head = [next(first)["decoder_target_tokens"] for _ in range(4)]  # Past some epochs' ends.
    state = first.get_state()  # bytes, as the trainer checkpoints it
    assert isinstance(state, bytes) and len(state) < 1_000_000
    tail = [next(first)["decoder_target_tokens"] for _ in range(6)]

    second = make_iterator(*args, seed=5, shuffle=True)
    again = [next(second)["decoder_target_tokens"] for _ in range(4)]
    assert all(np.array_equal(x, y) for x, y in zip(head, again, strict=True))
    next(second)  # Move away from the saved position, then restore it.
    second.set_state(state)
    resumed = [next(second)["decoder_target_tokens"] for _ in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(tail, resumed, strict=True))


def test_example_longer_than_sequence_fails_loudly(registered):
    handle, _ = registered
    with pytest.raises(Exception, match="longer than the sequence length"):
        next(
            make_batches(
                handle.task_names["tts"], "train", 64, 1, seed=0, shuffle=False, pack=False
            )
        )


def test_shuffled_epochs_is_a_function_of_seed_and_epoch():
    """Each epoch a permutation, a new one per epoch; a fresh dataset (even after another
    was iterated) and a restored iterator continue with exactly the same order."""
    rows = np.arange(10, dtype=np.int64) * 7

    def stream(seed, n=30):
        return [int(x) for x in shuffled_epochs(rows, seed).take(n).as_numpy_iterator()]

    first = stream(3)
    epochs = [first[k : k + 10] for k in (0, 10, 20)]
    assert all(sorted(e) == list(rows) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert stream(3) == first and stream(4) != first
    def iterator():  # DataIterator yields dicts of arrays
        return DataIterator(shuffled_epochs(rows, 3).map(lambda r: {"row": r}))

    it = iterator()
    head = [int(next(it)["row"]) for _ in range(13)]
    state = it.get_state()
    again = iterator()
    again.set_state(state)
    assert head + [int(next(again)["row"]) for _ in range(17)] == first
    assert list(shuffled_epochs(rows[:0], 3).as_numpy_iterator()) == []
