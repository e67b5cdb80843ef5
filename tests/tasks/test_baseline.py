"""Unigram baselines: the same output tokens the loss sees, and the documented formulas."""

import numpy as np
import pytest

from gpa_jax.tasks.baseline import output_token_counts, unigram_baselines
from gpa_jax.tasks.config import default_token_dir, resolve_paths
from gpa_jax.tasks.vocab import EOS_ID

from .conftest import small_config


def _targets_counts(handle, task, split, vocab_size, seed=0):
    """Counts of the "targets" feature (the loss-weighted part) the TF pipeline emits."""
    ds = handle.sources[task].get_dataset(split, shuffle=False, seed=seed)
    counts = np.zeros(vocab_size, np.int64)
    for ex in ds.as_numpy_iterator():
        counts += np.bincount(ex["targets"], minlength=vocab_size)
    return counts


@pytest.mark.parametrize("split", ["train", "validation"])
def test_counted_tokens_are_the_pipelines_targets(registered, vocab, split):
    handle, _ = registered
    for task, source in handle.sources.items():
        rows, stats = source.plan(split, 0)
        counts = output_token_counts(
            task, source.bank(split), rows, vocab.audio_range(0)[0], vocab.vocab_size
        )
        np.testing.assert_array_equal(
            counts, _targets_counts(handle, task, split, vocab.vocab_size)
        )
        assert counts.sum() == stats.loss_tokens and counts[EOS_ID] == stats.examples


def test_entropy_and_smoothed_cross_entropy(registered, vocab):
    handle, _ = registered
    size = 1000  # the LM's softmax may be larger than the data vocabulary
    baselines = unigram_baselines(handle, "train", "validation", seed=0, vocab_size=size)
    assert set(baselines) == {"tts", "asr", "vc"}
    for task, b in baselines.items():
        train = _targets_counts(handle, task, "train", size)
        evals = _targets_counts(handle, task, "validation", size)
        p = train[train > 0] / train.sum()
        assert b.train_tokens == train.sum() and b.eval_tokens == evals.sum()
        assert b.train_entropy == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)
        q = (train + 1.0) / (train.sum() + size)
        assert b.eval_cross_entropy == pytest.approx(
            float(-(evals * np.log(q)).sum() / evals.sum()), rel=1e-12
        )
        # A context-free model is far from free: audio codes are random in this corpus.
        assert 0.5 < b.train_entropy < np.log(size)


def test_paths_default_under_the_workdir_where_the_stages_write():
    from gpa_jax.codec.tokenization import tokens_dir

    assert default_token_dir("W", "synthetic_speech/default") == tokens_dir(
        "W", "synthetic_speech/default"
    )
    config = small_config(corpus="c/x", vocab=dict(text="spm", spm_vocab_size=99))
    assert resolve_paths(config, "W") == ("W/tokens/c/x", "W/spm/c_x_99.model")
    byte = small_config(token_dir="/t")
    assert resolve_paths(byte, None) == ("/t", "")
    with pytest.raises(ValueError, match="tasks.token_dir is empty"):
        resolve_paths(small_config(), None)
