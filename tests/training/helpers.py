"""Test helper: the trainer's own jitted, sharded step (`trainer.make_step_fns`) over a
model built by the test (e.g. `tests.models.helpers.numpy_model`, no RNG compile)."""

from flax import nnx

from gpa_jax import sharding
from gpa_jax.training import trainer
from gpa_jax.training.train_step import make_optimizer


def trainer_steps(config, model, mesh):
    """(graphdef, state, train_step, eval_step) for `model` + config's AdamW on `mesh`.

    `state` is nnx.state((model, optimizer)) placed by config.sharding_rules;
    train_step(state, batch) -> (state, metrics) donates `state` (use the returned one);
    eval_step(state, batch) -> the kind's loss sums. `nnx.merge(graphdef, state)` gives
    (model, optimizer) back.
    """
    optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    shardings = sharding.state_shardings(state, mesh, config.sharding_rules)
    state = sharding.shard_state(state, mesh, config.sharding_rules)
    train_step, eval_step, _ = trainer.make_step_fns(config, graphdef, shardings, mesh)
    return graphdef, state, train_step, eval_step
