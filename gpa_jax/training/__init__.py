"""LM training: loss, optimizer and sharded step here; the loop in `trainer`, Orbax in `checkpoint`."""

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
