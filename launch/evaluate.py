"""Evaluates the trained chain in a work dir on every task: python -m launch.evaluate --workdir=W

    python -m launch.evaluate --workdir=runs/demo --splits=test,test_unseen_voice \
        --max_per_task=40 --acoustic=nar --judge=whisper --speaker_encoder=resemblyzer
    python -m launch.evaluate --workdir=runs/demo --curves   # every kept LM checkpoint

Reads the codec (<W>/codec), the LM (<W>/checkpoints, params only), the acoustic stage
(<W>/acoustic/<variant>) and the token shards; runs ASR, TTS and VC on `split` and writes
<W>/eval/results.{md,json} and <W>/samples/<task>/*.wav + manifest.jsonl
(gpa_jax/evaluation/harness.py says what is measured). The first split is the headline
(results.json's top level); later ones are under its "splits". --config is the LM config.
--stages_workdir=S reads everything but the LM (corpus, codec, token shards, acoustic
stage) from S instead: a sweep's run dir holds only its LM, e.g.
    python -m launch.evaluate --workdir=runs/demo/sweeps/audio_input/audio_input=hybrid \
        --stages_workdir=runs/demo --config.model.audio_input=hybrid
`--curves` instead scores every kept LM checkpoint on the first split
(`gpa_jax.evaluation.lm_curves`) into <W>/eval/curves.{md,json,png}.
"""

from __future__ import annotations

from absl import app, flags

from gpa_jax import config_utils, paths, preemption
from launch import common

config_utils.define_config_flag("configs/gpa_tiny.py")
_CODEC = flags.DEFINE_string("codec_config", "configs/codec_tiny.py", "Codec config the work dir's codec was trained with.")
_ACOUSTIC = flags.DEFINE_enum("acoustic", "nar", ["nar", "vocoder"], "Acoustic stage (trained under <W>/acoustic/<name>).")
_SPLITS = flags.DEFINE_list("splits", ["test", "test_unseen_voice"],
                            "Splits of the token shards to evaluate; the first is the headline.")
_STAGES = flags.DEFINE_string(
    "stages_workdir", "", "Work dir of the corpus, codec, token shards and acoustic stage "
    "(default --workdir); --workdir then needs only the LM's checkpoints.")
_CURVES = flags.DEFINE_bool("curves", False, "Score every kept LM checkpoint into eval/curves.*.")
_CURVE_EXAMPLES = flags.DEFINE_integer("curve_examples", 16, "ASR and TTS examples per checkpoint (--curves).")
_MAX = flags.DEFINE_integer("max_per_task", 40, "Examples per task (0 = all).")
_JUDGE = flags.DEFINE_enum("judge", "whisper", ["whisper", "pocketsphinx", "faster_whisper"],
                           "Judge ASR for TTS/VC: whisper = bundled Whisper tiny.en (eval extra).")
_JUDGE_DIR = flags.DEFINE_string("judge_model_dir", "", "Local CTranslate2 Whisper directory (faster_whisper).")
_SPEAKER = flags.DEFINE_enum("speaker_encoder", "resemblyzer", ["resemblyzer", "lda", "mfcc"],
                             "Speaker encoder for similarity (resemblyzer: pretrained, eval extra).")


@preemption.job(
    "evaluation",
    note="no results were written (eval/results.json appears "
    "only when complete); rerun the same command",
)
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gpa_jax.evaluation import harness

    workdir, lm_config = common.existing_workdir(), config_utils.config_from_flags()
    codec_config = config_utils.load_config(_CODEC.value)
    if _CURVES.value:
        from gpa_jax.evaluation import lm_curves
        from gpa_jax.evaluation.judge import make_judge

        lm_curves.lm_curves(
            workdir, lm_config=lm_config, codec_config=codec_config,
            judge=make_judge(_JUDGE.value, workdir=workdir, model_dir=_JUDGE_DIR.value),
            split=_SPLITS.value[0], per_task=_CURVE_EXAMPLES.value, acoustic_variant=_ACOUSTIC.value,
            stages_workdir=_stages_workdir(),
        )  # fmt: skip
        print(paths.read_text(lm_curves.curves_path(workdir, "md")))
        return
    _, md_path = harness.run_evaluation(
        workdir,
        lm_config=lm_config,
        codec_config=codec_config,
        acoustic_variant=_ACOUSTIC.value,
        splits=_SPLITS.value,
        max_per_task=_MAX.value,
        judge_kind=_JUDGE.value,
        judge_model_dir=_JUDGE_DIR.value,
        speaker_encoder=_SPEAKER.value,
        stages_workdir=_stages_workdir(),
    )
    print(paths.read_text(md_path))


def _stages_workdir() -> str | None:
    if not _STAGES.value:
        return None
    if not paths.isdir(_STAGES.value):
        raise common.WorkdirError(f"--stages_workdir={_STAGES.value!r} does not exist; pass the work dir "
                                  "that holds the corpus, codec, token shards and acoustic stage")
    return _STAGES.value


if __name__ == "__main__":
    common.run(main)
