"""Acoustic SeqIO task and trainer rows: pairing rules, row layout, resumable iterator."""

import os

import numpy as np
import pytest
import seqio

from gpa_jax.acoustic import data
from gpa_jax.config_utils import load_config

from .conftest import N_Q, TINY_OVERRIDES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(token_dir, *extra):
    return load_config(
        os.path.join(REPO, "configs/acoustic_nar_tiny.py"),
        [*TINY_OVERRIDES, f"data.token_dir={token_dir}", *extra],
    )


def test_prompt_is_another_utterance_of_the_same_speaker(token_corpus):
    """Leak test at the data level: the prompt never comes from the target utterance."""
    directory, written = token_corpus
    bank = data.load_code_bank(directory, "train")
    rows, counts = data.plan_pairs(bank, data.PairSettings(16, 8, 24), seed=0, split="train")
    assert counts["no_reference"] == 1  # the solo speaker
    assert len(rows) == len(bank.ids) - 1
    for r in rows:
        tgt, ref = int(r[data.TGT]), int(r[data.REF])
        assert tgt != ref
        assert bank.speakers[tgt] == bank.speakers[ref]
        assert bank.texts[tgt] != bank.texts[ref]
        assert r[data.REF_LEN] <= 16 and r[data.TGT_LEN] <= 24
        assert r[data.REF_START] + r[data.REF_LEN] <= bank.frames[ref]
    again, _ = data.plan_pairs(bank, data.PairSettings(16, 8, 24), seed=0, split="train")
    np.testing.assert_array_equal(rows, again)
    other, _ = data.plan_pairs(bank, data.PairSettings(16, 8, 24), seed=1, split="train")
    assert not np.array_equal(rows, other)


def test_seqio_task_yields_codes_of_the_planned_utterances(token_corpus):
    directory, written = token_corpus
    config = tiny_config(directory)
    task = data.register_task(config)
    assert seqio.get_mixture_or_task(data.task_name(config)) is task
    bank = data.load_code_bank(directory, "train")
    target_ids = {}
    for ex in task.get_dataset(None, split="train", shuffle=False, seed=0).as_numpy_iterator():
        prompt, target = ex["prompt_codes"], ex["target_codes"]
        assert prompt.shape[1] == target.shape[1] == N_Q

        # Find the utterances these crops come from; they must differ, same speaker.
        def find(crop):
            hits = []
            for u, uid in enumerate(bank.ids):
                full = bank.utterance_codes(u).T
                for s in range(full.shape[0] - crop.shape[0] + 1):
                    if np.array_equal(full[s : s + crop.shape[0]], crop):
                        hits.append(uid)
                        break
            return hits

        (t_id,) = find(target)
        (p_id,) = find(prompt)
        assert t_id != p_id and written["train"][t_id][0] == written["train"][p_id][0]
        target_ids[t_id] = True
    assert len(target_ids) == len(bank.ids) - 1


def test_rows_layout_and_stage_draws(token_corpus):
    directory, _ = token_corpus
    config = tiny_config(directory)
    it = data.DataIterator(data.make_dataset(config, "train", shuffle=True))
    stages = set()
    for _ in range(6):
        b = next(it)
        assert set(b) == {*data.ROW_KEYS, data.TASK_IDS_KEY}
        assert b["codes"].shape == (4, 40, N_Q)
        for k in data.ROW_KEYS[1:]:
            assert b[k].shape == (4, 40)
        seg, pm, w = b["decoder_segment_ids"], b["prompt_mask"], b["decoder_loss_weights"]
        np.testing.assert_array_equal(seg, ((pm + w) > 0).astype(np.int32))
        assert not (pm & w).any()
        for row in range(4):
            p = pm[row].sum()
            assert (pm[row, :p] == 1).all() and w[row, :p].sum() == 0  # prompt first
            stage = b["stage"][row][seg[row] > 0]
            assert len(set(stage.tolist())) == 1 and 1 <= stage[0] < N_Q
            stages.add(int(stage[0]))
            np.testing.assert_array_equal(b["decoder_task_ids"][row], stage[0] * w[row])
            assert (b["codes"][row][seg[row] == 0] == 0).all()
    assert stages == {1, 2, 3}


def test_iterator_state_resumes_exactly(token_corpus):
    directory, _ = token_corpus
    config = tiny_config(directory)
    train, evals = data.make_iterators(config)
    assert evals is not None
    for _ in range(3):
        next(train)
    state = train.get_state()
    expected = [next(train) for _ in range(4)]
    fresh, _ = data.make_iterators(config)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_config_errors_name_the_fields(token_corpus):
    directory, _ = token_corpus
    with pytest.raises(ValueError, match="train.seq_len"):
        data.make_iterators(tiny_config(directory, "train.seq_len=30"))
    with pytest.raises(ValueError, match="data.task_names"):
        data.make_iterators(tiny_config(directory, "model.n_q=3"))
    with pytest.raises(ValueError, match="token_dir"):
        data.make_iterators(tiny_config(""))
    with pytest.raises(ValueError, match="n_q"):
        data.register_task(
            tiny_config(
                directory,
                "model.n_q=8",
                "data.task_names=('rvq2', 'rvq3', 'rvq4', 'rvq5', 'rvq6', 'rvq7', 'rvq8')",
            )
        )
