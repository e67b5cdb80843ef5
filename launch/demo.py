"""README command 1: the whole chain on the embedded synthetic corpus, on CPU.

    make demo                          # default sizes, work dir runs/demo
    make demo DEMO_ARGS="--quick"      # tiny corpus and a few steps per stage (a smoke run)
    make demo DEMO_ARGS="--from_stage=lm"   # rerun from a stage on (earlier ones are reused)

Stages, each the same function its own `launch.*` command runs, each resumable (a rerun
reuses what a stage already made: the corpus, codec checkpoints, finished token splits,
the SentencePiece model, LM / acoustic checkpoints):

    corpus      synthetic multi-speaker corpus (TFDS)             launch.build_corpus
    codec       CTC content teacher + SpeechTokenizer-style codec  launch.train_codec
    codec_eval  judge WER (test, test_unseen_voice), mel distance,  launch.eval_codec, probe_codec
                STOI, RVQ-1 content probe, quality per checkpoint
    tokens      RVQ token shards of every split                    launch.tokenize
    spm         SentencePiece text vocabulary                      launch.train_spm
    lm          the GPA LM on the tts/asr/vc mixture (+ loss table) launch.train
    acoustic    NAR and one-step-vocoder acoustic stages           launch.train (acoustic configs)
    acoustic_eval  stages vs the codec's bounds                    launch.eval_acoustic
    evaluate    every task on unseen sentences, seen voices        launch.evaluate

Everything goes under the work dir (--workdir, else $GPA_JAX_WORKDIR, else runs/demo):
tfds/, codec/, tokens/, spm/, checkpoints/ + tensorboard/ (the LM), acoustic/<variant>/,
eval/results.{md,json} and samples/<task>/ (wavs + manifest.jsonl).

A finished stage writes demo/<stage>.done (atomically, after all its outputs) and updates
timings.json (seconds per finished stage and their sum). A stage stopped part-way (signal
or error) keeps its seconds so far in demo/<stage>.partial, and the resumed run adds them
to the stage's time, so timings.json holds a stage's whole cost over its invocations
(--from_stage keeps them: the rerun stage reuses what the stopped one made). A rerun
skips stages marked done for the same size (--quick or not), and --from_stage=X reruns X
and every later stage. SIGTERM / Ctrl-C stop the demo in the stage it is in, with status
143 / 130 (`gpa_jax.preemption`): training stages save a checkpoint first, the others keep
what they finished; the next stage is not started, and rerunning the same command
resumes at the stopped stage.
"""

from __future__ import annotations

import contextlib
import os
import time

from absl import app, flags, logging

from gpa_jax import config_utils, paths, preemption
from launch import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
STAGES = ("corpus", "codec", "codec_eval", "tokens", "spm", "lm", "acoustic", "acoustic_eval", "evaluate")

flags.DEFINE_bool("quick", False, "Tiny corpus and a few steps per stage: a smoke run of minutes.")
_FROM = flags.DEFINE_enum("from_stage", "corpus", STAGES, "First stage to run (earlier ones must be done).")
_LM_OVERRIDES = flags.DEFINE_list(
    "lm_overrides", [], "Overrides of the LM config (configs/gpa_tiny.py), e.g. "
    "model.audio_input=continuous (the LauraGPT variant) or =hybrid (WHISPER-GPT); they hold "
    "for every stage that reads it.",
)
_ACOUSTIC_OVERRIDES = flags.DEFINE_list(
    "acoustic_overrides", [], "Overrides of both acoustic stages' configs (gpa_jax.acoustic.config), "
    "e.g. train.num_steps=3000; they hold for the acoustic and acoustic_eval stages.",
)
_TO = flags.DEFINE_enum("to_stage", "evaluate", STAGES, "Last stage to run.")

# --quick: the tiny corpus (60 utterances) and just enough steps to exercise every stage.
QUICK = dict(
    corpus="synthetic_speech/tiny",
    codec=[
        "data.corpus=synthetic_speech/tiny", "train.num_steps=40", "teacher.ctc_steps=30",
        "teacher.ctc_eval_utterances=8", "eval.max_utterances=8", "probe.train_utterances=24",
        "probe.test_utterances=8", "probe.steps=20", "train.checkpoint_every=20",
        "train.summary_every=40", "codec.kmeans_iters=2", "eval.per_voice=2", "curves.per_voice=1",
    ],
    lm=[
        "tasks.corpus=synthetic_speech/tiny", "train.num_steps=20", "train.batch_size=2",
        "train.eval_every=10", "train.eval_steps=2", "train.checkpoint_every=10",
        "optimizer.warmup_steps=2", "optimizer.total_steps=20",
    ],
    acoustic=["train.num_steps=20", "train.eval_every=10", "train.eval_steps=1",
              "train.checkpoint_every=10", "optimizer.warmup_steps=2", "optimizer.total_steps=20"],
    max_per_task=4,
    # The tiny corpus's held-out splits have one utterance per voice, so no reference clip
    # of another utterance exists there: the smoke run evaluates on train.
    eval_splits=("train",),
    curves=dict(per_task=2, cond_rows=8),
)


def _configs(quick: bool):
    corpus_spec = os.path.join(CONFIGS, f"corpus.py:{'tiny' if quick else 'default'}")
    codec = config_utils.load_config(os.path.join(CONFIGS, "codec_tiny.py"), QUICK["codec"] if quick else [])
    lm_overrides = [*(QUICK["lm"] if quick else []), *_LM_OVERRIDES.value]
    lm = config_utils.load_config(os.path.join(CONFIGS, "gpa_tiny.py"), lm_overrides)
    return config_utils.load_config(corpus_spec), codec, lm


def _stages(workdir: str, quick: bool):
    from launch.build_corpus import build_corpus

    corpus_cfg, codec_cfg, lm_cfg = _configs(quick)
    acoustic_overrides = (*(QUICK["acoustic"] if quick else ()), *_ACOUSTIC_OVERRIDES.value)

    def codec():
        from gpa_jax.codec import jobs

        jobs.train_codec(codec_cfg, workdir)

    def codec_eval():
        from gpa_jax.codec import curves, evaluate, jobs, probe

        judge, judge_report = common.codec_judge()
        for split in ("test", "test_unseen_voice"):
            result = jobs.evaluate_codec(
                codec_cfg, workdir, split=split, judge=judge, judge_report=judge_report
            )
            print(f"codec on {split}:\n{evaluate.format_table(result)}")
        print(probe.format_table(jobs.probe_codec(codec_cfg, workdir)))
        curves.codec_curves(codec_cfg, workdir, judge=judge, judge_report=judge_report)
        print(paths.read_text(curves.curves_path(workdir, "md")))

    def tokens():
        from gpa_jax.codec import jobs

        # Feature rows only when the LM reads them: a `tokens` LM never does, and the
        # log-mel rows took 9 of the stage's 12 minutes (launch.tokenize adds them later).
        config = codec_cfg.copy_and_resolve_references()
        if lm_cfg.model.audio_input == "tokens":
            config.data.token_features = ""
        jobs.tokenize_corpus(config, workdir)

    def spm():
        from gpa_jax.tasks import spm as spm_lib
        from gpa_jax.tasks.config import resolve_paths

        if lm_cfg.tasks.vocab.text != "spm":
            print(f"text vocabulary: {lm_cfg.tasks.vocab.text} (no SentencePiece model needed)")
            return
        _, model = resolve_paths(lm_cfg.tasks, workdir)
        if paths.exists(model):
            print(f"SentencePiece model {model} exists, reused")
            return
        sentences = spm_lib.corpus_transcripts(lm_cfg.tasks.corpus, lm_cfg.tasks.train_split, paths.tfds_dir(workdir))
        spm_lib.train_sentencepiece(sentences, model, int(lm_cfg.tasks.vocab.spm_vocab_size))

    def lm():
        from gpa_jax.evaluation import conditioning
        from gpa_jax.training import lm_report, trainer

        trainer.train(lm_cfg, workdir)
        print(lm_report.report(lm_cfg, workdir))
        print(conditioning.format_report(conditioning.report_for_workdir(workdir)))

    def token_dir() -> str:
        from gpa_jax.tasks.config import resolve_paths

        return resolve_paths(lm_cfg.tasks, workdir)[0]

    def acoustic():
        from gpa_jax.acoustic import recipe

        for variant in ("nar", "vocoder"):
            recipe.train_stage(variant, token_dir(), os.path.join(workdir, "acoustic", variant),
                               overrides=acoustic_overrides)

    def acoustic_eval():
        from gpa_jax.evaluation import acoustic_stages

        variants = ("nar", "vocoder")
        result = acoustic_stages.evaluate_stages(
            token_dir(), {v: os.path.join(workdir, "acoustic", v) for v in variants},
            out_dir=paths.acoustic_eval_dir(workdir), data_dir=paths.tfds_dir(workdir),
            config_kwargs={v: {"overrides": acoustic_overrides} for v in variants},
            **({"num_utterances": 4} if quick else {}),
        )
        print(acoustic_stages.format_table(result))

    def evaluate():
        from gpa_jax.acoustic import recipe  # noqa: F401  (imports the acoustic model kind)
        from gpa_jax.evaluation import harness, lm_curves

        splits = QUICK["eval_splits"] if quick else ("test", "test_unseen_voice")
        _, md_path = harness.run_evaluation(
            workdir, lm_config=lm_cfg, codec_config=codec_cfg,
            max_per_task=QUICK["max_per_task"] if quick else 40, splits=splits,
        )
        print(paths.read_text(md_path))
        judge, _ = common.codec_judge()
        lm_curves.lm_curves(workdir, lm_config=lm_cfg, codec_config=codec_cfg, judge=judge,
                            split=splits[0], **(QUICK["curves"] if quick else {}))
        print(paths.read_text(lm_curves.curves_path(workdir, "md")))

    return {
        "corpus": lambda: build_corpus(corpus_cfg, workdir),
        "codec": codec,
        "codec_eval": codec_eval,
        "tokens": tokens,
        "spm": spm,
        "lm": lm,
        "acoustic": acoustic,
        "acoustic_eval": acoustic_eval,
        "evaluate": evaluate,
    }


def marker_path(workdir: str, stage: str) -> str:
    """demo/<stage>.done: written when a stage has finished (what a rerun skips on)."""
    return os.path.join(workdir, "demo", f"{stage}.done")


def partial_path(workdir: str, stage: str) -> str:
    """demo/<stage>.partial: seconds spent in a stage by invocations stopped before it finished."""
    return os.path.join(workdir, "demo", f"{stage}.partial")


def _partial_seconds(workdir: str, stage: str, quick: bool) -> float:
    path = partial_path(workdir, stage)
    if not paths.isfile(path):
        return 0.0
    try:
        partial = paths.read_json(path)
    except ValueError:  # written atomically; unreadable means not ours
        return 0.0
    return float(partial["seconds"]) if partial.get("quick") == quick else 0.0


def _marker(workdir: str, stage: str, quick: bool) -> dict | None:
    """The stage's marker if it finished at this size, else None."""

    path = marker_path(workdir, stage)
    if not paths.isfile(path):
        return None
    try:
        marker = paths.read_json(path)
    except ValueError:  # unreadable: treat as not done (markers are written atomically)
        return None
    return marker if marker.get("quick") == quick else None


def stage_done(workdir: str, stage: str, quick: bool) -> bool:
    return _marker(workdir, stage, quick) is not None


def write_timings(workdir: str, quick: bool) -> dict:
    """<workdir>/timings.json: seconds per finished stage (from their markers) and the sum,
    so a run split over several resumed invocations still shows its whole cost."""
    markers = {name: _marker(workdir, name, quick) for name in STAGES}
    stages = {name: m["seconds"] for name, m in markers.items() if m is not None}
    timings = {"quick": quick, "stages": stages, "total_seconds": round(sum(stages.values()), 1)}
    paths.atomic_write_json(os.path.join(workdir, "timings.json"), timings)
    return timings


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = common.workdir()
    quick = flags.FLAGS.quick
    first, last = STAGES.index(_FROM.value), STAGES.index(_TO.value)
    if first > last:
        raise app.UsageError(f"--from_stage={_FROM.value} comes after --to_stage={_TO.value}")
    chosen = STAGES[first : last + 1]
    stages = _stages(workdir, quick)
    logging.info("demo: work dir %s, %s sizes, stages %s", workdir, "quick" if quick else "default", chosen)
    if flags.FLAGS["from_stage"].present:  # an explicit --from_stage reruns it and what follows
        for name in STAGES[first:]:
            paths.remove(marker_path(workdir, name))
    total = time.time()
    # Immediate: a signal stops the stage it is in (training stages save first: they
    # push their own deferred handling), and no later stage starts.
    with preemption.watch("demo", immediate=True, note="rerun the same command to resume"):
        for index, name in enumerate(chosen, start=1):
            head = f"== [{index}/{len(chosen)}] {name}"
            if stage_done(workdir, name, quick):
                print(f"{head}: done earlier, skipped ({marker_path(workdir, name)})", flush=True)
                continue
            start = time.time()
            earlier = _partial_seconds(workdir, name, quick)
            print(head, flush=True)
            paths.makedirs(os.path.dirname(marker_path(workdir, name)))
            try:
                stages[name]()
            except BaseException as stopped:
                # A resumed run reuses this invocation's work (checkpoints, finished
                # splits), so its time belongs to the stage's cost.
                # Never in the way of the real error (a full disk, say): the time is lost then.
                with contextlib.suppress(OSError):
                    paths.atomic_write_json(partial_path(workdir, name),
                                            {"quick": quick, "seconds": round(earlier + time.time() - start, 1)})  # fmt: skip
                if isinstance(stopped, preemption.Preempted):
                    print(f"{head} stopped by {preemption.signal_name(stopped.signum)}; rerun the "
                          f"same command to resume at this stage", flush=True)  # fmt: skip
                raise
            seconds = earlier + time.time() - start
            # The stage's outputs are complete: record it, whole or not at all.
            paths.atomic_write_json(marker_path(workdir, name), {"quick": quick, "seconds": round(seconds, 1)})
            paths.remove(partial_path(workdir, name))
            write_timings(workdir, quick)
            resumed = f" ({earlier:.1f} s of it in earlier, stopped runs)" if earlier else ""
            print(f"{head} done in {seconds:.1f} s{resumed}", flush=True)
    print(f"demo finished in {time.time() - total:.1f} s; artefacts under {workdir}")
    if "evaluate" in chosen:
        print(f"results: {os.path.join(workdir, 'eval', 'results.md')}; samples: {os.path.join(workdir, 'samples')}")


if __name__ == "__main__":
    common.run(main)
