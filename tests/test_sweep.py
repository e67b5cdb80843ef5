"""The sweep runner end to end: two real (tiny) training runs, gathered into one table."""

import json
import math
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


# --- configs/sweeps/audio_input.py: the three audio inputs on one set of token shards ----

# The shipped sweep at quick sizes on the random token shards of tests.tasks.conftest
# (byte text, FEATURE_DIM-wide feature rows standing in for log-mel).
AUDIO_QUICK = {
    "tasks.corpus": "test_speech/tiny",
    "tasks.token_dir": "{workdir}/tokens/test_speech/tiny",
    "tasks.ref_max_frames": 40, "tasks.ref_min_frames": 10,
    "model.vocab_size": 512, "model.num_layers": 1, "model.embed_dim": 32,
    "model.num_heads": 2, "model.num_kv_heads": 1, "model.head_dim": 16, "model.mlp_dim": 64,
    "model.max_len": 128, "model.audio_encoder_layers": 1,
    "train.seq_len": 128, "train.batch_size": 4, "train.num_steps": 4, "train.log_every": 1,
    "train.eval_every": 4, "train.eval_steps": 2, "train.checkpoint_every": 4,
    "optimizer.warmup_steps": 1, "optimizer.total_steps": 4,
}  # fmt: skip


def _audio_sweep(features_dim):
    """The shipped sweep at quick sizes. Its second evaluate step (launch.evaluate with
    the work dir's codec and acoustic stage) needs a trained chain, which the random test
    shards lack: it is dropped here, and tests/launch/test_demo.py runs the same step
    against the quick demo's chain."""
    sweep = sweep_lib.load_sweep(os.path.join(REPO, "configs", "sweeps", "audio_input.py"))
    sweep["config"] = os.path.join(REPO, sweep["config"])
    sweep["fixed"] = {**AUDIO_QUICK, "model.audio_feature_dim": features_dim}
    report, judged = sweep["evaluate"]
    assert judged[:2] == ["launch.evaluate", "--stages_workdir={workdir}"]
    # The test shards have no test split; 3 ASR rows keep the greedy decoding short.
    swap = {"--asr_rows=40": "--asr_rows=3", "--conditioning_split=test": "--conditioning_split=validation"}
    assert set(swap) <= set(report)
    sweep["evaluate"] = [[swap.get(a, a) for a in report]]
    return sweep


def test_audio_input_sweep_refuses_shards_without_feature_rows_or_noisy_inputs_up_front(tmp_path):
    from tests.tasks.conftest import FEATURE_DIM, write_corpus

    write_corpus(str(tmp_path / "tokens" / "test_speech" / "tiny"), noisy=True)  # no feature rows
    sweep = _audio_sweep(FEATURE_DIM)
    assert [r.name for r in sweep_lib.expand(sweep, str(tmp_path))] == [
        "audio_input=tokens", "audio_input=continuous", "audio_input=hybrid"]  # fmt: skip
    with pytest.raises(ValueError, match=r"run audio_input=continuous: split 'train' .* has no "
                       r"feature rows.*data.token_features=log_mel"):  # fmt: skip
        sweep_lib.run_sweep(sweep, str(tmp_path), log=lambda _: None)
    assert not (tmp_path / "sweeps").exists()  # nothing ran
    # Feature rows but no noisy inputs: the SE every run trains is refused up front too.
    write_corpus(str(tmp_path / "tokens" / "test_speech" / "tiny"), features=True)
    with pytest.raises(ValueError, match=r"run audio_input=tokens: tasks.rates.se=0.25 but split\(s\) "
                       r"\['train', 'validation'\] .* no noisy inputs.*--noisy_inputs"):  # fmt: skip
        sweep_lib.run_sweep(sweep, str(tmp_path), log=lambda _: None)
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_audio_input_sweep_trains_three_variants_into_one_table(tmp_path, monkeypatch):
    """End to end at quick sizes: three real trainings on one set of shards with feature
    rows, each followed by launch.lm_report; the table has a row per variant with finite
    losses, perplexities, ASR WER / CER, step time and parameter count."""
    import math

    from tests.tasks.conftest import FEATURE_DIM, write_corpus

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device per run, as a user's sweep
    workdir = str(tmp_path)
    write_corpus(os.path.join(workdir, "tokens", "test_speech", "tiny"), features=True, noisy=True)
    sweep = _audio_sweep(FEATURE_DIM)
    rows = sweep_lib.run_sweep(sweep, workdir, log=print)
    table = sweep_lib.write_table(sweep, workdir, rows)
    assert [r["model.audio_input"] for r in rows] == ["tokens", "continuous", "hybrid"]
    for row in rows:
        assert row["status"] == "done", row
        for tag in sweep["metrics"]:
            if tag.startswith("eval/results.json:"):  # the dropped launch.evaluate step's
                assert row[tag] is None
                continue
            assert isinstance(row[tag], (int, float)) and math.isfinite(row[tag]), (row["run"], tag)
        assert row["report.json:asr/wer"] >= 0 and row["report.json:step_seconds"] > 0
    params = [r["report.json:params"] for r in rows]
    assert params[0] < params[1] < params[2]  # the encoder; the hybrid's fusion on top
    for variant in ("tokens", "continuous", "hybrid"):
        assert f"| audio_input={variant} |" in table
    saved = json.load(open(os.path.join(sweep_lib.sweep_dir(workdir, sweep), "results.json")))
    assert [r["run"] for r in saved] == [r["run"] for r in rows]
    # Identical data: every run trained on the same batches (the same loss tokens per
    # task at every step).
    from gpa_jax.training.metrics import read_scalars

    seen = []
    for row in rows:
        scalars = read_scalars(os.path.join(sweep_lib.sweep_dir(workdir, sweep), row["run"], "tensorboard"))
        seen.append({tag: series for tag, series in scalars.items()
                     if tag.startswith("train/") and tag.endswith("loss_tokens")})  # fmt: skip
    assert seen[0] and seen[0] == seen[1] == seen[2]
    assert "train/se/loss_tokens" in seen[0]  # speech enhancement in every run's mixture


def test_evaluate_steps_run_after_training_and_their_json_fills_the_table(tmp_path, monkeypatch):
    """Stand-in entry points: each evaluate step gets the run's config flags, "{run_dir}"
    and "{workdir}", the steps run in order and only after the entry succeeded, and any
    step's failure leaves the run unfinished; "<file>.json:<a>/<b>" metrics read nested
    keys of the JSON files they wrote."""
    (tmp_path / "fake_train.py").write_text(textwrap.dedent("""
        import sys
        sys.exit(1 if "--config.model.num_layers=3" in sys.argv else 0)
    """))
    (tmp_path / "fake_eval.py").write_text(textwrap.dedent("""
        import json, sys
        args = dict(a.split("=", 1) for a in sys.argv[1:])
        layers = int(args["--config.model.num_layers"])
        if layers == 2:
            sys.exit(3)
        json.dump({"asr": {"wer": 0.5 * layers}, "params": 10 * layers}, open(args["--out"], "w"))
    """))
    (tmp_path / "fake_judge.py").write_text(textwrap.dedent("""
        import json, os, sys
        args = dict(a.split("=", 1) for a in sys.argv[1:])
        assert os.path.isfile(os.path.join(args["--workdir"], "r.json"))  # after step 1
        if args["--config.model.num_layers"] == "4":
            sys.exit(4)
        json.dump({"tts": {"judge_wer": 0.25}, "stages": args["--stages"]},
                  open(os.path.join(args["--workdir"], "j.json"), "w"))
    """))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    workdir = str(tmp_path / "w")
    sweep = sweep_lib.load_sweep(_write(tmp_path, {"model.num_layers": [1, 2, 3, 4]}))
    sweep.update(entry="fake_train", evaluate=[["fake_eval", "--out={run_dir}/r.json"],
                                               ["fake_judge", "--stages={workdir}"]],
                 metrics=["r.json:asr/wer", "r.json:params", "r.json:asr/cer", "j.json:tts/judge_wer",
                          "j.json:stages"])  # fmt: skip
    rows = sweep_lib.run_sweep(sweep, workdir, log=lambda _: None)
    assert [r["status"] for r in rows] == ["done", "failed (exit 3)", "failed (exit 1)", "failed (exit 4)"]
    assert rows[0]["r.json:asr/wer"] == 0.5 and rows[0]["r.json:params"] == 10
    assert rows[0]["j.json:tts/judge_wer"] == 0.25 and rows[0]["j.json:stages"] == workdir
    assert rows[0]["r.json:asr/cer"] is None and rows[1]["r.json:asr/wer"] is None
    assert rows[3]["r.json:asr/wer"] == 2.0 and rows[3]["j.json:tts/judge_wer"] is None
    # One step given as a flat list is the same as a list of one step.
    one = dict(sweep, evaluate=["fake_eval", "--out={run_dir}/r.json"])
    run = sweep_lib.expand(one, workdir)[0]
    assert sweep_lib.evaluate_commands(one, run, workdir, python="py") == [
        ["py", "-m", "fake_eval", f"--config={sweep['config']}",
         f"--workdir={sweep_lib.sweep_dir(workdir, sweep)}/{run.name}", *run.flags(),
         f"--out={sweep_lib.sweep_dir(workdir, sweep)}/{run.name}/r.json"]]  # fmt: skip
    for bad in ("'launch.x'", "[['launch.x'], []]", "[['launch.x', 3]]"):
        (tmp_path / "bad.py").write_text("def get_sweep():\n    return dict(name='t', entry='e', "
                                         f"config='c', grid={{}}, metrics=[], evaluate={bad})\n")  # fmt: skip
        with pytest.raises(ValueError, match="evaluate must be a list"):
            sweep_lib.load_sweep(str(tmp_path / "bad.py"))


SHIPPED_SWEEPS = sorted(n for n in os.listdir(os.path.join(REPO, "configs", "sweeps")) if n.endswith(".py"))


@pytest.mark.parametrize("name", SHIPPED_SWEEPS)
def test_every_shipped_sweep_expands_against_its_config(name):
    """Each sweep file under configs/sweeps loads and every grid point is a valid override
    set of its config (expand refuses unknown keys and mistyped values)."""
    sweep = sweep_lib.load_sweep(os.path.join(REPO, "configs", "sweeps", name))
    sweep["config"] = os.path.join(REPO, sweep["config"])
    runs = sweep_lib.expand(sweep, "W")
    assert len(runs) == math.prod(len(v) for v in sweep["grid"].values()) > 1
