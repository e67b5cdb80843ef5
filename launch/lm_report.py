"""Prints the LM's validation loss and perplexity per task next to its unigram baseline,
and whether the LM reads its input.

    python -m launch.lm_report --config=configs/gpa_tiny.py --workdir=W

Reads the newest eval of the run in W (W/tensorboard) and recomputes the per-task
unigram baselines from the run's token shards (gpa_jax.training.lm_report). Pass the
same --config (and overrides) the run was trained with. Then (--conditioning, default
on) the loss of each task's output given its own input vs another row's input, from the
newest checkpoint (gpa_jax.evaluation.conditioning): a gain near 0 means the model
ignores the input. --asr_rows=N adds the ASR WER/CER of N rows of that split, decoded as
the config's `sampling.asr` says (the joint CTC/attention search of configs/gpa_tiny.py;
--config.sampling.asr.beam=1 --config.sampling.asr.ctc_weight=0 for greedy).
--attention_rows=N adds which heads read the input: per task, layer and head the
attention mass on the text / source and how monotonic it is, on N rows
(`conditioning.attention_on_input`; tokens-input LMs).
--json_out=PATH also writes the figures as JSON (`lm_report.run_figures`: per-task eval
loss and perplexity, parameter count, step time; with --conditioning each task's
matched / mismatched loss and gain, and "asr" wer / cer / rows with --asr_rows, of the
last of --conditioning_steps): what `configs/sweeps/audio_input.py` tabulates.
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
    "asr_rows", 0, "With it: ASR WER/CER of this many rows of that split per step."
)
_ATTENTION_ROWS = flags.DEFINE_integer(
    "attention_rows", 0, "With it: each head's attention on the input, over this many rows per task."
)
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the figures as JSON here.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gpa_jax import paths
    from gpa_jax.training import lm_report

    config, workdir = config_utils.config_from_flags(), common.existing_workdir()
    if _JSON_OUT.value:  # its folder is made (or refused) before minutes of scoring
        common.output_file(_JSON_OUT.value)
    print(lm_report.report(config, workdir))
    figures = lm_report.run_figures(config, workdir) if _JSON_OUT.value else {}
    if _CONDITIONING.value:
        from gpa_jax.evaluation import conditioning
        from gpa_jax.sampling.config import lm_sampling

        for step in [int(s) for s in _STEPS.value] or [None]:
            report = conditioning.report_for_workdir(
                workdir, split=_SPLIT.value, step=step, asr_rows=_ASR_ROWS.value,
                sampling=lm_sampling(config), attention_rows=_ATTENTION_ROWS.value,
            )  # fmt: skip
            print(conditioning.format_report(report))
            figures["conditioning_step"] = report["step"]
            for task in conditioning.TASKS:
                if report.get(task):
                    figures.setdefault(task, {}).update(
                        {k: v for k, v in report[task].items() if k != "rows"},
                        conditioning_rows=report[task]["rows"],
                    )
            if "attention" in report:
                figures["attention"] = report["attention"]
            if "asr_transcripts" in report:
                figures.setdefault("asr", {}).update(
                    wer=report["asr_transcripts"]["wer"], cer=report["asr_transcripts"]["cer"],
                    wer_rows=report["asr_transcripts"]["rows"],
                )
    if _JSON_OUT.value:
        paths.atomic_write_json(_JSON_OUT.value, figures, indent=2)
        print(f"figures: {_JSON_OUT.value}")


if __name__ == "__main__":
    common.run(main)
