"""A full disk (ENOSPC injected at the write layer, `conftest.fill_disk`) during an LM,
codec or CTC-teacher checkpoint save and during `gpa_jax.paths.atomic_write_*`: one
message naming the path and "no space left", exit status 2 from the CLI, no thread
tracebacks, the earlier checkpoint or file intact, and nothing half-written under a final
name; with space back, the rerun resumes from the intact checkpoint.

Checked by hand on a real 2 MB tmpfs too (tensorstore's own ENOSPC, sync and async saves):
the same one line, where the unpatched trainer printed ~600 lines of tracebacks.
"""

import os
import shutil
import subprocess
import textwrap

import pytest

from gpa_jax import paths
from gpa_jax.config_utils import load_config
from gpa_jax.errors import DiskFullError, UserError
from gpa_jax.training import checkpoint as ckpt
from gpa_jax.training import trainer
from gpa_jax.training.metrics import MemoryWriter
from tests.faults.conftest import PYTHON, REPO, fill_disk, subprocess_env

NO_SPACE = "no space left on device"


def _config(tiny_lm, steps, async_save=False):
    return load_config(
        tiny_lm,
        [
            f"train.num_steps={steps}",
            "train.checkpoint_every=2",
            f"train.async_checkpointing={async_save}",
        ],
    )


@pytest.fixture(scope="module")
def two_steps(tiny_lm, compile_cache, tmp_path_factory):
    """A work dir whose run saved checkpoint 2."""
    workdir = tmp_path_factory.mktemp("two_steps")
    trainer.train(_config(tiny_lm, 2), workdir, writer=MemoryWriter(), progress=False)
    assert ckpt.saved_steps(ckpt.checkpoint_dir(workdir)) == [2]
    return workdir


def _leftovers(directory):
    return sorted(n for n in os.listdir(directory) if not n.isdigit())


def _assert_one_disk_full_error(error, ckpt_dir, failed, intact, stderr):
    message = str(error)
    assert isinstance(error, UserError)  # launch.common.run: exit 2, no traceback
    assert NO_SPACE in message and str(ckpt_dir) in message, message
    assert f"checkpoint {failed}" in message, message
    assert f"checkpoint {intact} is intact" in message, message
    assert "Traceback" not in stderr
    # The failed step never looks saved: no final folder, and its partial folder is gone.
    assert ckpt.saved_steps(ckpt_dir) == [intact] and _leftovers(ckpt_dir) == []


# Async: the write fails in Orbax's background threads, and the manager and its
# checkpointer each hold the error (`checkpoint.close_manager`).
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_lm_checkpoint_save_on_a_full_disk(two_steps, tiny_lm, tmp_path, capfd, async_save):
    workdir = tmp_path / "run"
    shutil.copytree(two_steps, workdir)
    ckpt_dir = ckpt.checkpoint_dir(workdir)
    config = _config(tiny_lm, 4, async_save)
    capfd.readouterr()
    give_back = fill_disk(ckpt_dir)
    try:
        with pytest.raises(DiskFullError) as full:
            trainer.train(config, workdir, writer=MemoryWriter(), progress=False)
    finally:
        give_back()
    _assert_one_disk_full_error(full.value, ckpt_dir, 4, 2, capfd.readouterr().err)

    # Space is back: the run resumes from the intact checkpoint 2.
    result = trainer.train(config, workdir, writer=MemoryWriter(), progress=False)
    assert (result.start_step, result.step) == (2, 4)
    assert ckpt.saved_steps(ckpt_dir) == [2, 4]


def test_train_cli_on_a_full_disk_is_one_line_and_exit_2(
    two_steps, tiny_lm, compile_cache, tmp_path
):
    workdir = tmp_path / "run"
    shutil.copytree(two_steps, workdir)
    ckpt_dir = ckpt.checkpoint_dir(workdir)
    # The real command (python -m launch.train), with the disk filled before it starts.
    driver = textwrap.dedent(f"""
        import runpy, sys
        from tests.faults.conftest import fill_disk
        fill_disk({ckpt_dir!r})
        sys.argv = ["launch/train.py", "--config={tiny_lm}", "--workdir={workdir}",
                    "--config.train.num_steps=4", "--config.train.checkpoint_every=2",
                    "--noprogress"]
        runpy.run_module("launch.train", run_name="__main__", alter_sys=True)
    """)
    env = {**subprocess_env(compile_cache), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([PYTHON, "-c", driver], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600, check=False)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if ": error: " in x]
    assert line.startswith("launch.train: error: " + NO_SPACE), line
    assert ckpt_dir in line and "checkpoint 2 is intact" in line, line
    assert ckpt.saved_steps(ckpt_dir) == [2] and _leftovers(ckpt_dir) == []


def test_codec_checkpoint_save_on_a_full_disk(compile_cache, tmp_path, capfd):
    from gpa_jax.codec import train as codec_train
    from tests.codec.test_train import _clips, tiny_config

    workdir, clips = str(tmp_path / "run"), _clips()
    config = lambda steps: tiny_config(**{"train.num_steps": steps})  # noqa: E731
    assert codec_train.train(config(2), workdir, clips=clips, progress=False).step == 2
    ckpt_dir = codec_train.checkpoint_dir(workdir)
    capfd.readouterr()
    give_back = fill_disk(ckpt_dir)
    try:
        with pytest.raises(DiskFullError) as full:
            codec_train.train(config(4), workdir, clips=clips, progress=False)
    finally:
        give_back()
    _assert_one_disk_full_error(full.value, ckpt_dir, 4, 2, capfd.readouterr().err)

    # Space is back: the rerun resumes from the intact checkpoint 2.
    seen: list[int] = []
    result = codec_train.train(
        config(4), workdir, clips=clips, on_batch=lambda s, _: seen.append(s), progress=False
    )
    assert seen == [3, 4] and result.checkpoint_steps == [2, 4]


def test_ctc_teacher_checkpoint_save_on_a_full_disk(compile_cache, tmp_path, capfd, caplog):
    from gpa_jax.codec import teacher as teacher_lib
    from tests.codec.test_teacher import teacher_config, tone_corpus

    directory = str(tmp_path / "teacher")
    train_set = tone_corpus(8, seed=3)
    config = lambda steps: teacher_config(  # noqa: E731
        **{"teacher.ctc_steps": steps, "teacher.ctc_checkpoint_every": 2}
    )
    teacher_lib.train_teacher(config(2), directory, train_set=train_set, progress=False)
    ckpt_dir = os.path.join(directory, "train_state")
    assert ckpt.saved_steps(ckpt_dir) == [2]
    capfd.readouterr()
    give_back = fill_disk(ckpt_dir)
    try:
        with pytest.raises(DiskFullError) as full:
            teacher_lib.train_teacher(config(4), directory, train_set=train_set, progress=False)
    finally:
        give_back()
    _assert_one_disk_full_error(full.value, ckpt_dir, 4, 2, capfd.readouterr().err)

    # Space is back: the rerun resumes from the intact checkpoint 2 and finishes.
    caplog.clear()
    with caplog.at_level("INFO"):
        meta = teacher_lib.train_teacher(config(4), directory, train_set=train_set, progress=False)
    assert f"teacher: resumed from step 2 in {ckpt_dir}" in caplog.text, caplog.text[-2000:]
    assert meta["steps"] == 4 and ckpt.saved_steps(ckpt_dir) == [4]


def test_ctc_teacher_final_save_on_a_full_disk(compile_cache, tmp_path, capfd):
    """The trained teacher's own save (params + meta.json) after its last step: one
    DiskFullError naming the folder, nothing marked complete; with space back the rerun
    resumes at the last step and saves it."""
    from gpa_jax.codec import teacher as teacher_lib
    from tests.codec.test_teacher import teacher_config, tone_corpus

    directory = str(tmp_path / "teacher")
    train_set = tone_corpus(8, seed=3)
    config = teacher_config(**{"teacher.ctc_steps": 2, "teacher.ctc_checkpoint_every": 2})
    capfd.readouterr()
    give_back = fill_disk(os.path.join(directory, "params"), siblings=True)
    try:
        with pytest.raises(DiskFullError) as full:
            teacher_lib.train_teacher(config, directory, train_set=train_set, progress=False)
    finally:
        give_back()
    message = str(full.value)
    assert NO_SPACE in message and os.path.join(directory, "params") in message, message
    assert "Traceback" not in capfd.readouterr().err
    assert not os.path.exists(os.path.join(directory, "meta.json"))
    assert not os.path.exists(os.path.join(directory, "params"))
    assert ckpt.saved_steps(os.path.join(directory, "train_state")) == [2]

    meta = teacher_lib.train_teacher(config, directory, train_set=train_set, progress=False)
    assert meta["steps"] == 2 and os.path.isfile(os.path.join(directory, "meta.json"))


@pytest.mark.parametrize("write", ["text", "bytes", "json"])
@pytest.mark.parametrize("existed", [True, False])
def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, write, existed):
    path = tmp_path / "results.json"
    if existed:
        path.write_text('{"old": 1}')
    value = {"new": "x" * 1000}
    # 100 bytes fit, the rest does not: a non-atomic write would leave a torn file.
    give_back = fill_disk(tmp_path, room=100)
    try:
        with pytest.raises(DiskFullError) as full:
            if write == "json":
                paths.atomic_write_json(path, value)
            else:
                text = '{"new": "' + "x" * 1000 + '"}'
                paths.atomic_write_text(path, text.encode() if write == "bytes" else text)
    finally:
        give_back()
    assert isinstance(full.value, UserError) and isinstance(full.value, OSError)
    assert NO_SPACE in str(full.value) and str(path) in str(full.value)
    if existed:
        assert path.read_text() == '{"old": 1}' and "previous content is kept" in str(full.value)
    else:
        assert not path.exists()
    assert os.listdir(tmp_path) == (["results.json"] if existed else [])  # no temporary left


def test_other_write_errors_are_not_disk_full(tmp_path):
    """Only ENOSPC / quota become DiskFullError; e.g. a missing folder stays what it is."""
    with pytest.raises(FileNotFoundError) as missing:
        paths.atomic_write_text(tmp_path / "no_such_dir" / "x.json", "{}")
    assert not isinstance(missing.value, DiskFullError)
