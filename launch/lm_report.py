"""Prints the LM's validation loss and perplexity per task next to its unigram baseline,
and whether the LM reads its input.

    python -m launch.lm_report --config=configs/gpa_tiny.py --workdir=W

Reads the newest eval of the run in W (W/tensorboard) and recomputes the per-task
unigram baselines from the run's token shards (gpa_jax.training.lm_report). Pass the
same --config (and overrides) the run was trained with. Then (--conditioning, default
on) the loss of each task's output given its own input vs another row's input, from the
newest checkpoint (gpa_jax.evaluation.conditioning): a gain near 0 means the model
ignores the input. --asr_rows=N adds the greedy ASR WER/CER of N rows of that split.
"""

from __future__ import annotations

from absl import app, flags

from gpa_jax import config_utils
from launch import common

config_utils.define_config_flag("configs/gpa_tiny.py")
_CONDITIONING = flags.DEFINE_bool("conditioning", True, "Also report own- vs other-input loss.")
_SPLIT = flags.DEFINE_string("conditioning_split", "validation", "Split of that report.")
_STEPS = flags.DEFINE_list("conditioning_steps", [], "Checkpoint steps for it (default: newest).")
_ASR_ROWS = flags.DEFINE_integer(
    "asr_rows", 0, "With it: greedy ASR WER/CER of this many rows of that split per step."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gpa_jax.training import lm_report

    print(lm_report.report(config_utils.config_from_flags(), common.existing_workdir()))
    if _CONDITIONING.value:
        from gpa_jax.evaluation import conditioning

        for step in [int(s) for s in _STEPS.value] or [None]:
            report = conditioning.report_for_workdir(
                common.existing_workdir(), split=_SPLIT.value, step=step, asr_rows=_ASR_ROWS.value
            )
            print(conditioning.format_report(report))


if __name__ == "__main__":
    common.run(main)
