"""LM training: loss, optimizer and sharded step here; the loop in `trainer`, Orbax in `checkpoint`.

Batches from `data_iter` (SeqIO task mixture or synthetic), model families through
`model_kinds`, metric writers in `metrics`, the per-task loss-vs-unigram table in
`lm_report`.
"""

from gpa_jax.training.train_step import (
    create_train_state,
    cross_entropy_loss,
    loss_fn,
    make_optimizer,
    make_sharded_train_step,
    optimizer_config,
    train_step,
)

__all__ = [
    "create_train_state",
    "cross_entropy_loss",
    "loss_fn",
    "make_optimizer",
    "make_sharded_train_step",
    "optimizer_config",
    "train_step",
]
