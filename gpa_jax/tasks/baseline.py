"""Per-task unigram baselines: what a model that ignores all context would score.

For each task, the output tokens (the loss-weighted part: output segment + <eos>) of the
training split's planned examples give a unigram distribution over the LM's
`vocab_size` ids, with add-`alpha` smoothing (Laplace, alpha = 1) so that a token unseen
in training costs a finite amount:

    p(v) = (count_train(v) + alpha) / (N_train + alpha * vocab_size)

Reported per task (natural log, nats per loss token, the trainer's unit):

    train_entropy       -mean log p_ml over the training outputs (unsmoothed maximum-
                        likelihood unigram: its entropy)
    eval_cross_entropy  -mean log p over the eval split's outputs: the baseline that the
                        trainer's eval/<task>/loss (same tokens, same weights: one per
                        output token) is compared with

Each example's output tokens count once, as in the loss (every output token has weight
1, every conditioning token 0), so a task's baseline does not depend on the mixture
rates or on packing. The examples are the tasks' own plans (same seed, same length
rule), so dropped over-long examples are left out here too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gpa_jax.tasks import planning
from gpa_jax.tasks.vocab import EOS_ID


@dataclasses.dataclass(frozen=True)
class UnigramBaseline:
    task: str
    train_tokens: int
    train_entropy: float
    eval_tokens: int
    eval_cross_entropy: float


def output_token_counts(
    task: str, bank: planning.Bank, rows: np.ndarray, audio_offset: int, vocab_size: int
) -> np.ndarray:
    """int64 [vocab_size] counts of the output tokens of planned `rows` (incl. <eos>)."""
    counts = np.zeros(vocab_size, np.int64)
    targets = rows[:, planning.TGT] if len(rows) else np.zeros([0], np.int64)
    for t in targets.tolist():
        if task == "asr":
            start = int(bank.text_start[t])
            ids = bank.text_ids[start : start + int(bank.text_len[t])]
        else:
            start = int(bank.audio_start[t])
            ids = bank.codes[0, start : start + int(bank.frames[t])].astype(np.int64)
            ids = ids + audio_offset
        if len(ids) and int(ids.max()) >= vocab_size:
            raise ValueError(f"{task}: output id {int(ids.max())} >= vocab_size {vocab_size}")
        counts += np.bincount(ids, minlength=vocab_size)
    counts[EOS_ID] += len(targets)
    return counts


def unigram_baselines(
    handle: Any,
    train_split: str,
    eval_split: str,
    *,
    seed: int,
    vocab_size: int,
    alpha: float = 1.0,
) -> dict[str, UnigramBaseline]:
    """Baselines per task of a `register_tasks` handle (tasks with no examples: zeros)."""
    out = {}
    for task, source in handle.sources.items():
        offset = source.vocab.audio_range(0)[0]

        def counts(split, task=task, source=source, offset=offset):
            rows, _ = source.plan(split, seed)
            return output_token_counts(task, source.bank(split), rows, offset, vocab_size)

        train, evals = counts(train_split), counts(eval_split)
        n_train, n_eval = int(train.sum()), int(evals.sum())
        seen = train > 0
        entropy = (
            float(-(train[seen] / n_train * np.log(train[seen] / n_train)).sum())
            if n_train
            else 0.0
        )
        log_p = np.log((train + alpha) / (n_train + alpha * vocab_size))
        cross = float(-(evals * log_p).sum() / n_eval) if n_eval else 0.0
        out[task] = UnigramBaseline(task, n_train, entropy, n_eval, cross)
    return out
