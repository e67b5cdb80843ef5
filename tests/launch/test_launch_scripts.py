"""launch/tpu_pod.sh and launch/gpu_single.sh in DRY_RUN=1: the commands they would run.

Nothing reaches Google Cloud or a GPU: each script prints its commands (shell-quoted), the
test parses them. The pod's `train` and `wait` remote commands are also executed here, in
a fake worker home whose `.venv/bin/python` records its arguments and environment, so the
quoting, the background start and the exit-status hand-off are checked for real.
"""

import os
import shlex
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POD = os.path.join(REPO, "launch", "tpu_pod.sh")
GPU = os.path.join(REPO, "launch", "gpu_single.sh")
BASE_ENV = {"TPU_NAME": "gpa-pod", "ZONE": "us-east5-a", "PROJECT": "proj", "DRY_RUN": "1",
            "WORKDIR": "gs://bucket/runs/gpa"}  # fmt: skip


def _run(script, *args, env=None, check=True):
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    out = subprocess.run(["bash", script, *args], env=full, capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    if check:
        assert out.returncode == 0, out.stderr
    return out


def _commands(out):
    return [shlex.split(line) for line in out.stdout.splitlines() if line and line[0] != "#"]


def _flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def test_pod_create_and_delete():
    [create] = _commands(_run(POD, "create", env={**BASE_ENV, "ACCELERATOR_TYPE": "v5p-64",
                                                  "SPOT": "1"}))  # fmt: skip
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "gpa-pod"]
    assert _flag(create, "zone") == "us-east5-a" and _flag(create, "project") == "proj"
    assert _flag(create, "accelerator-type") == "v5p-64" and "--spot" in create
    assert _flag(create, "version") == "tpu-ubuntu2204-base"
    out = _run(POD, "create", env=BASE_ENV, check=False)
    assert out.returncode != 0 and "ACCELERATOR_TYPE" in out.stderr
    [delete] = _commands(_run(POD, "delete", env=BASE_ENV))
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "gpa-pod"]
    assert "--quiet" in delete


def test_pod_install_copies_the_checkout_and_mounts_the_bucket_with_gcsfuse():
    scp, setup, mount = _commands(_run(POD, "install", env={**BASE_ENV, "GCSFUSE": "1"}))
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[6] == "gpa-pod:/tmp/gpa_jax.tar.gz"
    assert _flag(scp, "zone") == "us-east5-a" and _flag(scp, "worker") == "all"
    assert "--worker=all" in setup and "--worker=all" in mount
    remote = _flag(setup, "command")
    assert "bash launch/setup_env.sh" in remote and "-e '.[tpu,gcs]'" in remote
    remote = _flag(mount, "command")
    assert "gcsfuse --implicit-dirs" in remote and "bucket /tmp/gcsfuse/bucket" in remote
    subprocess.run(["bash", "-n", "-c", remote], check=True)  # valid shell


def test_pod_stage_copies_tokens_and_spm(tmp_path):
    local = tmp_path / "w"
    out = _run(POD, "stage", env={**BASE_ENV, "LOCAL_WORKDIR": str(local)}, check=False)
    assert out.returncode == 2 and f"{local}/tokens does not exist" in out.stderr
    (local / "tokens" / "synthetic_speech" / "default").mkdir(parents=True)
    out = _run(POD, "stage", env={**BASE_ENV, "LOCAL_WORKDIR": str(local)})
    assert _commands(out) == [["gcloud", "storage", "rsync", "--recursive",
                               f"{local}/tokens", "gs://bucket/runs/gpa/tokens"]]  # fmt: skip
    assert "nothing to stage" in out.stderr  # no spm/: byte text
    (local / "spm").mkdir()
    tokens, spm = _commands(_run(POD, "stage", env={**BASE_ENV, "LOCAL_WORKDIR": str(local)}))
    assert spm[-2:] == [f"{local}/spm", "gs://bucket/runs/gpa/spm"]
    out = _run(POD, "stage", env={**BASE_ENV, "WORKDIR": str(local), "LOCAL_WORKDIR": str(local)},
               check=False)  # fmt: skip
    assert out.returncode == 2 and "is not a gs:// path" in out.stderr


FAKE_PYTHON = """#!/usr/bin/env bash
{ printf '%s\\n' "$@"; echo "--env LIBTPU_INIT_ARGS=$LIBTPU_INIT_ARGS";
  echo "--env GPA_JAX_GCSFUSE_ROOT=${GPA_JAX_GCSFUSE_ROOT:-}";
  echo "--env TF_CPP_MIN_LOG_LEVEL=$TF_CPP_MIN_LOG_LEVEL"; } > "$HOME/argv.txt"
exit 3
"""


def test_pod_train_command_runs_on_a_fake_worker(tmp_path):
    env = {**BASE_ENV, "CONFIG": "configs/gpa_tiny.py", "GCSFUSE": "1",
           "LIBTPU_INIT_ARGS": "--xla_tpu_enable_latency_hiding_scheduler=true"}  # fmt: skip
    override = "--config.mesh.shape=(1, -1, 1)"
    [train] = _commands(_run(POD, "train", override, "--config.train.num_steps=5", env=env))
    assert train[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gpa-pod"]
    assert "--worker=all" in train
    remote = _flag(train, "command")

    # The worker: ~/gpa_jax with a .venv whose python records what it was given.
    home = tmp_path / "home"
    worker_env = _fake_worker(home, FAKE_PYTHON)
    subprocess.run(["bash", "-c", remote], cwd=home, env=worker_env, check=True, timeout=30)
    rc_file = home / "gpa_jax" / "train.rc"
    assert _wait_for(rc_file)
    assert rc_file.read_text().strip() == "3"  # the trainer's exit status, for `wait`
    assert (home / "gpa_jax" / "train.pid").read_text().strip().isdigit()
    argv = (home / "argv.txt").read_text().splitlines()
    assert argv[:2] == ["-m", "launch.train"]
    assert "--config=configs/gpa_tiny.py" in argv and "--workdir=gs://bucket/runs/gpa" in argv
    assert "--multihost=true" in argv and override in argv  # quoting survived
    assert "--config.train.num_steps=5" in argv
    assert "--env LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true" in argv
    assert "--env GPA_JAX_GCSFUSE_ROOT=/tmp/gcsfuse" in argv
    assert "--env TF_CPP_MIN_LOG_LEVEL=2" in argv

    [wait] = _commands(_run(POD, "wait", env={**env, "POLL_SECONDS": "1"}))
    assert "--worker=0" in wait
    done = subprocess.run(["bash", "-c", _flag(wait, "command")], cwd=home, env=worker_env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 3


SLEEPING_PYTHON = """#!/usr/bin/env bash
trap 'echo stopped > "$HOME/term"; exit 143' TERM
for _ in $(seq 300); do sleep 0.1; done
"""


def _fake_worker(home, python):
    venv = home / "gpa_jax" / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(python)
    (venv / "python").chmod(0o755)
    return {"PATH": os.environ["PATH"], "HOME": str(home)}


def _wait_for(path, seconds=20):
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.1)
    return path.exists()


def test_pod_stop_reaches_the_trainer_on_a_fake_worker(tmp_path):
    home = tmp_path / "home"
    worker_env = _fake_worker(home, SLEEPING_PYTHON)
    [train] = _commands(_run(POD, "train", env=BASE_ENV))
    subprocess.run(["bash", "-c", _flag(train, "command")], cwd=home, env=worker_env,
                   check=True, timeout=30)  # fmt: skip
    time.sleep(1)  # the trainer has started and set its trap
    assert not (home / "gpa_jax" / "train.rc").exists()
    [stop] = _commands(_run(POD, "stop", env=BASE_ENV))
    subprocess.run(["bash", "-c", _flag(stop, "command")], cwd=home, env=worker_env,
                   check=True, timeout=30)  # fmt: skip
    assert _wait_for(home / "gpa_jax" / "train.rc")
    assert (home / "term").read_text().strip() == "stopped"  # SIGTERM reached the trainer
    assert (home / "gpa_jax" / "train.rc").read_text().strip() == "143"


def test_pod_train_needs_a_gs_workdir_and_a_known_subcommand():
    out = _run(POD, "train", env={**BASE_ENV, "WORKDIR": "runs/local"}, check=False)
    assert out.returncode == 2 and "WORKDIR=runs/local is not a gs:// path" in out.stderr
    out = _run(POD, "launch", env=BASE_ENV, check=False)
    assert out.returncode == 2 and "usage:" in out.stderr
    [stop] = _commands(_run(POD, "stop", env=BASE_ENV))
    assert "kill" in _flag(stop, "command") and "--worker=all" in stop


def _gpu_dry_run(*args, **env):
    out = _run(GPU, *args, env={"DRY_RUN": "1", **env})
    exports = dict(shlex.split(line)[1].split("=", 1) for line in out.stdout.splitlines()
                   if line.startswith("export "))  # fmt: skip
    [cmd] = [c for c in _commands(out) if c[0] != "export"]
    return exports, cmd


def test_gpu_node_uses_every_requested_gpu():
    exports, cmd = _gpu_dry_run("--config.train.batch_size=64", NUM_GPUS="4",
                                WORKDIR="gs://bucket/runs/gpu")  # fmt: skip
    assert exports["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert exports["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in exports["XLA_FLAGS"]
    assert cmd[:3] == [".venv/bin/python", "-m", "launch.train"]
    assert _flag(cmd, "workdir") == "gs://bucket/runs/gpu"
    assert _flag(cmd, "config.mesh.shape") == "(-1, 1, 1)" and "--multihost=false" in cmd
    assert _flag(cmd, "config.model.attention_impl") == "cudnn"
    assert cmd[-1] == "--config.train.batch_size=64"  # later arguments win


def test_gpu_node_keeps_the_callers_choices():
    exports, cmd = _gpu_dry_run(NUM_GPUS="2", CUDA_VISIBLE_DEVICES="5,7", MESH="(1, -1, 1)",
                                XLA_FLAGS="--mine", GPA_JAX_CACHE_DIR="/scratch/c")  # fmt: skip
    assert exports["CUDA_VISIBLE_DEVICES"] == "5,7"
    assert exports["XLA_FLAGS"].startswith("--mine ")
    assert exports["GPA_JAX_CACHE_DIR"] == "/scratch/c"
    assert _flag(cmd, "config.mesh.shape") == "(1, -1, 1)"


def test_gpu_node_without_gpus_says_so():
    if subprocess.run(["bash", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has nvidia-smi")
    out = _run(GPU, env={"DRY_RUN": "1"}, check=False)
    assert out.returncode == 2 and "no GPU found" in out.stderr
