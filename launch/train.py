"""Trains the LM: python -m launch.train --config=configs/gpa_tiny.py --workdir=runs/tiny

    python -m launch.train --config=configs/gpa_tiny.py --workdir=runs/tiny \
        --config.train.num_steps=20

Rerunning the same command resumes from the newest checkpoint in <workdir>/checkpoints
(state, optimizer and data position). SIGTERM or Ctrl-C saves a checkpoint at the
current step, prints where, and exits with status 143 / 130 (gpa_jax.preemption); a
second Ctrl-C aborts without saving.
Metrics: `tensorboard --logdir <workdir>/tensorboard`. With the task data (the gpa_*
configs) the run ends by printing the last eval's loss per task next to its unigram
baseline (`python -m launch.lm_report` prints it again later).

Multi-host (TPU pods, multi-node GPU, or several processes on one machine): run the
same command in every process (see launch/tpu_pod.sh). --multihost=auto (default) joins
a multi-process job (jax.distributed.initialize) when --coordinator_address (or
$JAX_COORDINATOR_ADDRESS) is set or a scheduler describes one (a multi-worker TPU slice,
SLURM or Open MPI with several tasks); --multihost=true forces it (e.g. on a Cloud TPU
pod slice, where JAX reads the topology from the TPU metadata), --multihost=false never
does. Without a scheduler give every process the same coordinator and process count and
its own id, e.g. two processes on one machine:

    python -m launch.train ... --coordinator_address=localhost:12355 --num_processes=2 --process_id=0
    python -m launch.train ... --coordinator_address=localhost:12355 --num_processes=2 --process_id=1

(or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID). In a multi-process
job each command runs the trainer as its child (gpa_jax.multihost.supervise): when a
peer process is lost (no heartbeat for --heartbeat_timeout seconds, or the coordinator,
process 0, is gone) the others stop with one line naming it and exit with status 75;
rerun every command to resume from the last checkpoint.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys

from absl import app, flags, logging

from gpa_jax import config_utils, multihost, paths, preemption
from launch import common

config_utils.define_config_flag("configs/gpa_tiny.py")
_MULTIHOST = flags.DEFINE_enum(
    "multihost",
    "auto",
    ["auto", "true", "false"],
    "Join a multi-process job: auto = when --coordinator_address or the environment names one.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process job: host:port of process 0 (default: "
    "$JAX_COORDINATOR_ADDRESS, or what JAX detects on TPU / SLURM / Open MPI).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes",
    None,
    "Multi-process job: how many processes (default: $JAX_NUM_PROCESSES).",
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    None,
    "Multi-process job: this process's id, 0..num_processes-1 (default: $JAX_PROCESS_ID).",
)
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout",
    multihost.DEFAULT_HEARTBEAT_TIMEOUT_S,
    "Multi-process job: seconds without a heartbeat after which a process counts as lost "
    "and the others stop.",
    lower_bound=1,
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (first host only).")


class _QuietOrbax(py_logging.Filter):
    """Drops orbax's INFO chatter (dozens of lines per save); keeps its warnings."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return (
            record.levelno >= py_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname
        )


@preemption.job("training", note="rerun the same command to resume from the last checkpoint")
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietOrbax())
    config = config_utils.config_from_flags()  # a bad flag stops here, before any process starts
    job = multihost.resolve_job(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if multihost.wanted({"auto": None, "true": True, "false": False}[_MULTIHOST.value], job):
        if not multihost.supervised():
            workdir = common.workdir()
            raise SystemExit(
                multihost.supervise(
                    [sys.executable, *sys.orig_argv[1:]],
                    job=job,
                    heartbeat_timeout_s=_HEARTBEAT.value,
                    after_loss=lambda: _restart_note(workdir),
                    report_path=_report_path(workdir, job),
                )
            )
        multihost.initialize(job, heartbeat_timeout_s=_HEARTBEAT.value)
    from gpa_jax.training import lm_report, trainer  # after joining the job: uses devices

    workdir = common.workdir()
    result = trainer.train(config, workdir, progress=_PROGRESS.value)
    summary = f"step {result.step}/{config.train.num_steps}"
    if "train/loss" in result.train_metrics:
        summary += f", train loss {result.train_metrics['train/loss']:.4f}"
    if "eval/loss" in result.eval_metrics:
        summary += f", eval loss {result.eval_metrics['eval/loss']:.4f}"
    print(f"finished at {summary}; workdir {workdir}")
    if lm_report.table_rows(result.eval_metrics):  # the tasks source's per-task baselines
        print(lm_report.loss_table(result.eval_metrics))


def _report_path(workdir: str, job: multihost.Job) -> str | None:
    """Where a supervisor keeps the runtime's report of a lost peer (local work dirs)."""
    if "://" in workdir:
        return None
    who = f"process_{job.process_id}" if job.process_id is not None else f"pid_{os.getpid()}"
    return os.path.join(workdir, f"lost_peer.{who}.log")


def _restart_note(workdir: str) -> str:
    """What a restart of every process resumes from (read when a peer was lost)."""
    directory = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in paths.listdir(directory) if d.isdigit())
    where = f"checkpoint {steps[-1]} in {directory}" if steps else "the start (no checkpoint yet)"
    return f"restart every process with the same command to resume from {where}"


if __name__ == "__main__":
    common.run(main)
