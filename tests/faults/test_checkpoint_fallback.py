"""Resume past damaged checkpoints; divergence never evicts the last good one.

The LM trainer writes real Orbax checkpoints (steps 2, 4, 6); the newest is then damaged
the three ways the issue names (a truncated parameter file, a missing folder, a truncated
data-iterator JSON). Resume must warn once naming step 6 and why, move 6 aside (never
delete it) and continue from step 4 to the end.
"""

import logging
import os
import shutil

import numpy as np
import pytest
from flax import nnx

from gpa_jax import recovery
from gpa_jax.config_utils import load_config
from gpa_jax.training import checkpoint as ckpt
from gpa_jax.training import trainer
from gpa_jax.training.metrics import MemoryWriter


def _config(tiny_lm, *extra):
    return load_config(tiny_lm, ["train.checkpoint_every=2", "train.keep_checkpoints=3", *extra])


@pytest.fixture(scope="module")
def six_steps(tiny_lm, compile_cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("six_steps")
    trainer.train(_config(tiny_lm, "train.num_steps=6"), workdir, writer=MemoryWriter(), progress=False)
    assert ckpt.saved_steps(ckpt.checkpoint_dir(workdir)) == [2, 4, 6]
    return workdir


def _largest_array_file(item_dir):
    """The biggest array data file of an Orbax item (the merged OCDBT data a restore reads)."""
    data = os.path.join(item_dir, "d")
    return max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _damage(step_dir, how):
    if how == "truncated params":
        _truncate(_largest_array_file(os.path.join(step_dir, "params")))
    elif how == "missing folder":
        shutil.rmtree(os.path.join(step_dir, "params"))
    elif how == "truncated data-iterator json":
        _truncate(os.path.join(step_dir, "data_iter", "process_0-of-1.json"))


@pytest.mark.parametrize("how", ["truncated params", "missing folder", "truncated data-iterator json"])
def test_resume_falls_back_to_the_newest_checkpoint_that_restores(six_steps, tiny_lm, tmp_path, how, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(six_steps, workdir)
    ckpt_dir = ckpt.checkpoint_dir(workdir)
    _damage(os.path.join(ckpt_dir, "6"), how)

    caplog.set_level(logging.WARNING)
    result = trainer.train(_config(tiny_lm, "train.num_steps=8"), workdir, writer=MemoryWriter(), progress=False)

    assert (result.start_step, result.step) == (4, 8)
    warnings = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "checkpoint 6 does not restore" in warnings[0] and "6.broken" in warnings[0], warnings
    assert "resumed from checkpoint 4" in warnings[0]
    assert os.path.isdir(os.path.join(ckpt_dir, "6.broken"))  # moved aside, not deleted
    assert ckpt.saved_steps(ckpt_dir) == [4, 6, 8]  # 6 here is the step retrained from 4


def test_no_restorable_checkpoint_raises_and_moves_nothing(six_steps, tiny_lm, tmp_path):
    """A config that fits no checkpoint is the user's error, not damage: nothing is moved."""
    workdir = tmp_path / "run"
    shutil.copytree(six_steps, workdir)
    changed = _config(tiny_lm, "train.num_steps=8", "model.mlp_dim=96")
    with pytest.raises(Exception) as err:
        trainer.train(changed, workdir, writer=MemoryWriter(), progress=False)
    assert any("no checkpoint in" in note for note in getattr(err.value, "__notes__", []))
    assert sorted(os.listdir(ckpt.checkpoint_dir(workdir))) == ["2", "4", "6"]


def _toy_state(value):
    model = nnx.State({"w": nnx.Param(np.full((4,), value, np.float32))})
    opt = nnx.State({"step": nnx.Variable(np.asarray(int(value), np.uint32))})
    return (model, opt)


@pytest.mark.parametrize("kind", ["lm", "codec"])
def test_diverged_saves_never_evict_the_last_good_checkpoint(tmp_path, kind):
    """keep=2, a save every step, a finite spike from step 4 on: step 3 must survive."""
    from gpa_jax.codec import train as codec_train

    guard = recovery.DivergenceGuard(4.0)
    losses = {1: 5.0, 2: 4.0, 3: 3.5, 4: 60.0, 5: 70.0, 6: 80.0, 7: 90.0}
    if kind == "lm":
        manager = ckpt.make_manager(tmp_path, keep=2, async_save=False)
    else:
        manager = codec_train.checkpoint_manager(str(tmp_path), keep=2)
    for step, loss in losses.items():
        assert guard.update(step, loss) == (step >= 4)
        metrics = guard.checkpoint_metrics(step)
        if kind == "lm":
            ckpt.save_checkpoint(manager, step, _toy_state(step), metrics=metrics)
        else:
            import orbax.checkpoint as ocp

            manager.save(step, args=ocp.args.Composite(x=ocp.args.StandardSave({"w": np.ones(2)})),
                         metrics=metrics)  # fmt: skip
        manager.wait_until_finished()
    assert list(manager.all_steps()) == [3, 6, 7]
    manager.close()
    # Without the guard's marks the same saves keep only the newest two (today's behaviour).
    plain = ckpt.make_manager(tmp_path / "plain", keep=2, async_save=False)
    for step in losses:
        ckpt.save_checkpoint(plain, step, _toy_state(step))
    assert list(plain.all_steps()) == [6, 7]
    plain.close()
