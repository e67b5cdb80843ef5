"""CTC forced alignment: the best path equals a brute-force search over every path."""

import itertools

import numpy as np
import pytest

from gpa_jax.codec.ctc import BLANK, forced_alignment


def _collapse(path):
    out, prev = [], BLANK
    for k in path:
        if k != prev and k != BLANK:
            out.append(k)
        prev = k
    return out


def _brute_force(log_probs, labels):
    """Highest-scoring frame sequence collapsing to `labels`, as label indices (-1 blank)."""
    best, best_path = -np.inf, None
    symbols = sorted({BLANK, *labels})
    for path in itertools.product(symbols, repeat=len(log_probs)):
        if _collapse(path) != list(labels):
            continue
        score = sum(log_probs[t, k] for t, k in enumerate(path))
        if score > best:
            best, best_path = score, path
    # Frame t emits label index i when it is part of the i-th run of non-blank symbols.
    index, out, prev = -1, [], BLANK
    for k in best_path:
        if k != BLANK and k != prev:
            index += 1
        out.append(index if k != BLANK else -1)
        prev = k
    return np.asarray(out), best


@pytest.mark.parametrize("labels, frames", [([3, 5], 5), ([4, 4], 5), ([2, 7, 2], 6), ([6], 4)])
def test_best_path_equals_brute_force(labels, frames):
    rng = np.random.default_rng(len(labels) * 10 + frames)
    for _ in range(4):
        logits = rng.normal(size=(frames, 9)) * 2.0
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        want, _ = _brute_force(log_probs, labels)
        got = forced_alignment(log_probs, np.asarray(labels))
        np.testing.assert_array_equal(got, want)


def test_alignment_follows_where_each_label_is_likely():
    # Label a is likely on frames 0-3, b on 6-9, blanks in between.
    frames, log_probs = 10, np.full((10, 5), np.log(0.01))
    log_probs[:4, 1], log_probs[4:6, BLANK], log_probs[6:, 2] = np.log(0.96), np.log(0.96), np.log(0.96)
    got = forced_alignment(log_probs, np.asarray([1, 2]))
    np.testing.assert_array_equal(got, [0, 0, 0, 0, -1, -1, 1, 1, 1, 1])
    assert (forced_alignment(log_probs, np.asarray([], np.int64)) == -1).all()
    with pytest.raises(ValueError, match="2 frames cannot emit 2 labels \\(3 frames needed\\)"):
        forced_alignment(log_probs[:2], np.asarray([1, 1]))  # a repeat needs a blank between
    assert len(log_probs) == frames


def test_long_utterances_give_a_valid_path_no_worse_than_an_even_split():
    """A transcript of 90 labels over 300 frames (more states than an int8 indexes)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(1, 9, 90)
    logits = rng.normal(size=(300, 9))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    got = forced_alignment(log_probs, labels)
    emitted = got[got >= 0]
    assert (np.diff(emitted) >= 0).all() and set(emitted.tolist()) == set(range(90))
    for i in np.flatnonzero(labels[1:] == labels[:-1]):  # a repeat has a blank between
        last_i, first_next = np.flatnonzero(got == i)[-1], np.flatnonzero(got == i + 1)[0]
        assert (got[last_i + 1 : first_next] == -1).any()
    path = np.where(got >= 0, labels[np.maximum(got, 0)], BLANK)
    even = np.full(300, BLANK)  # label i on frames 3i, 3i + 1; a blank on 3i + 2
    even[0:270:3], even[1:270:3] = labels, labels
    score = lambda p: log_probs[np.arange(300), p].sum()  # noqa: E731
    assert score(path) >= score(even)
