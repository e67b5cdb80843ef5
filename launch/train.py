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

Multi-host (TPU pods, multi-node GPU): run the same command on every host (see
launch/tpu_pod.sh). --multihost=auto (default) calls jax.distributed.initialize() when
the environment describes a multi-process job (JAX_COORDINATOR_ADDRESS with
JAX_NUM_PROCESSES and JAX_PROCESS_ID, a multi-worker TPU slice, SLURM or Open MPI with
several tasks); --multihost=true forces it (e.g. on a Cloud TPU pod slice, where JAX
reads the topology from the TPU metadata), --multihost=false never calls it.
"""

from __future__ import annotations

import logging as py_logging
import os

from absl import app, flags, logging

from gpa_jax import config_utils, preemption
from launch import common

config_utils.define_config_flag("configs/gpa_tiny.py")
_MULTIHOST = flags.DEFINE_enum(
    "multihost",
    "auto",
    ["auto", "true", "false"],
    "Call jax.distributed.initialize(): auto = when the environment names a multi-process job.",
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
    from gpa_jax.training import lm_report, trainer  # after flag parsing: imports JAX

    trainer.maybe_initialize_distributed(
        {"auto": None, "true": True, "false": False}[_MULTIHOST.value]
    )
    config = config_utils.config_from_flags()
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


if __name__ == "__main__":
    common.run(main)
