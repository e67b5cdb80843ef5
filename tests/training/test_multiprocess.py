"""Two real `launch.train` processes on localhost form one job (jax.distributed, gloo CPU
collectives, 4 simulated devices each) and train the tiny LM of test_trainer.

One pass covers the whole multi-host life cycle: the job's per-step losses equal those of
the single-process run on 8 devices; killing process 1 stops process 0 within 60 s with
one line naming process 1; the same two commands resume from the last checkpoint and
finish; the job's final params, restored by this single process onto its own 8-device
mesh, equal the single-process run's.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from gpa_jax import multihost
from gpa_jax.training import checkpoint as ckpt
from gpa_jax.training import trainer
from gpa_jax.training.metrics import MemoryWriter, read_scalars
from tests.training.test_trainer import CONFIG, OVERRIDES, REPO, _params, tiny_config

pytestmark = pytest.mark.slow

NUM_STEPS = 8  # checkpoints at 3, 6, 8 (OVERRIDES: checkpoint_every=3), evals at 3, 6, 8
KILL_AFTER = 4  # process 1 is killed once it has logged this step
RUN_TIMEOUT_S = 300  # a job that hangs fails the test instead of freezing it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Job:
    """The two processes of one launch.train job; logs go to files in `logs`."""

    def __init__(self, workdir, logs, cache_dir):
        self.workdir, self.logs = workdir, logs
        self.env = dict(
            os.environ,
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
            JAX_PLATFORMS="cpu",
            JAX_COMPILATION_CACHE_DIR=str(cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        )
        self.procs: list[subprocess.Popen] = []
        self.run = 0

    def start(self) -> None:
        self.run += 1
        port = _free_port()
        self.procs = []
        for pid in (0, 1):
            cmd = [
                sys.executable, "-m", "launch.train", f"--config={CONFIG}",
                *[f"--config.{o}" for o in OVERRIDES],
                f"--config.train.num_steps={NUM_STEPS}", f"--workdir={self.workdir}",
                "--progress=false", f"--coordinator_address=localhost:{port}",
                "--num_processes=2", f"--process_id={pid}",
            ]  # fmt: skip
            out = open(self.log(pid, "out"), "w")
            err = open(self.log(pid, "err"), "w")
            self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=out, stderr=err))
            out.close()
            err.close()

    def log(self, pid: int, stream: str):
        return self.logs / f"run{self.run}.process{pid}.{stream}"

    def text(self, pid: int, stream: str = "err") -> str:
        return self.log(pid, stream).read_text(errors="replace")

    def tails(self) -> str:
        return "\n".join(
            f"--- run {self.run} process {pid} stderr:\n{self.text(pid)[-3000:]}" for pid in (0, 1)
        )

    def wait_for(self, pid: int, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text(pid):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                pytest.fail(f"process {pid} never logged {text!r}\n{self.tails()}")
            time.sleep(0.1)

    def wait(self, pid: int, timeout: float) -> int:
        try:
            return self.procs[pid].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {pid} still runs after {timeout} s\n{self.tails()}")

    def kill_all(self) -> None:
        for p in self.procs:  # a killed launch.train takes its trainer child with it
            if p.poll() is None:
                p.kill()
                p.wait()


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_two_processes_train_like_one_survive_a_lost_peer_and_resume(tmp_path):
    # The reference: this process, 8 devices, the same config.
    config = tiny_config(f"train.num_steps={NUM_STEPS}")
    reference = MemoryWriter()
    trainer.train(config, tmp_path / "single", writer=reference, progress=False)
    ref_losses = reference.series("train/loss")
    ref_evals = reference.series("eval/loss")

    workdir = tmp_path / "job"
    logs = tmp_path / "logs"
    logs.mkdir()
    job = Job(workdir, logs, tmp_path / "xla_cache")
    try:
        # Run 1: both processes train; process 1 is killed mid-run.
        job.start()
        job.wait_for(1, f"step {KILL_AFTER}/{NUM_STEPS}: loss", RUN_TIMEOUT_S)
        trainer_child = _children(job.procs[1].pid)
        os.kill(job.procs[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        status = job.wait(0, 90)
        stopped_after = time.monotonic() - killed_at
        job.wait(1, 10)
        survivor = job.text(0)
        assert status == multihost.LOST_PEER_STATUS, job.tails()
        assert stopped_after < 60, f"process 0 took {stopped_after:.0f} s to stop"
        last = survivor.strip().splitlines()[-1]
        assert last.startswith("training: lost process 1 of the 2-process job"), last
        checkpoints = ckpt.saved_steps(ckpt.checkpoint_dir(workdir))
        assert checkpoints and checkpoints[-1] < NUM_STEPS, checkpoints
        k = checkpoints[-1]
        assert f"resume from checkpoint {k} in " in last, last
        # One line, not the runtime's abort: that went to the report file.
        for noise in ("Traceback", "Check failure", "Fatal Python error"):
            assert noise not in survivor, survivor[-3000:]
        report = workdir / "lost_peer.process_0.log"
        assert str(report) in last and "Terminating process" in report.read_text()
        # The killed launch.train took its trainer with it (PR_SET_PDEATHSIG).
        assert trainer_child and not any(_alive(c) for c in trainer_child), trainer_child

        # Run 2: the same two commands resume from checkpoint k and finish.
        job.start()
        statuses = [job.wait(pid, RUN_TIMEOUT_S) for pid in (0, 1)]
        assert statuses == [0, 0], job.tails()
        assert f"resumed from checkpoint {k} " in job.text(0), job.tails()
        assert f"finished at step {NUM_STEPS}/{NUM_STEPS}" in job.text(0, "out")
    finally:
        job.kill_all()

    # Per-step losses of the job (run 1 up to the kill, run 2 after checkpoint k; steps
    # both ran hold the same value) equal the single-process run's. The only difference
    # is the order gloo sums the cross-process reductions in (measured: 1 float32 ulp).
    scalars = read_scalars(workdir / "tensorboard")  # process 0 writes them
    losses, evals = dict(scalars["train/loss"]), dict(scalars["eval/loss"])
    assert sorted(losses) == list(range(1, NUM_STEPS + 1)), sorted(losses)
    assert sorted(evals) == sorted(ref_evals) == [3, 6, 8]
    worst = max(abs(losses[s] - ref_losses[s]) / abs(ref_losses[s]) for s in ref_losses)
    print(f"max relative train-loss difference, 2 processes vs 1: {worst:.2e}")
    for step in ref_losses:
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-5), (step, worst)
    for step in ref_evals:
        assert evals[step] == pytest.approx(ref_evals[step], rel=1e-5), step
    # Each process kept its own data position, at the checkpoint's step.
    data_dir = workdir / "checkpoints" / str(NUM_STEPS) / "data_iter"
    for pid in (0, 1):
        assert f'"step": {NUM_STEPS}' in (data_dir / f"process_{pid}-of-2.json").read_text()

    # The job's params, restored by this one process onto its 8-device mesh, equal the
    # single-process run's up to that summation order (Adam amplifies it on weights whose
    # gradient is near zero: the tolerance of test_grad_accumulation_matches_the_full_batch).
    job_params, ref_params = _params(workdir, config), _params(tmp_path / "single", config)
    assert job_params.keys() == ref_params.keys()
    atol = 0.05 * config.optimizer.learning_rate
    diffs = {k: float(np.max(np.abs(job_params[k] - ref_params[k]))) for k in ref_params}
    print(f"max abs param difference: {max(diffs.values()):.2e}; process 0 stopped "
          f"{stopped_after:.1f} s after process 1 was killed")  # fmt: skip
    for name, value in ref_params.items():
        np.testing.assert_allclose(job_params[name], value, rtol=1e-4, atol=atol, err_msg=name)
