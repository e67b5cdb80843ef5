"""launch/ commands with user errors: one clear message, exit status 2, no traceback.

Every case runs the real command in a subprocess (`python -m launch.<name>`) and checks
the exit status, the message and the absence of 'Traceback' (`--verbose` shows it). The
launch.sample cases that need trained models use the quick demo's work dir (slow).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO


def _cli(module, *args, timeout=600):
    env = {**os.environ, "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", f"launch.{module}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _user_error(result, *words):
    """Exit 2, one 'launch.<cmd>: error:' line holding `words`, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def test_config_key_type_and_syntax_errors(tmp_path):
    line = _user_error(_cli("tokenize", f"--workdir={tmp_path}", "--config.data.nope=1"),
                       "unknown config key 'data.nope'", "valid keys under data")  # fmt: skip
    assert line.startswith("launch.tokenize: error:")
    _user_error(_cli("tokenize", "--config.data.batch_size=two"),
                "config key 'data.batch_size' expects int, got 'two'")  # fmt: skip
    _user_error(_cli("tokenize", "--config.data.batch_size"), "must be written --config.key=value")
    _user_error(_cli("tokenize", "--config=configs/no_such_config.py"),
                "configs/no_such_config.py", "does not exist")  # fmt: skip


def test_flag_errors(tmp_path):
    _user_error(_cli("sample", "--task=asr", "--bogus_flag=1"), "bogus_flag")
    _user_error(_cli("sample", "--task=tts", "--text=hi"), "--task=tts needs --ref")
    _user_error(_cli("sample"), "--task")
    _user_error(_cli("sample", "--task=se", "--ref=r.wav"), "--task=se needs --audio")
    _user_error(
        _cli("sample", "--task=asr", "--audio=n.wav", "--stream"), "--stream makes audio (tts, vc, se)"
    )
    # A report's --json_out is checked before minutes of scoring, not when it is written.
    _user_error(_cli("lm_report", f"--workdir={tmp_path}", f"--json_out={tmp_path}"),
                f"output '{tmp_path}' is a directory")  # fmt: skip


def test_se_is_refused_for_an_lm_trained_without_it(tmp_path):
    """Before any model loads: the checkpoint's saved config has no SE in its mixture."""
    from gpa_jax.config_utils import load_config

    meta = tmp_path / "checkpoints" / "1" / "meta"
    meta.mkdir(parents=True)
    config = json.loads(
        load_config(os.path.join(REPO, "configs", "gpa_tiny.py")).to_json_best_effort()
    )
    (meta / "metadata").write_text(json.dumps({"step": 1, "config": config}))
    _user_error(_cli("sample", "--task=se", "--audio=n.wav", f"--workdir={tmp_path}"),
                "was not trained for se", "tasks.rates.se", "--noisy_inputs")  # fmt: skip


def test_missing_work_dir_and_checkpoints(tmp_path):
    missing = tmp_path / "no_such_run"
    _user_error(_cli("sample", "--task=asr", "--audio=x.wav", f"--workdir={missing}"),
                f"work dir '{missing}'", "does not exist")  # fmt: skip
    _user_error(_cli("evaluate", f"--workdir={missing}"), "does not exist")
    assert not missing.exists()  # a reading command never creates it
    empty = tmp_path / "empty_run"
    empty.mkdir()
    _user_error(_cli("sample", "--task=asr", "--audio=x.wav", f"--workdir={empty}"),
                "no LM checkpoint in", "launch.train")  # fmt: skip
    _user_error(_cli("tokenize", f"--workdir={empty}"), "no codec checkpoint directory")


def test_verbose_shows_the_traceback(tmp_path):
    result = _cli(
        "sample", "--task=asr", "--audio=x.wav", f"--workdir={tmp_path / 'nope'}", "--verbose"
    )
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "WorkdirError" in result.stderr
    assert "launch.sample: error: work dir" in result.stderr


def test_output_folder_is_checked_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "sub" / "y.wav"
    start = time.time()
    result = _cli("sample", "--task=tts", "--text=hi", "--ref=r.wav", f"--out={out}",
                  f"--workdir={tmp_path}")  # fmt: skip
    _user_error(result, "cannot create the folder of", str(out))
    assert time.time() - start < 60  # refused before any import of the model stack
    unwritable = tmp_path / "train_into_file"
    unwritable.write_text("")
    _user_error(_cli("train", f"--workdir={unwritable / 'run'}"), "cannot create work dir")


def test_an_incomplete_multiprocess_job_is_refused_before_it_starts(tmp_path):
    start = time.time()
    result = _cli("train", "--coordinator_address=localhost:1", "--num_processes=2",
                  f"--workdir={tmp_path}")  # fmt: skip
    _user_error(result, "also needs --process_id (or $JAX_PROCESS_ID)")
    assert time.time() - start < 60  # no process started, no coordinator waited for


def test_resume_with_a_changed_shape_names_the_parameter(tiny_lm, tmp_path):
    from gpa_jax import config_utils
    from gpa_jax.training import checkpoint as ckpt_lib
    from gpa_jax.training import trainer

    config_file = tiny_lm  # the faults suite's 1-layer LM (conftest)
    workdir = tmp_path / "run"
    config = config_utils.load_config(str(config_file))
    config.train.num_steps = 1
    trainer.train(config, str(workdir), progress=False)
    assert ckpt_lib.saved_steps(ckpt_lib.checkpoint_dir(workdir)) == [1]
    result = _cli("train", f"--config={config_file}", f"--workdir={workdir}",
                  "--config.model.mlp_dim=96", "--config.train.num_steps=2")  # fmt: skip
    line = _user_error(result, "does not fit the config", "mlp")
    # The parameter by name, with the config's shape (mlp_dim 96) and the checkpoint's (64).
    assert re.search(
        r"mlp\.\w+\.kernel: config \([0-9, ]*96[0-9, ]*\), checkpoint \([0-9, ]*64", line
    ), line
    assert ckpt_lib.saved_steps(ckpt_lib.checkpoint_dir(workdir)) == [1]  # nothing moved or lost


# --- launch.sample on the quick demo's trained chain ------------------------------------


def _wav_of(workdir):
    from gpa_jax.evaluation.results import read_manifest

    return read_manifest(str(workdir / "samples" / "asr" / "manifest.jsonl"))[0]["wav"]


@pytest.mark.slow
def test_sample_asr_needs_no_acoustic_stage(quick_demo, tmp_path):
    workdir, demo = quick_demo
    assert demo.returncode == 0
    wav = _wav_of(workdir)
    bare = tmp_path / "no_acoustic"
    shutil.copytree(workdir, bare, ignore=shutil.ignore_patterns("acoustic", "samples", "eval"))
    result = _cli("sample", f"--workdir={bare}", "--task=asr", f"--audio={wav}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored params" in result.stderr  # the LM was loaded and served the request
    assert not (bare / "acoustic").exists()


@pytest.mark.slow
def test_sample_refuses_overlong_input_in_seconds_before_loading_models(quick_demo, tmp_path):
    workdir, demo = quick_demo
    assert demo.returncode == 0
    long_wav = tmp_path / "ten_minutes.wav"
    noise = np.random.default_rng(0).standard_normal(16000 * 600) * 0.1
    sf.write(long_wav, noise.astype(np.float32), 16000, subtype="PCM_16")
    result = _cli("sample", f"--workdir={workdir}", "--task=asr", f"--audio={long_wav}")
    line = _user_error(
        result, str(long_wav), "600.00 s", "this LM takes at most", "s of asr source"
    )
    assert "tokens" not in line.split("at most")[0]  # the limit is stated in seconds
    assert "restored params" not in result.stderr  # refused before any model was loaded


@pytest.mark.slow
def test_sample_short_reference_is_refused_or_served_with_a_warning(quick_demo, tmp_path):
    workdir, demo = quick_demo
    assert demo.returncode == 0
    audio, rate = sf.read(_wav_of(workdir), dtype="float32")
    short = tmp_path / "short_ref.wav"
    sf.write(short, audio[: int(0.3 * rate)], rate)
    out = tmp_path / "missing" / "folder" / "y.wav"  # created before the work starts
    refused = _cli("sample", f"--workdir={workdir}", "--task=tts", "--text=the cat sat",
                   f"--ref={short}", f"--out={out}")  # fmt: skip
    _user_error(refused, "0.30 s", "ref_min_frames", "--allow_short_ref")
    served = _cli("sample", f"--workdir={workdir}", "--task=tts", "--text=the cat sat",
                  f"--ref={short}", f"--out={out}", "--allow_short_ref")  # fmt: skip
    assert served.returncode == 0, served.stderr[-3000:]
    assert "ref_min_frames" in served.stderr and "served anyway" in served.stderr
    written, out_rate = sf.read(out)
    assert out_rate == 16000 and len(written) > 0
