"""Codec metrics on a corpus split: judge WER, mel distance, STOI, bitrate (full RVQ, RVQ-1).

    python -m launch.eval_codec --config=configs/codec_tiny.py --workdir=runs/demo --split=test
    python -m launch.eval_codec --workdir=runs/demo --curves      # every kept checkpoint

Restores the latest codec checkpoint of <workdir>/codec/checkpoints (or --checkpoint_dir),
transcribes the recordings and both resyntheses with the judge (default Whisper tiny.en,
offline; `--judge`), and with the CTC teacher of <workdir>/codec/teacher also gives the
teacher's character error rate. Writes <workdir>/codec/eval_<split>.json and prints the
tables; the last stdout line is the result as one JSON object. `--curves` instead scores
every kept checkpoint (`gpa_jax.codec.curves`) into <workdir>/codec/curves.{md,json,png}.
The work is `gpa_jax.codec.evaluate.evaluate_workdir`.
"""

from __future__ import annotations

import json

from absl import app, flags

from gpa_jax import config_utils, paths, preemption
from launch import common

config_utils.define_config_flag("configs/codec_tiny.py")
flags.DEFINE_string("data_dir", None, "TFDS data_dir of the corpus (default <workdir>/tfds).")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default config.eval.split).")
_CORPUS = flags.DEFINE_string("corpus", None, "TFDS speech corpus (default config.data.corpus).")
_MAX_UTTS = flags.DEFINE_integer(
    "max_utterances", None, "Utterances to score (default config.eval.max_utterances; 0 = all)."
)
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Codec checkpoints (default <workdir>/codec/checkpoints)."
)
_CURVES = flags.DEFINE_bool("curves", False, "Score every kept checkpoint into codec/curves.*.")


@preemption.job("codec evaluation", note="no results were written; rerun the same command")
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_utils.config_from_flags()
    from gpa_jax.codec import evaluate  # Imported here: JAX starts only when the job runs.

    workdir = common.existing_workdir()
    judge, judge_report = common.codec_judge()
    if _CURVES.value:
        from gpa_jax.codec import curves

        curves.codec_curves(
            config, workdir, judge=judge, judge_report=judge_report, data_dir=flags.FLAGS.data_dir
        )
        print(paths.read_text(curves.curves_path(workdir, "md")))
        return
    result = evaluate.evaluate_workdir(
        config,
        workdir,
        split=_SPLIT.value,
        data_dir=flags.FLAGS.data_dir,
        corpus=_CORPUS.value,
        max_utterances=_MAX_UTTS.value,
        checkpoint_dir=_CHECKPOINT_DIR.value,
        judge=judge,
        judge_report=judge_report,
    )
    print(
        f"{result['corpus']}/{result['split']}: {result['num_utterances']} utterances, "
        f"{result['audio_seconds']:.0f} s of audio, codec step {result['codec_step']}"
    )
    print(evaluate.format_table(result))
    print(f"written to {evaluate.eval_path(workdir, result['split'])}")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    common.run(main)
