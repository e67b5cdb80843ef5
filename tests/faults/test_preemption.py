"""SIGTERM / SIGINT to real processes: each job saves, says where, exits 143 / 130, and
the rerun resumes; the sweep stops at the preempted run instead of starting the next."""

import json
import os
import signal
import subprocess
import textwrap

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
