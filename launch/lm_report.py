"""Prints the LM's validation loss per task next to its unigram baseline.

    python -m launch.lm_report --config=configs/gpa_tiny.py --workdir=W

Reads the newest eval of the run in W (W/tensorboard) and recomputes the per-task
unigram baselines from the run's token shards (gpa_jax.training.lm_report). Pass the
same --config (and overrides) the run was trained with.
"""

from __future__ import annotations

from absl import app

from gpa_jax import config_utils
from launch import common

config_utils.define_config_flag("configs/gpa_tiny.py")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gpa_jax.training import lm_report

    print(lm_report.report(config_utils.config_from_flags(), common.workdir()))


if __name__ == "__main__":
    app.run(main, flags_parser=config_utils.flags_parser)
