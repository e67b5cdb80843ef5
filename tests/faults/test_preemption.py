"""SIGTERM / SIGINT to real processes: each job saves, says where, exits 143 / 130, and
the rerun resumes; the sweep stops at the preempted run instead of starting the next, and
the demo stopped in its codec stage resumes that stage from the saved checkpoint.
Tokenization keeps its finished splits and resumes at the stopped one; evaluation keeps
its finished tasks' samples, writes no results, and a rerun evaluates again."""

import json
import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.faults.conftest import PYTHON, REPO, run_until, subprocess_env


def test_sweep_stops_at_a_preempted_run_and_resumes_it(tiny_lm, compile_cache, tmp_path):
    (tmp_path / "sweep.py").write_text(textwrap.dedent(f"""
        def get_sweep():
            return dict(name="t", entry="launch.train", config={tiny_lm!r},
                        fixed={{"train.num_steps": 300, "train.checkpoint_every": 0,
                                "train.log_every": 10}},
                        grid={{"model.mlp_dim": [64, 32]}}, metrics=["train/loss"],
                        args=["--noprogress"])
    """))
    workdir = tmp_path / "w"
    cmd = [PYTHON, "-m", "launch.sweep", f"--sweep={tmp_path / 'sweep.py'}", f"--workdir={workdir}"]
    env = subprocess_env(compile_cache)
    first = workdir / "sweeps" / "t" / "mlp_dim=64"
    rc, out = run_until(cmd, env, r"step \d+/300: loss", signal.SIGTERM,
                        watch_file=str(first / "run.log"))  # fmt: skip
    assert rc == 143, out[-3000:]
    assert "run mlp_dim=64 was stopped by SIGTERM" in out, out[-3000:]
    log = (first / "run.log").read_text()
    assert "lm training: stopped by SIGTERM; stopped at step" in log, log[-2000:]
    assert json.loads((first / "status.json").read_text())["returncode"] == 143
    assert not (first / "SWEEP_DONE").exists()
    assert not (workdir / "sweeps" / "t" / "mlp_dim=32").exists()  # the next run never started
    (saved,) = [int(d) for d in os.listdir(first / "checkpoints") if d.isdigit()]
    assert 10 <= saved < 300

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                           check=False)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert f"resumed from checkpoint {saved}" in (first / "run.log").read_text()
    assert (first / "SWEEP_DONE").exists()
    assert (workdir / "sweeps" / "t" / "mlp_dim=32" / "SWEEP_DONE").exists()


@pytest.mark.slow
def test_demo_stops_in_the_codec_stage_and_resumes_it(compile_cache, tmp_path):
    """The README's command, SIGTERM while its codec stage trains: status 143, a message
    naming the stage and saying to rerun, no marker for the stage; the rerun skips the
    corpus and resumes the codec from the checkpoint saved at the signal.
    (--to_stage=codec keeps it short; test_nested_jobs_and_ctrl_c: no next stage.)"""
    from gpa_jax.codec import train as codec_train
    from launch.demo import marker_path

    workdir = str(tmp_path / "demo")
    cmd = [PYTHON, "-m", "launch.demo", "--quick", f"--workdir={workdir}", "--to_stage=codec"]
    env = {**subprocess_env(compile_cache), "XLA_FLAGS": ""}  # one device, as users run it
    # The codec's progress bar past step 2 of 40: the CTC teacher is done, steps are running.
    rc, out = run_until(cmd, env, r"^codec:.*\|\s*([3-9]|[12]\d)/40\b", signal.SIGTERM,
                        timeout=900)  # fmt: skip
    assert rc == 143, out[-3000:]
    assert "== [2/2] codec stopped by SIGTERM; rerun the same command to resume at this stage" in (
        out
    ), out[-3000:]
    said = r"codec training: stopped by SIGTERM; checkpoint (\d+) saved in ([^;\s]+);"
    saved = re.search(said, out)
    assert saved and saved[2] == codec_train.checkpoint_dir(workdir), out[-3000:]
    step = int(saved[1])
    assert 3 <= step < 40
    assert os.path.exists(marker_path(workdir, "corpus"))
    assert not os.path.exists(marker_path(workdir, "codec"))
    assert "demo finished" not in out

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                           check=False)  # fmt: skip
    again = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, again[-3000:]
    assert f"== [1/2] corpus: done earlier, skipped ({marker_path(workdir, 'corpus')})" in again
    assert f"codec: resumed from step {step} in {codec_train.checkpoint_dir(workdir)}" in again, (
        again[-3000:]
    )
    assert "teacher: training" not in again  # the finished teacher is reused, not retrained
    assert "== [2/2] codec done in" in again and os.path.exists(marker_path(workdir, "codec"))


@pytest.mark.slow
@pytest.mark.parametrize("stage, job, flag", [
    ("lm", "lm training", "--lm_overrides"),
    ("acoustic", "acoustic training", "--acoustic_overrides"),
])  # fmt: skip
def test_demo_stops_in_a_training_stage_and_resumes_it(quick_demo, compile_cache, tmp_path, stage, job, flag):
    """SIGTERM while the demo's LM (or first acoustic) stage trains: the trainer saves, the
    demo exits 143 naming the stage, writes no marker and does not go on as if the stage
    had finished; the same command resumes the stage from the saved checkpoint."""
    import shutil

    from launch.demo import marker_path, partial_path

    finished, _ = quick_demo
    workdir = str(tmp_path / "demo")
    shutil.copytree(finished, workdir)
    steps = 60  # enough steps after compilation for the signal to land mid-training
    overrides = f"{flag}=train.num_steps={steps},optimizer.total_steps={steps},train.log_every=2"
    cmd = [PYTHON, "-m", "launch.demo", "--quick", f"--workdir={workdir}", f"--from_stage={stage}",
           f"--to_stage={stage}", overrides]  # fmt: skip
    env = {**subprocess_env(compile_cache), "XLA_FLAGS": ""}
    rc, out = run_until(cmd, env, rf"step ([2-9]|[1-4]\d)/{steps}: loss", signal.SIGTERM, timeout=900)
    assert rc == 143, out[-3000:]
    assert f"== [1/1] {stage} stopped by SIGTERM; rerun the same command to resume at this stage" in (
        out
    ), out[-3000:]
    said = re.search(rf"{job}: stopped by SIGTERM; stopped at step (\d+), checkpoint \d+ saved in ", out)
    assert said, out[-3000:]
    step = int(said[1])
    assert 2 <= step < steps
    assert not os.path.exists(marker_path(workdir, stage))
    assert "demo finished" not in out and "Traceback" not in out
    stopped_seconds = json.loads(Path(partial_path(workdir, stage)).read_text())["seconds"]
    assert stopped_seconds > 0

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                           check=False)  # fmt: skip
    again = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, again[-3000:]
    assert f"resumed from checkpoint {step}" in again, again[-3000:]
    assert f"== [1/1] {stage} done in" in again and os.path.exists(marker_path(workdir, stage))
    # The stage's time counts both invocations: timings.json shows its whole cost.
    assert f"({stopped_seconds:.1f} s of it in earlier, stopped runs)" in again, again[-3000:]
    assert json.loads(Path(marker_path(workdir, stage)).read_text())["seconds"] > stopped_seconds
    assert not os.path.exists(partial_path(workdir, stage))


def test_corpus_build_stops_and_the_rerun_builds_it(compile_cache, tmp_path):
    """SIGTERM while the tiny corpus is being synthesised: status 143, one message, no
    dataset that looks finished; the same command then builds it."""
    import glob

    workdir = tmp_path / "w"
    cmd = [PYTHON, "-m", "launch.build_corpus", f"--config={REPO}/configs/corpus.py:tiny",
           f"--workdir={workdir}"]  # fmt: skip
    env = subprocess_env(compile_cache)
    rc, out = run_until(cmd, env, r"Synthesizing utterances:\s+\d+%.*\b[1-9]\d*/60", signal.SIGTERM)
    assert rc == 143, out[-3000:]
    assert ("corpus build: stopped by SIGTERM; TFDS keeps only finished builds; rerun the same "
            "command to build it") in out, out[-3000:]
    assert "Traceback" not in out
    finished = glob.glob(str(workdir / "tfds" / "synthetic_speech" / "tiny" / "*" / "dataset_info.json"))
    assert not finished, finished

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                           check=False)  # fmt: skip
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert glob.glob(str(workdir / "tfds" / "synthetic_speech" / "tiny" / "*" / "dataset_info.json"))


# Real codec training (and its CTC teacher) in a subprocess, on in-memory clips so that no
# corpus has to be built; the test signals it once it reports its second step.
CODEC_DRIVER = """
import sys
import numpy as np
from gpa_jax.codec import train as codec_train
from tests.codec.test_train import _clips, tiny_config

workdir, teacher = sys.argv[1], sys.argv[2] == "ctc"
overrides = {"train.num_steps": 2000, "train.checkpoint_every": 1000}
teacher_set = None
if teacher:
    overrides.update({"teacher.kind": "ctc", "teacher.dim": 32, "teacher.ctc_layers": 1,
                      "teacher.ctc_steps": 2000, "teacher.ctc_checkpoint_every": 1000,
                      "teacher.ctc_batch_size": 2})
    teacher_set = (_clips(), ["a cat", "the dog", "one two", "hello"])
on_batch = lambda step, batch: print(f"codec step {step}", flush=True)
codec_train.train(tiny_config(**overrides), workdir, clips=_clips(), on_batch=on_batch,
                  progress=teacher, teacher_set=teacher_set)
"""


def test_codec_training_saves_where_it_stops(compile_cache, tmp_path, sig=signal.SIGTERM):
    from gpa_jax.codec import train as codec_train

    workdir = tmp_path / "w"
    cmd = [PYTHON, "-c", CODEC_DRIVER, str(workdir), "none"]
    rc, out = run_until(cmd, subprocess_env(compile_cache), r"codec step [2-9]", sig)
    assert rc == 128 + sig, out[-3000:]
    name = signal.Signals(sig).name
    assert f"codec training: stopped by {name}; checkpoint " in out, out[-3000:]
    saved = codec_train.checkpoint_dir(str(workdir))
    (step,) = [int(d) for d in os.listdir(saved) if d.isdigit()]
    assert f"checkpoint {step} saved in {saved}" in out
    assert 2 <= step < 1000  # saved where it stopped, not at a checkpoint_every multiple
    from tests.codec.test_train import tiny_config

    _, restored = codec_train.restore_codec(tiny_config(), saved)
    assert restored == step


def test_ctc_teacher_saves_where_it_stops(compile_cache, tmp_path):
    workdir = tmp_path / "w"
    cmd = [PYTHON, "-c", CODEC_DRIVER, str(workdir), "ctc"]
    rc, out = run_until(cmd, subprocess_env(compile_cache), r"teacher:.*\|\s*[2-9]\d*/2000", signal.SIGTERM)
    assert rc == 143, out[-3000:]
    state_dir = workdir / "codec" / "teacher" / "train_state"
    (step,) = [int(d) for d in os.listdir(state_dir) if d.isdigit()]
    assert f"teacher: stopped by SIGTERM; checkpoint {step} saved in {state_dir}" in out, out[-3000:]
    assert 2 <= step < 1000
    assert not (workdir / "codec" / "teacher" / "meta.json").exists()  # not marked trained
    assert "codec step" not in out  # the codec never started


def test_nested_jobs_and_ctrl_c(tmp_path):
    """In-process, real signals: a deferred job inside an immediate one (the demo's
    layout) saves first; after it the enclosing job stops instead of going on; Ctrl-C
    gives 130; a second Ctrl-C aborts a deferred job at once."""
    from gpa_jax import preemption

    # A background shell (nohup, CI runners) may start us with SIGINT ignored; the
    # watch must put back whatever was there, and deliver Ctrl-C while it watches.
    before = signal.getsignal(signal.SIGINT)
    events = []
    with pytest.raises(preemption.Preempted) as stopped:
        with preemption.watch("demo", immediate=True):
            with preemption.watch("trainer"):
                for step in range(1, 100):
                    if step == 3:
                        os.kill(os.getpid(), signal.SIGINT)
                    if preemption.requested():
                        events.append(f"saved {step}")
                        break
            events.append("next stage")  # must not run
    assert events == ["saved 3"] and stopped.value.code == 130

    with pytest.raises(preemption.Preempted) as aborted:
        with preemption.watch("trainer"):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            events.append("not reached")
    assert "aborted without saving" in str(aborted.value) and aborted.value.code == 130
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_a_stop_wrapped_by_a_library_still_ends_the_job_as_stopped():
    """A signal landing inside library code whose own error wraps the handler's Preempted
    (seen: JAX's pytree metadata check during jit dispatch, in tokenization) still gives
    the job's stop status and message, not the library's error."""
    from gpa_jax import preemption

    def library_call():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException as exc:  # what JAX's C++ layer does with anything raised inside it
            raise ValueError("Exception raised while checking equality of metadata") from exc

    with pytest.raises(preemption.Preempted) as stopped:
        with preemption.watch("tokenization", immediate=True, note="finished splits are kept"):
            library_call()
    assert stopped.value.code == 143
    assert str(stopped.value) == "tokenization: stopped by SIGTERM; finished splits are kept"

    # An error of its own, with no signal behind it, stays what it is.
    with pytest.raises(ValueError, match="plain"):
        with preemption.watch("tokenization", immediate=True):
            raise ValueError("plain")


# --- the tokenization and evaluation jobs, on the tiny corpus and its 1-step codec --------

CORPUS = "synthetic_speech/tiny"


def _codec_paths(tiny_workdir):
    from gpa_jax import paths
    from gpa_jax.codec import train as codec_train

    _, trained = tiny_workdir
    return codec_train.checkpoint_dir(trained), paths.tfds_dir(trained)


def test_tokenization_keeps_finished_splits_and_resumes_at_the_stopped_one(
    tiny_workdir, compile_cache, tmp_path
):
    from gpa_jax.codec import tokenization
    from gpa_jax.tasks import token_shards

    checkpoints, tfds = _codec_paths(tiny_workdir)
    config = tmp_path / "codec.py"  # the codec tests' tiny codec, as a --config file
    config.write_text(textwrap.dedent(f"""
        from tests.codec.test_train import tiny_config
        def get_config(arg=None):
            return tiny_config(**{{"data.corpus": {CORPUS!r}}})
    """))
    workdir = tmp_path / "w"
    workdir.mkdir()
    out = tokenization.tokens_dir(str(workdir), CORPUS)
    # validation (8 clips) first, then train (36): the signal comes once validation is
    # listed complete in the manifest, while train is being encoded.
    cmd = [PYTHON, "-m", "launch.tokenize", f"--config={config}", f"--workdir={workdir}",
           f"--checkpoint_dir={checkpoints}", f"--data_dir={tfds}", "--splits=validation,train",
           "--batch_size=4", "--bucket_frames=300"]  # fmt: skip
    env = subprocess_env(compile_cache)
    rc, output = run_until(cmd, env, r'"bad_audio"', signal.SIGTERM,
                           watch_file=os.path.join(out, "manifest.json"))  # fmt: skip
    assert rc == 143, output[-3000:]
    assert (
        f"tokenization: stopped by SIGTERM; finished splits are kept in {out} (validation); "
        "split train was not finished and none of it was kept; rerun the same command to "
        "resume at it"
    ) in output, output[-3000:]
    assert "Traceback" not in output
    assert tokenization.split_is_complete(out, "validation")
    assert set(token_shards.read_manifest(out)["splits"]) == {"validation"}
    assert [f for f in os.listdir(out) if "train" in f] == []  # its partial shards are gone
    validation = os.path.getmtime(os.path.join(out, "validation-00000-of-00001.array_record"))

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                           check=False)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert re.search(r"validation\s+skipped", rerun.stdout), rerun.stdout
    assert re.search(r"train\s+written\s+\d+ utts", rerun.stdout), rerun.stdout
    token_shards.read_manifest(out, verify=True)
    shard = os.path.join(out, "validation-00000-of-00001.array_record")
    assert os.path.getmtime(shard) == validation  # kept, not rewritten


# The evaluation harness on the smallest real chain: the 1-step codec, a random 1-layer LM
# behind the real Sampler, a random 1-layer NAR acoustic stage and the PocketSphinx judge.
EVAL_DRIVER = """
import sys
import seqio
from flax import nnx
from gpa_jax.acoustic.api import AcousticStage
from gpa_jax.acoustic.config import AcousticConfig
from gpa_jax.acoustic.model import AcousticModel
from gpa_jax.codec import train as codec_train
from gpa_jax.evaluation import harness
from gpa_jax.evaluation.judge import PocketSphinxJudge
from gpa_jax.models import LMConfig, lm_model_config, mesh_config
from gpa_jax.sampling import Sampler, sampling_config
from gpa_jax.tasks.planning import PlanSettings
from gpa_jax.tasks.vocab import SpeechVocabulary
from gpa_jax.training.config import lm_config
from tests.codec.test_train import tiny_config
from tests.models.helpers import numpy_model

workdir, token_dir, checkpoints, tfds = sys.argv[1:5]
codec, _ = codec_train.restore_codec(tiny_config(), checkpoints)
vocab = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=codec.n_q,
                         codebook_size=codec.codebook_size)
model = lm_model_config(vocab_size=vocab.vocab_size, num_layers=1, embed_dim=32, num_heads=2,
                        num_kv_heads=1, head_dim=16, mlp_dim=64, max_len=512, scan_layers=False)
config = lm_config(model=model, mesh=mesh_config(shape=(-1, 1, 1)))
sampler = Sampler(config, numpy_model(LMConfig.from_config(config.model)), vocab,
                  sampling=sampling_config(max_total_len=512))
stage = AcousticStage(AcousticModel(AcousticConfig(
    n_q=codec.n_q, codebook_size=codec.codebook_size, latent_dim=64, num_layers=1,
    embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64, max_len=128,
    scan_layers=False), rngs=nnx.Rngs(0)))
models = harness.EvalModels(codec=codec, sampler=sampler, acoustic=stage,
                            judge=PocketSphinxJudge())
settings = PlanSettings(sequence_length=512, ref_max_frames=50, ref_min_frames=10,
                        ref_layers=1, trim_ref_to_fit=True)
out = harness.evaluate_tasks(models, token_dir=token_dir, corpus="synthetic_speech/tiny",
                             data_dir=tfds, split="train", workdir=workdir, settings=settings,
                             max_per_task=4, tasks=("asr", "tts"), progress=False)
print("evaluated:", sorted(out), "tts examples:", out["tts"].get("examples"), flush=True)
"""


def test_evaluation_keeps_finished_tasks_samples_and_reruns(tiny_workdir, compile_cache, tmp_path):
    from gpa_jax.codec import tokenization
    from gpa_jax.codec import train as codec_train
    from gpa_jax.evaluation.results import read_manifest

    checkpoints, tfds = _codec_paths(tiny_workdir)
    config, _ = tiny_workdir
    workdir = tmp_path / "w"
    tokens = tokenization.tokens_dir(str(workdir), CORPUS)
    codec, _ = codec_train.restore_codec(config, checkpoints)
    tokenization.tokenize_corpus(codec, CORPUS, tokens, data_dir=tfds, splits=["train"],
                               batch_size=4, bucket_frames=300, progress=False)  # fmt: skip
    # Results of an earlier evaluation: they would describe samples this run replaces.
    (workdir / "eval").mkdir()
    (workdir / "eval" / "results.json").write_text('{"asr": {"wer": 0.5}}')
    samples = workdir / "samples"
    cmd = [PYTHON, "-c", EVAL_DRIVER, str(workdir), tokens, checkpoints, tfds]
    env = subprocess_env(compile_cache)
    # The signal comes once ASR's 4 samples are all listed, while TTS runs.
    rc, output = run_until(cmd, env, r"(.*\n){4}", signal.SIGTERM,
                           watch_file=str(samples / "asr" / "manifest.jsonl"))  # fmt: skip
    assert rc == 143, output[-3000:]
    assert (
        f"evaluation: stopped by SIGTERM; the finished tasks' samples are kept in {samples} "
        "(asr (4 samples)); no results were written"
    ) in output, output[-3000:]
    assert "Traceback" not in output and "evaluated:" not in output
    asr = read_manifest(str(samples / "asr" / "manifest.jsonl"))
    assert len(asr) == 4 and all(os.path.isfile(row["wav"]) for row in asr)
    assert not (workdir / "eval" / "results.json").exists()  # nothing looks finished

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                           check=False)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "evaluated: ['asr', 'conditioning', 'judge', 'split', 'tts'] tts examples: 4" in rerun.stdout
    assert len(read_manifest(str(samples / "asr" / "manifest.jsonl"))) == 4
    tts = read_manifest(str(samples / "tts" / "manifest.jsonl"))
    assert {row["role"] for row in tts} >= {"reference"} and len(tts) >= 4
