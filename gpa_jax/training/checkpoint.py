"""Orbax checkpoints of the LM train state, restorable onto any mesh.

One checkpoint step is an Orbax Composite with four items (directories under
<workdir>/checkpoints/<step>/):

    params     model parameters, a nested dict of arrays (pure dict of the nnx state)
    opt_state  optimizer state (AdamW moments, counters, the optimizer step)
    data_iter  the training data iterator's get_state(), one file per host process
    meta       JSON: step, task names and the full config (for samplers and humans)

params and opt_state are separate items so that a sampler restores the params item
alone (`restore_params_only`): the optimizer state, twice the params' size, is never
read. Restores go onto abstract targets (jax.eval_shape of the model/optimizer +
shardings from the config's logical-axis rules, as in MaxText), so a checkpoint written
on one mesh restores onto any other: each process reads only the shards it owns.

Saves are asynchronous (the device->host copy blocks, the file writes do not); the
manager keeps the newest `keep` steps plus, with `keep_best` > 0, the `keep_best` steps
with the lowest eval loss among those saved with one, plus always the newest checkpoint
not saved within a loss spike (`gpa_jax.recovery.LastGood`; preservation policies of
orbax-checkpoint >= 0.11). `restore_checkpoint(manager, targets)` without a step resumes
from the newest step that restores, moving broken newer ones aside (`gpa_jax.recovery`).

A save that runs out of disk space raises one `DiskFullError` naming the directory and
the checkpoint that is still intact; the half-written step (Orbax writes it under
`<step>.orbax-checkpoint-tmp` and renames it only when complete, so it never looks like a
checkpoint) is removed to give the space back. Wrap the manager's life in
`quiet_disk_full()` so that Orbax's writer threads do not each print a traceback, and
close it with `close_manager`. The codec and its CTC teacher save the same way
(`save_step`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from gpa_jax import paths, recovery
from gpa_jax import sharding as sharding_lib
from gpa_jax.errors import DiskFullError, UserError, is_disk_full

PARAMS = "params"
OPT_STATE = "opt_state"
DATA_ITER = "data_iter"
META = "meta"
# Metric that ranks checkpoints for keep_best (the trainer's overall eval loss).
BEST_METRIC = "eval/loss"


def checkpoint_dir(workdir: str | os.PathLike) -> str:
    """Where a run's checkpoints live: <workdir>/checkpoints."""
    return os.path.join(os.fspath(workdir), "checkpoints")


def saved_steps(directory: str | os.PathLike) -> list[int]:
    """The steps saved in a checkpoint directory, ascending ([] if it does not exist)."""
    # gpa_jax.paths: the directory may be gs:// (Orbax writes there directly).
    return sorted(int(d) for d in paths.listdir(directory) if d.isdigit())


# --- data-iterator state item ---------------------------------------------------------------


class DataIterHandler(ocp.handlers.CheckpointHandler):
    """Saves an iterator state, one file per host: process_<i>-of-<n>.json (dict) or .bin (bytes).

    Every host's data pipeline reads its own shard of the data, so each keeps its own
    position (grain's handler does the same, but accepts only grain's iterator types).
    Bytes states (e.g. a tf.data iterator checkpoint, megabytes with a packing buffer) are
    written raw. The state is captured when the save is requested, so a later `next()`
    cannot leak in.
    """

    def save(self, directory: epath.Path, args: DataIterSave) -> None:
        state = args.state
        if isinstance(state, bytes):
            (directory / _process_filename(".bin")).write_bytes(state)
        else:
            (directory / _process_filename(".json")).write_text(json.dumps(state, indent=1))

    def restore(self, directory: epath.Path, args: DataIterRestore | None = None) -> Any:
        del args
        as_json, as_bytes = (
            directory / _process_filename(".json"),
            directory / _process_filename(".bin"),
        )
        if as_json.exists():
            return json.loads(as_json.read_text())
        if as_bytes.exists():
            return as_bytes.read_bytes()
        found = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(
            f"no data-iterator state {as_json.stem}.(json|bin) in {directory}; saved: {found} "
            "(was the checkpoint written with a different number of hosts?)"
        )

    def metadata(self, directory: epath.Path) -> None:
        del directory
        return None

    def finalize(self, directory: epath.Path) -> None:
        del directory

    def close(self) -> None:
        pass


def _process_filename(suffix: str) -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}{suffix}"


@ocp.args.register_with_handler(DataIterHandler, for_save=True)
@dataclasses.dataclass
class DataIterSave(ocp.args.CheckpointArgs):
    state: dict[str, Any] | bytes


@ocp.args.register_with_handler(DataIterHandler, for_restore=True)
@dataclasses.dataclass
class DataIterRestore(ocp.args.CheckpointArgs):
    pass


# --- abstract targets -----------------------------------------------------------------------


def train_state_factory(
    config: ml_collections.ConfigDict, key: jax.Array | None = None
) -> Callable[[], tuple[nnx.Module, nnx.Optimizer]]:
    """() -> (model, optimizer) as the trainer builds them (params from `key`; the model
    from config.kind's factory, `model_kinds`)."""
    from gpa_jax.training.model_kinds import get_kind
    from gpa_jax.training.train_step import make_optimizer

    key = jax.random.key(int(config.seed)) if key is None else key
    tx = make_optimizer(config)
    make_model = get_kind(config).model_factory(config)

    def factory():
        model = make_model(nnx.Rngs(params=key))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    return factory


def abstract_train_state(
    config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, shardings, restore targets) of the (model, optimizer) state on `mesh`.

    Nothing is allocated: the targets are ShapeDtypeStructs carrying NamedShardings.
    """
    graphdef, abstract = sharding_lib.abstract_state(train_state_factory(config))
    shardings = sharding_lib.state_shardings(abstract, mesh, config.sharding_rules)
    return graphdef, shardings, sharding_lib.abstract_with_shardings(abstract, shardings)


def abstract_params(
    config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, restore targets) of the model alone on `mesh` (no optimizer)."""
    from gpa_jax.training.model_kinds import get_kind

    make_model = get_kind(config).model_factory(config)
    graphdef, abstract = sharding_lib.abstract_state(lambda: make_model(nnx.Rngs(0)))
    shardings = sharding_lib.state_shardings(abstract, mesh, config.sharding_rules)
    return graphdef, sharding_lib.abstract_with_shardings(abstract, shardings)


# --- manager, save, restore -----------------------------------------------------------------


def make_manager(
    directory: str | os.PathLike,
    *,
    keep: int | None = 3,
    keep_best: int = 0,
    async_save: bool = True,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """A CheckpointManager keeping the newest `keep` steps (+ the `keep_best` best by eval loss).

    keep=None keeps every step. Saves happen only when `save_checkpoint` asks (the trainer
    decides the cadence), so no save-decision policy is configured here.
    """
    # LastGood: diverged saves never push the last good checkpoint out (gpa_jax.recovery).
    policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep), recovery.LastGood()]
    if keep_best:
        policies.append(_BestByEvalLoss(keep_best))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
        # Steps a killed or disk-full save left half-written (<step>.orbax-checkpoint-tmp)
        # are removed when a writing run starts.
        cleanup_tmp_directories=not read_only,
    )
    directory = os.fspath(directory)
    if "://" not in directory:  # Orbax needs absolute local paths (gs://... stay as they are).
        directory = os.path.abspath(directory)
    directory = epath.Path(directory)
    if read_only and not directory.exists():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    return ocp.CheckpointManager(directory, options=options)


@dataclasses.dataclass
class _BestByEvalLoss:
    """BestN over the checkpoints saved with an eval loss (every save carries metrics now,
    the divergence mark at least, so BestN's own "without metrics" test no longer applies)."""

    n: int

    def should_preserve(self, checkpoints, *, context=None) -> list[bool]:
        ranked = [i for i, c in enumerate(checkpoints) if c.metrics and BEST_METRIC in c.metrics]
        ranked.sort(key=lambda i: checkpoints[i].metrics[BEST_METRIC])
        keep = set(ranked[: self.n])
        return [i in keep for i in range(len(checkpoints))]


def save_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    state: nnx.State,
    *,
    data_state: dict[str, Any] | bytes | None = None,
    metrics: dict[str, float] | None = None,
    config: ml_collections.ConfigDict | None = None,
) -> bool:
    """Starts an (async) save of the trainer's (model, optimizer) `state` at `step`.

    `state` is `nnx.state((model, optimizer))`. Returns False if `step` is already saved.
    The arrays are copied off the device before this returns, so the caller may donate
    or overwrite them at once.
    """
    if step in manager.all_steps():
        return False
    items: dict[str, Any] = {
        PARAMS: ocp.args.StandardSave(nnx.to_pure_dict(state[0])),
        OPT_STATE: ocp.args.StandardSave(nnx.to_pure_dict(state[1])),
        META: ocp.args.JsonSave(_meta(step, config)),
    }
    if data_state is not None:
        items[DATA_ITER] = DataIterSave(data_state)
    return save_step(manager, step, ocp.args.Composite(**items), metrics=metrics)


def save_step(
    manager: ocp.CheckpointManager,
    step: int,
    args: ocp.args.CheckpointArgs,
    *,
    metrics: dict[str, float] | None = None,
    wait: bool = False,
) -> bool:
    """`manager.save(step, args)` of any manager (the LM's, the codec's, the CTC
    teacher's), a full disk reported as one `DiskFullError` naming the directory and the
    intact checkpoint, the half-written step removed. wait: return once it is written.

    Wrap the manager's life in `quiet_disk_full()` to drop Orbax's per-thread tracebacks.
    """
    # An async save still in flight fails here, not inside the next save (its step is
    # then the one named).
    wait_until_finished(manager)
    with _disk_full_as_user_error(manager, step):
        saved = manager.save(step, args=args, metrics=metrics, force=True)
        if wait:
            manager.wait_until_finished()
    return saved


def wait_until_finished(manager: ocp.CheckpointManager) -> None:
    """`manager.wait_until_finished()`, a full disk reported as `DiskFullError`."""
    with _disk_full_as_user_error(manager, None):
        manager.wait_until_finished()


def close_manager(manager: ocp.CheckpointManager) -> None:
    """`manager.close()`, also after a save failed on a full disk.

    Orbax keeps a failed async save's error in the manager and again in its checkpointer,
    raises each copy once, and a close stops at the first it meets. Closing while the
    `DiskFullError` already raised for it propagates, the copies are dropped (the message
    would lose the step) and the close finished; otherwise the first is raised, converted.
    """
    reported = isinstance(sys.exc_info()[1], DiskFullError)
    first = None
    for _ in range(3):  # the manager's copy, the checkpointer's, then a clean close
        try:
            with _disk_full_as_user_error(manager, None):
                manager.close()
            break
        except DiskFullError as error:
            first = first or error
    if first is not None and not reported:
        raise first


_ORBAX_TMP = ".orbax-checkpoint-tmp"  # Orbax's name for a step being written


@contextlib.contextmanager
def _disk_full_as_user_error(manager: ocp.CheckpointManager, step: int | None) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        if not is_disk_full(error):
            raise
        raise _disk_full_error(epath.Path(manager.directory), step) from error


def _disk_full_error(directory: epath.Path, step: int | None) -> DiskFullError:
    partial = _partial_steps(directory)
    failed = sorted({p.name.split(".")[0] for p in partial}) or ([str(step)] if step else [])
    # Gives the space back. Orbax stops at the first failed write while tensorstore's
    # other writes of the step are still in flight: wait until they stop touching the
    # folder, or they recreate what is removed. Orbax never restores these folders, and
    # the next run's manager removes any left (`make_manager`).
    _wait_until_still(partial)
    for path in partial:
        path.rmtree(missing_ok=True)
    left = [p.name for p in _partial_steps(directory)]
    intact = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    saved = (
        f"checkpoint {intact[-1]} is intact; free space and rerun to resume from it"
        if intact
        else "no earlier checkpoint was saved; free space and rerun"
    )
    which = f"checkpoint {', '.join(failed)}" if failed else "a checkpoint"
    if left:
        removed = f" (the partial {', '.join(left)} is ignored and removed by the next run)"
    else:
        removed = " (its partial files were removed)" if partial else ""
    return DiskFullError(
        f"no space left on device writing {which} to {directory}{removed}; {saved}"
    )


def _partial_steps(directory: epath.Path) -> list[epath.Path]:
    if not directory.exists():
        return []
    return [p for p in directory.iterdir() if _ORBAX_TMP in p.name]


def _wait_until_still(folders: list[epath.Path], timeout: float = 10.0) -> None:
    """Returns once nothing under `folders` has changed for 0.5 s (or after `timeout`)."""

    def snapshot():
        seen = []
        for folder in folders:
            for root, _, files in os.walk(os.fspath(folder)):
                for name in files:
                    with contextlib.suppress(OSError):
                        st = os.stat(os.path.join(root, name))
                        seen.append((root, name, st.st_size, st.st_mtime_ns))
        return sorted(seen)

    if not folders or "://" in os.fspath(folders[0]):
        return
    deadline, last = time.monotonic() + timeout, snapshot()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = snapshot()
        if now == last:
            return
        last = now


class _DropDiskFullRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (is_disk_full(error) or is_disk_full(record.getMessage()))


_QUIET_LOGGERS = ("absl", "asyncio")  # Orbax's threads log to absl; asyncio its futures


def _drop_unraisable(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if is_disk_full(value) or (
            isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
        ):
            return
        previous(unraisable)

    return hook


@contextlib.contextmanager
def quiet_disk_full() -> Iterator[None]:
    """While a manager saves: a save that fails for a full disk is reported once, as the
    `DiskFullError` it raises, instead of one traceback per array and thread.

    Orbax stops at the first failed write; tensorstore's other writes of the step then
    complete into the event loop Orbax has closed, each printing RuntimeError('Event loop
    is closed') as an unraisable exception, Orbax's threads log each error with its
    traceback, and asyncio logs the futures nobody awaited (1,900 lines on a real LM).
    Only those are dropped; after a full disk they stay dropped for the rest of the
    process, since the in-flight writes keep failing after the error is raised."""
    quiet = _DropDiskFullRecords()
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    previous = sys.unraisablehook
    sys.unraisablehook = _drop_unraisable(previous)
    try:
        yield
    except Exception as error:
        if is_disk_full(error):
            quiet = None  # type: ignore[assignment]
        raise
    finally:
        if quiet is not None:
            sys.unraisablehook = previous
            for logger in loggers:
                logger.removeFilter(quiet)


def _meta(step: int, config: ml_collections.ConfigDict | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"step": int(step)}
    if config is not None:
        meta["config"] = json.loads(config.to_json_best_effort())
        if "data" in config:
            from gpa_jax.training.data_iter import task_names

            meta["task_names"] = list(task_names(config))
    return meta


class ShapeMismatchError(UserError, ValueError):
    """A checkpoint's parameters do not have the shapes the config asks for (a config
    changed between runs); the message names the parameters and both shapes."""


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def check_saved_shapes(step_dir: str | os.PathLike, targets: Any, item: str = PARAMS) -> None:
    """Raises ShapeMismatchError if `item` of a saved step differs from `targets` (a pure
    dict of arrays / ShapeDtypeStructs) in any parameter's presence or shape.

    Reads only the item's metadata (no arrays). Orbax's own restore error names neither
    the parameter nor the config key behind it, only two shapes.
    """
    metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir) / item)
    saved = {_dotted(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(metadata)}
    wanted = {_dotted(p): tuple(t.shape) for p, t in jax.tree_util.tree_leaves_with_path(targets)}
    problems = [
        f"{name}: config {wanted[name]}, checkpoint {saved[name]}"
        for name in sorted(wanted.keys() & saved.keys())
        if wanted[name] != saved[name]
    ]
    problems += [
        f"{name}: in the config, not in the checkpoint"
        for name in sorted(wanted.keys() - saved.keys())
    ]
    problems += [
        f"{name}: in the checkpoint, not in the config"
        for name in sorted(saved.keys() - wanted.keys())
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ShapeMismatchError(
            f"checkpoint {os.fspath(step_dir)} does not fit the config: "
            + "; ".join(problems[:5])
            + more
            + ". Use the config it was trained with (its "
            "meta item holds it) or a new work dir."
        )


def _item_exists(manager: ocp.CheckpointManager, step: int, item: str) -> bool:
    return (epath.Path(manager.directory) / str(step) / item).exists()


def resume(
    manager: ocp.CheckpointManager, targets: nnx.State, *, what: str = "trainer"
) -> tuple[int, nnx.State, Any] | None:
    """(step, state, data-iterator state or None) of the newest checkpoint that restores,
    None if there is none; broken newer steps are moved aside with a warning each
    (`gpa_jax.recovery.restore_newest`)."""
    found = recovery.restore_newest(
        manager,
        lambda step: restore_checkpoint(manager, targets, step, require_data=True),
        what=what,
    )
    if found is None:
        return None
    step, (state, data_state) = found
    return step, state, data_state


def restore_checkpoint(
    manager: ocp.CheckpointManager,
    targets: nnx.State,
    step: int | None = None,
    *,
    require_data: bool = False,
) -> tuple[nnx.State, Any]:
    """(state, data-iterator state or None) of `step` (default: latest) onto `targets`.

    `targets` is the third value of `abstract_train_state` (for any mesh); the restored
    arrays carry its shardings. (`resume` falls back past broken steps.)
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    check_saved_shapes(epath.Path(manager.directory) / str(step), nnx.to_pure_dict(targets[0]))
    items: dict[str, Any] = {
        PARAMS: ocp.args.StandardRestore(nnx.to_pure_dict(targets[0])),
        OPT_STATE: ocp.args.StandardRestore(nnx.to_pure_dict(targets[1])),
    }
    has_data = _item_exists(manager, step, DATA_ITER)
    if require_data and not has_data:  # the trainer always saves it: a missing one is damage
        raise FileNotFoundError(f"checkpoint {step} has no {DATA_ITER} folder")
    if has_data:
        items[DATA_ITER] = DataIterRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    state = jax.tree.map(lambda x: x, targets)  # a copy whose leaves get replaced
    nnx.replace_by_pure_dict(state[0], restored[PARAMS])
    nnx.replace_by_pure_dict(state[1], restored[OPT_STATE])
    return state, (restored[DATA_ITER] if has_data else None)


def restore_params_only(
    ckpt_dir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    step: int | None = None,
) -> nnx.State:
    """The model params of `step` (default: latest) in `ckpt_dir`, sharded over `mesh`.

    Reads only the params item: no optimizer state is read or allocated. Returns the
    model's nnx.State; `nnx.merge(graphdef, params)` (graphdef from `abstract_params`)
    gives a ready model, or use `restore_model`.
    """
    _, targets = abstract_params(config, mesh)
    manager = make_manager(ckpt_dir, keep=None, async_save=False, read_only=True)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
        check_saved_shapes(epath.Path(manager.directory) / str(step), nnx.to_pure_dict(targets))
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                **{PARAMS: ocp.args.StandardRestore(nnx.to_pure_dict(targets))}
            ),
        )
    finally:
        manager.close()
    params = jax.tree.map(lambda x: x, targets)
    nnx.replace_by_pure_dict(params, restored[PARAMS])
    return params


def restore_model(
    ckpt_dir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    step: int | None = None,
) -> nnx.Module:
    """The model of `step` (default: latest), params sharded over `mesh` (params-only read)."""
    graphdef, _ = abstract_params(config, mesh)
    return nnx.merge(graphdef, restore_params_only(ckpt_dir, config, mesh, step))
