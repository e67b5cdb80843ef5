"""Evaluates acoustic stages against the codec's bounds (gpa_jax.evaluation.acoustic_stages).

    python -m launch.eval_acoustic --workdir=runs/acoustic \
        --nar_config=configs/acoustic_nar_tiny.py:runs/acoustic/tokens/synthetic_speech/tiny \
        --nar_workdir=runs/acoustic/nar_tiny \
        --vocoder_config=configs/acoustic_vocoder_tiny.py:runs/acoustic/tokens/synthetic_speech/tiny \
        --vocoder_workdir=runs/acoustic/vocoder_tiny [--split=test] [--num_utterances=24]

Each stage is a config (path[:arg], the one it was trained with; `--nar_override` /
`--vocoder_override` take key=value overrides, repeatable) and its training workdir.
Original audio comes from the TFDS corpus named in the token manifest, in --data_dir
(default <workdir>/tfds). Writes <workdir>/eval/acoustic/<split>/results.{json,md} and a
few wavs under samples/; the last stdout line is the results as one JSON object.
"""

from __future__ import annotations

import json

from absl import app, flags

from gpa_jax import paths, preemption
from launch import common

_NAR_CONFIG = flags.DEFINE_string("nar_config", None, "Config of the NAR stage (path[:arg]).")
_NAR_WORKDIR = flags.DEFINE_string("nar_workdir", None, "Training workdir of the NAR stage.")
_NAR_OVERRIDE = flags.DEFINE_multi_string("nar_override", [], "key=value for the NAR config.")
_VOC_CONFIG = flags.DEFINE_string("vocoder_config", None, "Config of the vocoder (path[:arg]).")
_VOC_WORKDIR = flags.DEFINE_string("vocoder_workdir", None, "Training workdir of the vocoder.")
_VOC_OVERRIDE = flags.DEFINE_multi_string(
    "vocoder_override", [], "key=value for the vocoder config."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default <workdir>/tfds).")
_SPLIT = flags.DEFINE_string("split", "test", "Held-out token split of the targets.")
_PROMPT_SPLIT = flags.DEFINE_string("prompt_split", "train", "Split the prompts come from.")
_SPEAKER_SPLIT = flags.DEFINE_string(
    "speaker_split", "train", "Split whose audio trains the speaker encoder and centroids."
)
_NUM = flags.DEFINE_integer("num_utterances", 24, "Target utterances to evaluate.")
_ENCODER = flags.DEFINE_enum("speaker_encoder", "lda", ["lda", "mfcc"], "Speaker encoder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the utterance / prompt choice.")


def _stage(name, spec, workdir, overrides):
    from gpa_jax.config_utils import load_config

    if not spec and not workdir:
        return None
    if not (spec and workdir):
        raise app.UsageError(f"--{name}_config and --{name}_workdir go together")
    config = load_config(spec, list(overrides))
    if config.get("kind") != "acoustic" or config.model.variant != name:
        raise app.UsageError(
            f"--{name}_config={spec} is not an acoustic {name!r} config (kind "
            f"{config.get('kind')!r}, variant {config.get('model', {}).get('variant')!r})"
        )
    return config, workdir


@preemption.job("acoustic evaluation", note="no results were written; rerun the same command")
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = common.existing_workdir()
    from gpa_jax.evaluation import acoustic_stages as evaluate

    specs = {}
    for name, spec, wd, ov in (
        ("nar", _NAR_CONFIG.value, _NAR_WORKDIR.value, _NAR_OVERRIDE.value),
        ("vocoder", _VOC_CONFIG.value, _VOC_WORKDIR.value, _VOC_OVERRIDE.value),
    ):
        stage = _stage(name, spec, wd, ov)
        if stage is not None:
            specs[name] = stage
    if not specs:
        raise app.UsageError(
            "give --nar_config/--nar_workdir and/or --vocoder_config/--vocoder_workdir"
        )
    out_dir = paths.acoustic_eval_dir(workdir, _SPLIT.value)
    result = evaluate.run(
        specs,
        split=_SPLIT.value,
        prompt_split=_PROMPT_SPLIT.value,
        speaker_split=_SPEAKER_SPLIT.value,
        data_dir=_DATA_DIR.value or paths.tfds_dir(workdir),
        num_utterances=_NUM.value,
        speaker_encoder=_ENCODER.value,
        seed=_SEED.value,
        out_dir=out_dir,
    )
    print(evaluate.format_table(result))
    print(
        f"speaker-ID accuracy of the {result['speaker_encoder']} encoder on the originals: "
        f"{result['speaker_id_accuracy']:.3f}; results in {out_dir}"
    )
    if not result["bounds_informative"]:
        print(
            "WARNING: full-codec and RVQ-1-only decodes coincide; the codec ignores layers "
            "2..N, so these comparisons are not informative (train the codec longer)"
        )
    keys = ("systems", "checks", "bounds_gap", "bounds_informative", "speaker_id_accuracy")
    print(json.dumps({k: result[k] for k in keys}, sort_keys=True))


if __name__ == "__main__":
    common.run(main)
