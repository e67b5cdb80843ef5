"""Orbax checkpoints: keep-N/best-N, data-iterator state, restore onto another mesh, params only."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from gpa_jax import sharding
from gpa_jax.training import checkpoint as ckpt
from gpa_jax.training import trainer
from gpa_jax.training.metrics import MemoryWriter
from tests.training.test_trainer import compile_cache, tiny_config  # noqa: F401  (fixture)


def _toy_state(value: float):
    """A (model, optimizer)-shaped pair of small nnx States."""
    model = nnx.State({"w": nnx.Param(jnp.full((4,), value))})
    opt = nnx.State({"step": nnx.Variable(jnp.asarray(int(value), jnp.uint32))})
    return (model, opt)


def test_keeps_the_latest_n_plus_the_best_by_eval_loss(tmp_path):
    manager = ckpt.make_manager(tmp_path, keep=2, keep_best=1)
    eval_losses = {2: 1.0, 4: 3.0, 6: 2.0}  # steps 1, 3, 5 have no eval
    for step in range(1, 8):
        metrics = {ckpt.BEST_METRIC: eval_losses[step]} if step in eval_losses else None
        assert ckpt.save_checkpoint(manager, step, _toy_state(step), metrics=metrics)
    assert not ckpt.save_checkpoint(manager, 7, _toy_state(7))  # already there
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 6, 7]  # best eval (2) + the latest two
    manager.close()
    plain = ckpt.make_manager(tmp_path / "plain", keep=3)
    for step in range(1, 6):
        ckpt.save_checkpoint(plain, step, _toy_state(step))
    plain.wait_until_finished()
    assert plain.all_steps() == [3, 4, 5]
    plain.close()


@pytest.mark.parametrize("state", [{"step": 7, "epoch": [1, 2]}, b"\x00grain-bytes\xff"])
def test_data_iterator_state_round_trip(tmp_path, state):
    manager = ckpt.make_manager(tmp_path, async_save=False)
    ckpt.save_checkpoint(manager, 1, _toy_state(1.0), data_state=state)
    targets = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _toy_state(0.0))
    restored, data_state = ckpt.restore_checkpoint(manager, targets)
    assert data_state == state
    np.testing.assert_array_equal(restored[0]["w"][...], np.ones(4))
    assert int(restored[1]["step"][...]) == 1
    manager.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run on mesh (2, 2, 2): (workdir, config, its final params and optimizer state)."""
    workdir = tmp_path_factory.mktemp("trained")
    config = tiny_config("train.num_steps=2", "train.eval_every=0")
    trainer.train(config, workdir, writer=MemoryWriter(), progress=False)
    mesh = sharding.make_mesh(config.mesh)
    _, _, targets = ckpt.abstract_train_state(config, mesh)
    manager = ckpt.make_manager(ckpt.checkpoint_dir(workdir), read_only=True)
    state, _ = ckpt.restore_checkpoint(manager, targets)
    manager.close()
    host = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    return workdir, config, host


def test_restore_onto_a_different_mesh(trained):
    workdir, config, saved = trained
    other = tiny_config("mesh.shape=(1, 4, 2)")
    mesh = sharding.make_mesh(other.mesh)
    _, _, targets = ckpt.abstract_train_state(other, mesh)
    manager = ckpt.make_manager(ckpt.checkpoint_dir(workdir), read_only=True)
    state, data_state = ckpt.restore_checkpoint(manager, targets)
    manager.close()
    assert data_state == {"step": 2}
    kernel = state[0]["decoder"]["layers"][0]["mlp"]["gate_proj"]["kernel"][...]
    assert kernel.sharding.mesh.shape == {"data": 1, "fsdp": 4, "tensor": 2}
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (16, 64)
    restored = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    flat_saved = jax.tree_util.tree_leaves_with_path(saved)
    flat_restored = dict(jax.tree_util.tree_leaves_with_path(restored))
    assert len(flat_saved) == len(flat_restored)
    for path, value in flat_saved:
        np.testing.assert_array_equal(flat_restored[path], value, err_msg=str(path))
    assert int(state[1]["step"][...]) == 2


def test_params_only_restore_reads_no_optimizer_state(trained, tmp_path):
    workdir, config, saved = trained
    # Without the optimizer item on disk at all, the params still restore.
    copy = tmp_path / "ckpts"
    shutil.copytree(ckpt.checkpoint_dir(workdir), copy)
    shutil.rmtree(copy / "2" / ckpt.OPT_STATE)
    mesh = sharding.make_mesh(tiny_config("mesh.shape=(8, 1, 1)").mesh)
    params = ckpt.restore_params_only(copy, config, mesh)
    kinds = {
        type(v) for v in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    }
    assert kinds == {nnx.Param}
    restored = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    assert jax.tree.structure(restored) == jax.tree.structure(saved[0])
    for (path, value), expected in zip(
        jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(saved[0]), strict=True
    ):
        np.testing.assert_array_equal(value, expected, err_msg=str(path))
    # A ready model for a sampler, in one call.
    model = ckpt.restore_model(copy, config, mesh)
    np.testing.assert_array_equal(model.embedder.embedding[...], saved[0]["embedder"]["embedding"])
