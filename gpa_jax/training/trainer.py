"""The LM training loop: sharded state, jitted step, metrics, evals, checkpoints, resume.

    result = train(config, workdir)          # python -m launch.train --config=... --workdir=...

One call trains `config.train.num_steps` optimizer steps (counting those of a restored
checkpoint) on batches from `gpa_jax.training.data_iter` (or iterators passed in):

- Model: `config.kind` picks the model factory, loss sums, batch keys and data
  iterators (`model_kinds.py`): 'lm' (the decoder LM) or another registered kind
  (the acoustic stage), all trained by this same loop.
- State: model params + AdamW (warmup-cosine, global-norm clipping; train_step.py)
  created directly sharded over the config's mesh, or restored from the newest
  checkpoint in <workdir>/checkpoints onto the abstract sharded state, together with
  the data iterator's position, so a resumed run continues exactly where it stopped.
- Step: one jitted function with explicit in/out shardings from the logical-axis rules;
  the old state is donated. With train.grad_accum_steps = k the global batch is split
  into k micro-batches that a `lax.scan` runs inside that one step: gradients of the
  loss numerators are summed and divided once by the whole batch's loss-token count,
  so loss, gradient, clipping and the AdamW update equal those of the unsplit batch (up
  to float summation order), and per-step metrics, the optimizer step count and the
  LR schedule are unchanged. (optax.MultiSteps would average per-micro-batch *means*,
  which differs whenever micro-batches hold different numbers of loss tokens, as packed
  batches do, and it would make each micro-batch a separate jit call.)
- Metrics: loss (with z-loss), nll, z-loss, token accuracy, per-task loss and accuracy
  from `decoder_task_ids` (task names from data_iter.task_names), grad norm, learning
  rate, steps/s and tokens/s; every train.log_every steps to the metric writer
  (TensorBoard under <workdir>/tensorboard + absl log lines) and a tqdm bar with ETA.
  Device metrics are fetched one step late, so the host never waits on the step it
  just dispatched.
- Eval: every train.eval_every steps (and at the end), train.eval_steps batches from the
  eval iterator, always from the same start: the per-task eval loss is comparable
  across evals and runs. With the tasks source, each eval also writes the per-task
  unigram baseline (eval/<task>/unigram_loss, gpa_jax.tasks.baseline) and the end of
  the run logs the table of both (lm_report.loss_table). eval/loss (cross-entropy
  without z-loss) ranks checkpoints for train.keep_best.
- Checkpoints: every train.checkpoint_every steps, at the end, and when SIGTERM/SIGINT
  arrives (`gpa_jax.preemption`: the step in flight finishes, the state is saved, and
  `train` raises `preemption.Preempted` (a SystemExit 143/130) naming the checkpoint;
  its .result is the TrainResult). A second SIGINT aborts at once.
- Resume: from the newest checkpoint that restores; broken newer ones are moved aside
  with a warning each (`checkpoint.resume`, `gpa_jax.recovery`).
- A non-finite loss or gradient norm raises `NonFiniteLossError` naming the step and the
  tasks in its batch; nothing is saved from the broken state. A finite loss above
  train.divergence_factor x its running average marks the checkpoints saved around it as
  diverged; the newest good checkpoint is always kept (`recovery.DivergenceGuard`).

Multi-host: join the job first (`gpa_jax.multihost.initialize`; launch.train does); every
host runs the same loop on its own slice of each global batch; the stop-on-signal
decision is agreed across hosts at log steps.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpa_jax import preemption, recovery
from gpa_jax import sharding as sharding_lib
from gpa_jax.training import checkpoint as ckpt_lib
from gpa_jax.training import data_iter as data_lib
from gpa_jax.training import metrics as metrics_lib
from gpa_jax.training import model_kinds
from gpa_jax.training.train_step import _DROPOUT_STREAM, make_schedule

TASK_IDS_KEY = data_lib.TASK_IDS_KEY
# Exit statuses for a run stopped by a signal (128 + signal number, the shell convention).
EXIT_CODES = preemption.EXIT_CODES


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the message names the step and its tasks."""


@dataclasses.dataclass
class TrainResult:
    """What a `train` call did."""

    step: int  # optimizer steps completed (including those of a restored checkpoint)
    start_step: int  # the step it started from (0, or the restored checkpoint's)
    preempted: bool = False  # stopped early by a signal, after saving a checkpoint
    signal: int | None = None
    train_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # last log
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # last eval


# --- the step functions ----------------------------------------------------------------------


def _split_micro(x: jax.Array, k: int, spec: PartitionSpec) -> jax.Array:
    """[b, l] -> [k, b / k, l] with micro-batch i = rows i, i + k, i + 2k, ...

    Strided, so each device's contiguous block of rows holds its share of every
    micro-batch: no data moves between devices.
    """
    b = x.shape[0]
    out = x.reshape(b // k, k, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(out, PartitionSpec(None, *spec))


def make_step_fns(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    state_shardings: Any,
    mesh: Mesh,
) -> tuple[Callable, Callable, NamedSharding]:
    """(train_step, eval_step, batch_sharding), both jitted with explicit shardings.

    train_step(state, batch) -> (state, metrics) donates `state`; eval_step(state, batch)
    -> sums. `state` is nnx.state((model, optimizer)); metrics are replicated arrays.
    """
    rules = config.sharding_rules
    batch_spec = sharding_lib.logical_to_mesh_spec(("batch", "length"), rules)
    batch_sharding = NamedSharding(mesh, batch_spec)
    replicated = NamedSharding(mesh, PartitionSpec())
    accum = int(config.train.grad_accum_steps)
    batch_sums = model_kinds.get_kind(config).batch_sums
    schedule = make_schedule(config)
    use_dropout = model_kinds.needs_train_rng(config)
    base_key = jax.random.fold_in(jax.random.key(int(config.seed)), _DROPOUT_STREAM)
    # Accumulated gradients live sharded like the params (FSDP: never a full copy).
    grad_shardings = nnx.filter_state(state_shardings[0], nnx.Param)

    def pure_train_step(state, batch):
        model, opt = nnx.merge(graphdef, state)
        step = opt.step[...]
        model_def, params, rest = nnx.split(model, nnx.Param, ...)
        total_weight = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
        step_key = jax.random.fold_in(base_key, step) if use_dropout else None

        def grads_and_sums(micro, key):
            def objective(p):
                sums = batch_sums(nnx.merge(model_def, p, rest), micro, key, config)
                return sums["loss_sum"] / total_weight, sums

            return jax.grad(objective, has_aux=True)(params)

        if accum == 1:
            grads, sums = grads_and_sums(batch, step_key)
        else:
            micros = {k: _split_micro(v, accum, batch_spec) for k, v in batch.items()}
            first = jax.tree.map(lambda x: x[0], micros)
            zeros = jax.tree.map(
                lambda s: jnp.zeros(s.shape, s.dtype),
                jax.eval_shape(grads_and_sums, first, step_key),
            )

            def body(carry, xs):
                micro, i = xs
                key = jax.random.fold_in(step_key, i) if use_dropout else None
                grads, sums = jax.tree.map(jnp.add, carry, grads_and_sums(micro, key))
                return (jax.lax.with_sharding_constraint(grads, grad_shardings), sums), None

            (grads, sums), _ = jax.lax.scan(body, zeros, (micros, jnp.arange(accum)))
        opt.update(model, grads)
        metrics = dict(sums)
        metrics["loss"] = sums["loss_sum"] / total_weight
        metrics["grad_norm"] = optax.tree.norm(jax.tree.leaves(grads))
        metrics["learning_rate"] = schedule(step)
        return nnx.state((model, opt)), metrics

    def pure_eval_step(state, batch):
        model, _ = nnx.merge(graphdef, state)
        return batch_sums(model, batch, None, config)

    jit_train = jax.jit(
        pure_train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    jit_eval = jax.jit(
        pure_eval_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=replicated,
    )

    # The model's activation constraints read the mesh from the context (sharding.py).
    def train_step(state, batch):
        with jax.set_mesh(mesh):
            return jit_train(state, batch)

    def eval_step(state, batch):
        with jax.set_mesh(mesh):
            return jit_eval(state, batch)

    train_step.jitted, eval_step.jitted = jit_train, jit_eval
    return train_step, eval_step, batch_sharding


# --- host-side metric bookkeeping ------------------------------------------------------------


class _Sums:
    """Running float64 sums of the step/eval sums, reduced to means on demand."""

    def __init__(self, task_names: tuple[str, ...]):
        self.task_names = tuple(task_names)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.steps = 0
        self.grad_norm_sum = 0.0
        self.last: dict[str, float] = {}

    def add(self, values: Mapping[str, np.ndarray]) -> None:
        for k, v in values.items():
            if k.endswith("_sum"):
                self.sums[k] = self.sums.get(k, 0.0) + np.asarray(v, np.float64)
        if "grad_norm" in values:
            self.grad_norm_sum += float(values["grad_norm"])
            self.last["learning_rate"] = float(values["learning_rate"])
        self.steps += 1

    def means(self, prefix: str) -> dict[str, float]:
        s = self.sums
        if not s:
            return {}
        denom = max(float(s["weight_sum"]), 1.0)
        names = {"nll_sum": "nll", "z_sum": "z_loss", "correct_sum": "accuracy"}
        out = {f"{prefix}/{names[k]}": float(s[k]) / denom for k in names if k in s}
        out[f"{prefix}/loss_tokens"] = float(s["weight_sum"])
        # A model kind's own sums (model_kinds docstring) are reported as their means.
        for k, v in s.items():
            if k not in names and k not in ("loss_sum", "weight_sum") and np.ndim(v) == 0:
                out[f"{prefix}/{k[: -len('_sum')]}"] = float(v) / denom
        # Train: the optimised objective (with z-loss). Eval: plain cross-entropy.
        out[f"{prefix}/loss"] = (
            float(s["loss_sum"]) / denom if prefix == "train" else out[f"{prefix}/nll"]
        )
        task_names = ("unknown", *self.task_names)
        for tid, name in enumerate(task_names if "task_weight_sum" in s else ()):
            w = float(s["task_weight_sum"][tid])
            if w > 0:
                out[f"{prefix}/{name}/loss"] = float(s["task_nll_sum"][tid]) / w
                if "task_correct_sum" in s:
                    out[f"{prefix}/{name}/accuracy"] = float(s["task_correct_sum"][tid]) / w
                out[f"{prefix}/{name}/loss_tokens"] = w
        if self.grad_norm_sum and self.steps:
            out[f"{prefix}/grad_norm"] = self.grad_norm_sum / self.steps
        if "learning_rate" in self.last:
            out[f"{prefix}/learning_rate"] = self.last["learning_rate"]
        return out


def _agree(flag: bool) -> bool:
    """True on every host if it is True on any host (a no-op on one host)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


# --- the loop --------------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Fails early, naming the fields, when batch shape, mesh and accumulation disagree."""
    t = config.train
    if t.seq_len > config.model.max_len:
        raise ValueError(f"train.seq_len={t.seq_len} exceeds model.max_len={config.model.max_len}")
    if t.grad_accum_steps < 1 or t.batch_size % t.grad_accum_steps:
        raise ValueError(
            f"train.batch_size={t.batch_size} must be a multiple of "
            f"train.grad_accum_steps={t.grad_accum_steps} (>= 1)"
        )
    spec = sharding_lib.logical_to_mesh_spec(("batch",), config.sharding_rules)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    shards = math.prod(mesh.shape[a] for a in axes)
    micro = t.batch_size // t.grad_accum_steps
    if micro % shards:
        raise ValueError(
            f"micro-batch {micro} (train.batch_size={t.batch_size} / grad_accum_steps="
            f"{t.grad_accum_steps}) must divide over the {shards} batch shards of mesh axes "
            f"{axes} (mesh {dict(mesh.shape)})"
        )
    if t.batch_size % jax.process_count():
        raise ValueError(
            f"train.batch_size={t.batch_size} must divide over {jax.process_count()} hosts"
        )
    for name in ("num_steps", "log_every", "eval_every", "eval_steps", "checkpoint_every"):
        if t[name] < 0:
            raise ValueError(f"train.{name}={t[name]} must be >= 0")
    if t.log_every < 1:
        raise ValueError("train.log_every must be >= 1")
    if t.eval_every and t.eval_steps < 1:
        raise ValueError("train.eval_steps must be >= 1 when train.eval_every > 0")


def _device_batch(
    batch: Mapping[str, np.ndarray],
    sharding: NamedSharding,
    rows: int,
    length: int,
    kind: model_kinds.ModelKind | None = None,
) -> dict[str, jax.Array]:
    kind = kind or model_kinds.get_kind("lm")
    missing = [k for k in kind.batch_keys if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; it has {sorted(batch)}")
    out = {}
    for k in kind.device_keys:
        if k not in batch:
            continue
        x = np.asarray(batch[k])
        # Loss weights may be fractional; everything else is an integer id/flag.
        x = x.astype(np.float32 if x.dtype.kind == "f" and k in kind.float_keys else np.int32)
        if x.shape[:2] != (rows, length):
            raise ValueError(
                f"batch[{k!r}] has shape {x.shape}, expected ({rows}, {length}, ...) = this "
                "host's rows of train.batch_size x train.seq_len"
            )
        out[k] = jax.make_array_from_process_local_data(sharding, x)
    return out


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    train_iter: data_lib.CheckpointableIterator | None = None,
    eval_iter: data_lib.CheckpointableIterator | None = None,
    writer: Any = None,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains until config.train.num_steps (resuming from <workdir>/checkpoints if any).

    Iterators default to `data_iter.make_iterators(config)`; `writer` (any clu
    MetricWriter) defaults to TensorBoard under <workdir>/tensorboard + absl logs.
    Raises `preemption.Preempted` after saving when SIGTERM/SIGINT arrives, and
    `gpa_jax.errors.DiskFullError` when a save finds the disk full (the last complete
    checkpoint stays as it was).
    """
    job = f"{config.get('kind', 'lm')} training"
    # A full disk during a save: one DiskFullError (a user error), not a traceback per
    # Orbax writer thread.
    with preemption.watch(job), ckpt_lib.quiet_disk_full():
        return _train(config, workdir, job, train_iter, eval_iter, writer, mesh, progress)


def _train(config, workdir, job, train_iter, eval_iter, writer, mesh, progress) -> TrainResult:
    workdir = os.fspath(workdir)
    tc = config.train
    task_names = data_lib.task_names(config)
    mesh = sharding_lib.make_mesh(config.mesh) if mesh is None else mesh
    check_config(config, mesh)
    primary = jax.process_index() == 0
    kind = model_kinds.get_kind(config)
    if train_iter is None:
        train_iter, default_eval = kind.make_iterators(
            config,
            workdir=workdir,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        eval_iter = default_eval if eval_iter is None else eval_iter
    own_writer = writer is None
    if own_writer:
        writer = metrics_lib.create_default_writer(
            os.path.join(workdir, "tensorboard"), just_logging=not primary
        )

    graphdef, shardings, targets = ckpt_lib.abstract_train_state(config, mesh)
    manager = ckpt_lib.make_manager(
        ckpt_lib.checkpoint_dir(workdir),
        keep=tc.keep_checkpoints or None,
        keep_best=tc.keep_best,
        async_save=tc.async_checkpointing,
    )
    guard = recovery.DivergenceGuard(float(tc.divergence_factor), what=job)
    pbar = None
    try:
        t0 = time.time()
        resumed = ckpt_lib.resume(manager, targets, what=job)
        if resumed is not None:
            latest, state, data_state = resumed
            train_iter.set_state(data_state)
            guard.last_good = latest
            start_step = int(state[1]["step"][...])
            if start_step != latest:
                raise ValueError(f"checkpoint {latest} holds optimizer step {start_step}")
            logging.info("resumed from checkpoint %d in %.1f s", latest, time.time() - t0)
        else:
            objs = sharding_lib.create_sharded(
                ckpt_lib.train_state_factory(config), mesh, config.sharding_rules
            )
            state = nnx.state(objs)
            del objs
            start_step = 0
            logging.info("initialised the train state in %.1f s", time.time() - t0)
        train_step, eval_step, batch_sharding = make_step_fns(config, graphdef, shardings, mesh)
        eval_start = eval_iter.get_state() if eval_iter is not None else None
        # Per-task losses of a reference model on the eval data (data_iter contract).
        reference_losses = dict(getattr(eval_iter, "reference_losses", None) or {})
        rows = tc.batch_size // jax.process_count()
        tokens_per_step = tc.batch_size * tc.seq_len
        result = TrainResult(step=start_step, start_step=start_step)

        if primary and progress and start_step < tc.num_steps:
            from tqdm.auto import tqdm

            pbar = tqdm(
                total=tc.num_steps,
                initial=start_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )

        window = _Sums(task_names)
        pending: tuple[int, Any, np.ndarray | None] | None = None
        timer: tuple[float, int] | None = None  # (time, step) where throughput counting began

        def process(item) -> None:
            """Fetches one step's metrics, checks them, adds them to the log window."""
            nonlocal timer
            step_no, dev_metrics, task_ids = item
            values = jax.device_get(dev_metrics)
            loss, gnorm = float(values["loss"]), float(values["grad_norm"])
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                tasks = data_lib.task_names_in(task_ids, task_names) if task_ids is not None else []
                raise NonFiniteLossError(
                    f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at "
                    f"step {step_no} (loss={loss}, grad_norm={gnorm}); tasks in its batch: "
                    f"{', '.join(tasks) or 'unknown (no decoder_task_ids)'}; last checkpoint: "
                    f"{manager.latest_step()}"
                )
            guard.update(step_no, loss)
            window.add(values)
            if timer is None:
                timer = (time.time(), step_no)
                logging.info(
                    "step %d (with compilation) done %.1f s after start", step_no, timer[0] - t0
                )

        def log(step_no: int) -> None:
            nonlocal timer
            scalars = window.means("train")
            now = time.time()
            if timer is not None and step_no > timer[1]:
                rate = (step_no - timer[1]) / (now - timer[0])
                scalars["train/steps_per_s"] = rate
                scalars["train/tokens_per_s"] = rate * tokens_per_step
                eta = (tc.num_steps - step_no) / rate
                logging.info(
                    "step %d/%d: loss %.4f, %.2f steps/s, ETA %s",
                    step_no,
                    tc.num_steps,
                    scalars["train/loss"],
                    rate,
                    _fmt_eta(eta),
                )
            timer = (now, step_no)
            writer.write_scalars(step_no, scalars)
            result.train_metrics = scalars
            if pbar is not None:
                pbar.set_postfix(loss=f"{scalars['train/loss']:.4f}", refresh=False)
            window.reset()

        def evaluate(step_no: int) -> dict[str, float]:
            eval_iter.set_state(eval_start)
            sums = _Sums(task_names)
            for _ in range(tc.eval_steps):
                batch = _device_batch(next(eval_iter), batch_sharding, rows, tc.seq_len, kind)
                sums.add(jax.device_get(eval_step(state, batch)))
            scalars = sums.means("eval")
            for name, value in reference_losses.items():
                scalars[f"eval/{name}/unigram_loss"] = float(value)
            writer.write_scalars(step_no, scalars)
            result.eval_metrics = scalars
            return scalars

        def save(step_no: int, eval_scalars: dict[str, float] | None) -> None:
            metrics = guard.checkpoint_metrics(step_no)
            if eval_scalars and "eval/loss" in eval_scalars:
                metrics[ckpt_lib.BEST_METRIC] = eval_scalars["eval/loss"]
            if ckpt_lib.save_checkpoint(
                manager,
                step_no,
                state,
                data_state=train_iter.get_state(),
                metrics=metrics,
                config=config,
            ):
                logging.info("checkpoint %d saving (async) to %s", step_no, manager.directory)

        step = start_step
        while step < tc.num_steps:
            batch_np = next(train_iter)
            batch = _device_batch(batch_np, batch_sharding, rows, tc.seq_len, kind)
            state, dev_metrics = train_step(state, batch)
            step += 1
            if pending is not None:
                process(pending)
            pending = (step, dev_metrics, batch_np.get(TASK_IDS_KEY))
            if pbar is not None:
                pbar.update(1)

            at_log = step % tc.log_every == 0 or step == tc.num_steps
            stopping = preemption.requested() is not None
            if at_log and jax.process_count() > 1:
                stopping = _agree(stopping)
            elif jax.process_count() > 1:
                stopping = False  # hosts decide together, at log steps
            at_eval = (
                eval_iter is not None
                and tc.eval_every
                and (step % tc.eval_every == 0 or step == tc.num_steps)
            )
            at_ckpt = (tc.checkpoint_every and step % tc.checkpoint_every == 0) or (
                step == tc.num_steps
            )
            if not (at_log or at_eval or at_ckpt or stopping):
                continue
            process(pending)
            pending = None
            result.step = step
            if at_log or stopping:
                log(step)
            eval_scalars = evaluate(step) if at_eval and not stopping else None
            if at_ckpt or stopping:
                save(step, eval_scalars)
            if at_eval or at_ckpt:
                timer = (time.time(), step)  # throughput counts training time only
            if stopping:
                result.preempted = True
                result.signal = preemption.requested() or signal.SIGTERM
                break
        if pending is not None:
            process(pending)
        result.step = step
        if reference_losses and result.eval_metrics and primary:
            from gpa_jax.training.lm_report import loss_table

            logging.info(
                "eval loss per task vs unigram baseline:\n%s", loss_table(result.eval_metrics)
            )
    finally:
        if pbar is not None:
            pbar.close()
        failing = sys.exc_info()[1]
        try:
            ckpt_lib.wait_until_finished(manager)  # a preemption save is complete before we say so
        finally:
            ckpt_lib.close_manager(manager)
            try:
                writer.flush()
                if own_writer:
                    writer.close()
            except Exception as error:
                if failing is None:
                    raise
                # The metric writer fails too (e.g. the same full disk): the error that
                # stopped the run is the one to report.
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                logging.warning("metric writer failed as well: %s", first[:300])
    if result.preempted:
        try:
            preemption.stop(
                f"stopped at step {result.step}, checkpoint {result.step} saved in "
                f"{manager.directory}",
                job=job,
            )
        except preemption.Preempted as stopped:
            stopped.result = result
            raise
    return result
