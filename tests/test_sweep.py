"""The sweep runner end to end: two real (tiny) training runs, gathered into one table."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from gpa_jax import config_utils
from gpa_jax import sweep as sweep_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_LM = """
from gpa_jax.models.config import lm_model_config, mesh_config
from gpa_jax.training.config import lm_config
from gpa_jax.training.config import optimizer_config

def get_config(arg=None):
    model = lm_model_config(vocab_size=64, num_layers=1, embed_dim=32, num_heads=2,
                            num_kv_heads=1, head_dim=16, mlp_dim=64, max_len=32)
    config = lm_config(model=model, mesh=mesh_config(shape=(-1, 1, 1)))
    config.optimizer = optimizer_config(learning_rate=1e-3, warmup_steps=1, total_steps=10)
    config.train.batch_size = 8
    config.train.seq_len = 32
    config.train.eval_every = 2
    config.train.eval_steps = 1
    config.train.log_every = 1
    return config
"""


def _write(tmp_path, grid, fixed=None):
    (tmp_path / "lm.py").write_text(TINY_LM)
    (tmp_path / "sweep.py").write_text(textwrap.dedent(f"""
        def get_sweep():
            return dict(name="t", entry="launch.train", config={str(tmp_path / 'lm.py')!r},
                        fixed={fixed or {'train.num_steps': 2}!r}, grid={grid!r},
                        metrics=["eval/loss", "train/loss"], args=["--noprogress"])
    """))
    return str(tmp_path / "sweep.py")


def test_bad_grid_fails_before_running(tmp_path):
    sweep = sweep_lib.load_sweep(_write(tmp_path, {"model.no_such_field": [1, 2]}))
    with pytest.raises(config_utils.ConfigError, match="no_such_field"):
        sweep_lib.expand(sweep)
    sweep = sweep_lib.load_sweep(_write(tmp_path, {"model.num_layers": ["two"]}))
    with pytest.raises(config_utils.ConfigError):
        sweep_lib.expand(sweep)


def test_print_mode_emits_one_pod_command_per_run(tmp_path):
    fixed = {"train.num_steps": 2, "tasks.token_dir": "{workdir}/tokens"}
    sweep = sweep_lib.load_sweep(
        _write(tmp_path, {"model.num_layers": [1, 2], "model.embed_dim": [16, 32]}, fixed)
    )
    lines = sweep_lib.pod_commands(sweep, "gs://b/w")
    assert len(lines) == 4
    assert all("bash launch/tpu_pod.sh train" in line for line in lines)
    assert all("--config.tasks.token_dir=gs://b/w/tokens" in line for line in lines)
    assert "--config.model.num_layers=2 --config.model.embed_dim=32" in lines[-1]


@pytest.mark.slow
def test_sweep_runs_gathers_and_skips_finished_runs(tmp_path):
    path = _write(tmp_path, {"model.num_layers": [1, 2]})
    workdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "launch.sweep", f"--sweep={path}", f"--workdir={workdir}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.load(open(workdir / "sweeps" / "t" / "results.json"))
    assert [r["run"] for r in rows] == ["num_layers=1", "num_layers=2"]
    assert all(r["status"] == "done" and r["eval/loss"] > 0 for r in rows)
    assert "| num_layers=2 |" in (workdir / "sweeps" / "t" / "results.md").read_text()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 2


def test_print_mode_on_gs_pins_the_shared_data_and_runs_one_after_another(tmp_path):
    """gs:// work dir: the runs read the tokens and SentencePiece model staged under the
    sweep's work dir (tpu_pod.sh stage), and each line waits for its run to end."""
    fixed = {"train.num_steps": 2, "data.source": "tasks", "tasks.vocab.text": "spm"}
    sweep = sweep_lib.load_sweep(_write(tmp_path, {"model.num_layers": [1, 2]}, fixed))
    lines = sweep_lib.pod_commands(sweep, "gs://b/w")
    assert len(lines) == 2
    train, wait = lines[1].split(" && ")
    assert train.startswith("CONFIG=") and "WORKDIR=gs://b/w/sweeps/t/num_layers=2" in train
    assert "LOG=sweep_t_num_layers_2.log" in train
    assert "bash launch/tpu_pod.sh train" in train and wait.endswith("bash launch/tpu_pod.sh wait")
    assert "WORKDIR=gs://b/w/sweeps/t/num_layers=2" in wait
    corpus = "synthetic_speech/default"
    assert f"--config.tasks.token_dir=gs://b/w/tokens/{corpus}" in train
    assert "--config.tasks.vocab.spm_model=gs://b/w/spm/synthetic_speech_default_1024.model" in train
    assert "--config.model.num_layers=2" in train


def test_gather_and_table_on_gs(fake_gcs, tmp_path):
    """Backend: in-memory fake gs:// (tests/fake_gcs.py): run status, markers, TensorBoard
    scalars (event files read through the host cache) and the results table."""
    from clu import metric_writers

    from gpa_jax import paths

    sweep = sweep_lib.load_sweep(_write(tmp_path, {"model.num_layers": [1, 2]}))
    workdir = f"{fake_gcs}/w"
    root = sweep_lib.sweep_dir(workdir, sweep)
    paths.atomic_write_json(f"{root}/num_layers=1/status.json", {"returncode": 0})
    paths.atomic_write_text(f"{root}/num_layers=1/{sweep_lib.DONE_MARKER}", "")
    paths.atomic_write_json(f"{root}/num_layers=2/status.json", {"returncode": 1})
    local_tb = tmp_path / "tb"
    writer = metric_writers.SummaryWriter(str(local_tb))
    writer.write_scalars(2, {"eval/loss": 1.5})
    writer.close()
    for event_file in local_tb.iterdir():
        paths.upload(event_file, f"{root}/num_layers=1/tensorboard/train/{event_file.name}")
    rows = sweep_lib.gather(sweep, workdir)
    assert [r["status"] for r in rows] == ["done", "failed (exit 1)"]
    assert rows[0]["eval/loss"] == pytest.approx(1.5) and rows[1]["eval/loss"] is None
    table = sweep_lib.write_table(sweep, workdir, rows)
    assert "| num_layers=1 |" in table
    assert paths.read_json(f"{root}/results.json")[0]["run"] == "num_layers=1"
    assert paths.read_text(f"{root}/results.md").startswith("# Sweep t")


def test_run_mode_on_gs_keeps_logs_status_and_markers_in_the_bucket(fake_gcs, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """Backend: in-memory fake gs:// (tests/fake_gcs.py). The runs are a stand-in entry
    point (the fake bucket lives in this process only); what is checked is the sweep's own
    bookkeeping there: run.log (uploaded, appended to on a rerun), status.json, SWEEP_DONE."""
    from gpa_jax import paths

    (tmp_path / "fake_entry.py").write_text(textwrap.dedent("""
        import sys
        print("ran", *sys.argv[1:])
        sys.exit(1 if "--config.model.num_layers=2" in sys.argv else 0)
    """))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    sweep = sweep_lib.load_sweep(_write(tmp_path, {"model.num_layers": [1, 2]}))
    sweep["entry"] = "fake_entry"
    workdir = f"{fake_gcs}/w"
    rows = sweep_lib.run_sweep(sweep, workdir, log=lambda _: None)
    assert [r["status"] for r in rows] == ["done", "failed (exit 1)"]
    root = sweep_lib.sweep_dir(workdir, sweep)
    assert paths.isfile(f"{root}/num_layers=1/{sweep_lib.DONE_MARKER}")
    assert not paths.exists(f"{root}/num_layers=2/{sweep_lib.DONE_MARKER}")
    assert paths.read_json(f"{root}/num_layers=2/status.json")["returncode"] == 1
    log = paths.read_text(f"{root}/num_layers=1/run.log")
    assert log.startswith("ran --config=") and f"--workdir={root}/num_layers=1" in log
    sweep_lib.run_sweep(sweep, workdir, log=lambda _: None)  # reruns only the failed run
    assert paths.read_text(f"{root}/num_layers=2/run.log").count("ran ") == 2
    assert paths.read_text(f"{root}/num_layers=1/run.log").count("ran ") == 1


def test_print_mode_cli_with_a_gs_workdir():
    """`python -m launch.sweep --mode=print` on a shipped sweep: nothing is read from or
    written to the bucket, one train && wait line per grid point."""
    cmd = [sys.executable, "-m", "launch.sweep", "--sweep=configs/sweeps/lm_size.py",
           "--mode=print", "--workdir=gs://bucket/runs/demo"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 6
    for line in lines:
        assert line.count("bash launch/tpu_pod.sh") == 2 and line.endswith("tpu_pod.sh wait")
        assert "WORKDIR=gs://bucket/runs/demo/sweeps/lm_size/num_layers=" in line
        assert "--config.tasks.token_dir=gs://bucket/runs/demo/tokens/synthetic_speech/default" in line
