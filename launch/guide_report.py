"""Guided attention's linear prior against the CTC teacher's forced alignment.

    python -m launch.guide_report --workdir=W [--split=test] [--utterances=100] \
        [--lm_config=configs/gpa_tiny.py]

Reads the codec stage's CTC content teacher (<W>/codec/teacher) and --split of the
corpus, aligns each transcript to its frames and reports how far the guide's centre
(output frame t of T -> character t/T of the text) is from the aligned character, in
characters and in fractions of the text, beside the LM config's model.guide_sigma (the
band's width in the same unit); `gpa_jax.evaluation.alignment` says what is measured.
The last stdout line is the result as one JSON object.
"""

from __future__ import annotations

import json

from absl import app, flags

from gpa_jax import config_utils, paths, preemption
from launch import common

_CODEC = flags.DEFINE_string("codec_config", "configs/codec_tiny.py", "Codec config of the work dir's codec stage.")
_LM = flags.DEFINE_string("lm_config", "configs/gpa_tiny.py", "LM config whose model.guide_sigma is reported.")
_SPLIT = flags.DEFINE_string("split", "test", "Corpus split to align.")
_UTTERANCES = flags.DEFINE_integer("utterances", 100, "Utterances aligned (the split's first).")


@preemption.job("guide report", note="nothing was written; rerun the same command")
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = common.existing_workdir()
    codec_config = config_utils.load_config(_CODEC.value)
    lm_config = config_utils.load_config(_LM.value)
    from gpa_jax.codec import data as codec_data
    from gpa_jax.codec import teacher as teacher_lib
    from gpa_jax.evaluation.alignment import linear_guide_deviation

    teacher = teacher_lib.load_teacher(codec_config, teacher_lib.teacher_dir(codec_config, workdir))
    rate = int(codec_config.codec.sample_rate)
    clips = codec_data.load_clips(codec_config.data.corpus, _SPLIT.value, data_dir=paths.tfds_dir(workdir),
                                  sample_rate=rate, limit=_UTTERANCES.value)  # fmt: skip
    result = linear_guide_deviation(teacher, list(clips.audio), list(clips.texts), sample_rate=rate)
    result.update(split=_SPLIT.value, guide_sigma=float(lm_config.model.guide_sigma))
    print(f"linear guide centre vs forced alignment, {result['utterances']} {_SPLIT.value} utterances:")
    print(f"  characters off: mean {result['chars_mean']:.2f}, median {result['chars_median']:.2f}, "
          f"p90 {result['chars_p90']:.2f}")
    print(f"  fraction of the text off: mean {result['fraction_mean']:.3f}, p90 "
          f"{result['fraction_p90']:.3f} (model.guide_sigma {result['guide_sigma']})")
    print(f"  blank frames before the first / after the last character: "
          f"{result['leading_blank']:.3f} / {result['trailing_blank']:.3f} of the frames")
    print(json.dumps(result))


if __name__ == "__main__":
    common.run(main)
