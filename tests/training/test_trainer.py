"""The LM trainer: synthetic batches, exact resume, SIGTERM, grad accumulation, NaN stop, metrics.

Every run uses one tiny config (2 layers, d 64, vocab 256, batch 8 x 64, mesh (2, 2, 2) on
the 8 simulated CPU devices) built exactly as `launch.train` builds it from the command
line, and a persistent compilation cache shared with the subprocess, so each distinct
step function compiles once per session.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from gpa_jax import paths, sharding
from gpa_jax.config_utils import ConfigError, load_config
from gpa_jax.training import checkpoint as ckpt
from gpa_jax.training import trainer
from gpa_jax.training.data_iter import (
    SyntheticLMBatches,
    make_iterators,
    task_names,
    task_names_in,
)
from gpa_jax.training.metrics import MemoryWriter, create_default_writer, read_scalars

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/gpa_tiny.py"
OVERRIDES = (
    "model.vocab_size=256",
    "model.num_layers=2",
    "model.embed_dim=64",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.head_dim=16",
    "model.mlp_dim=128",
    "model.max_len=64",
    "model.prefix_bidirectional=true",
    "mesh.shape=(2, 2, 2)",
    "train.batch_size=8",
    "train.seq_len=64",
    "train.log_every=1",
    "train.eval_every=3",
    "train.eval_steps=2",
    "train.checkpoint_every=3",
    "optimizer.learning_rate=0.003",
    "optimizer.warmup_steps=2",
    "optimizer.total_steps=100",
    "data.source=synthetic",
)


def tiny_config(*extra: str):
    """The test config, with `extra` overrides (same syntax as the command line)."""
    return load_config(os.path.join(REPO, CONFIG), [*OVERRIDES, *extra])


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """A persistent XLA cache for this session (shared with subprocesses via env vars)."""
    path = str(tmp_path_factory.getbasetemp() / "jax_cache")
    old_dir = jax.config.jax_compilation_cache_dir
    old_min = jax.config.jax_persistent_cache_min_compile_time_secs
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield path
    jax.config.update("jax_compilation_cache_dir", old_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
    compilation_cache.reset_cache()


def _params(workdir, config, step=None):
    mesh = sharding.make_mesh(config.mesh)
    state = ckpt.restore_params_only(ckpt.checkpoint_dir(workdir), config, mesh, step)
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_leaves_with_path(state)
    }


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- data ------------------------------------------------------------------------------------


def test_synthetic_batches_are_packed_deterministic_and_resumable():
    config = tiny_config()
    it = SyntheticLMBatches(config, seed=5)
    batches = [next(it) for _ in range(3)]
    b = batches[0]
    assert all(v.shape == (8, 64) and v.dtype == np.int32 for v in b.values())
    seg, pos, tid = b["decoder_segment_ids"], b["decoder_positions"], b["decoder_task_ids"]
    real = seg > 0
    assert (tid[real] >= 1).all() and (tid[real] <= 3).all() and (tid[~real] == 0).all()
    assert (b["decoder_loss_weights"][~real] == 0).all()
    assert not (b["decoder_loss_weights"] & b["decoder_prefix_mask"]).any()  # no loss on prefixes
    assert seg.max() > 1  # packed
    # Inputs are the targets shifted right within each segment, 0 at segment starts.
    inner = real & (pos > 0)
    np.testing.assert_array_equal(
        b["decoder_input_tokens"][:, 1:][inner[:, 1:]],
        b["decoder_target_tokens"][:, :-1][inner[:, 1:]],
    )
    assert (b["decoder_input_tokens"][pos == 0] == 0).all()
    assert len(set(task_names_in(tid, task_names(config)))) >= 2

    # Same seed -> same batches; set_state jumps to any position; streams differ.
    other = SyntheticLMBatches(config, seed=5)
    other.set_state({"step": 2})
    assert other.get_state() == {"step": 2}
    jumped = next(other)
    for k in b:
        np.testing.assert_array_equal(jumped[k], batches[2][k])
    evals = SyntheticLMBatches(config, seed=5, split="eval")
    assert not np.array_equal(next(evals)["decoder_target_tokens"], b["decoder_target_tokens"])
    # Two hosts' slices make up the global batch.
    halves = [SyntheticLMBatches(config, seed=5, process_index=i, process_count=2) for i in (0, 1)]
    parts = [next(h) for h in halves]
    for k in b:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), b[k])
    train_it, eval_it = make_iterators(config)
    assert isinstance(train_it, SyntheticLMBatches) and eval_it.split == "eval"


def test_config_carries_train_and_data_sections():
    config = tiny_config("train.grad_accum_steps=2")
    assert config.train.grad_accum_steps == 2 and config.data.source == "synthetic"
    # One task table (it also fixes the tag tokens): not a config field.
    assert "task_names" not in config.data and task_names(config) == ("tts", "asr", "vc")
    assert load_config(os.path.join(REPO, CONFIG)).data.source == "tasks"
    with pytest.raises(ConfigError, match="task_names"):
        tiny_config("data.task_names=('tts',)")
    with pytest.raises(ValueError, match="must divide over the 4 batch shards"):
        trainer.check_config(
            tiny_config("train.grad_accum_steps=4"), sharding.make_mesh(config.mesh)
        )


# --- runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    """A 3-step run (checkpoint at 3) with its metrics, written through the default writer."""
    workdir = tmp_path_factory.mktemp("three")
    result = trainer.train(tiny_config("train.num_steps=3"), workdir, progress=False)
    assert result.step == 3 and not result.preempted
    return workdir


def test_resume_reproduces_the_straight_run_exactly(three_steps, tmp_path):
    # 3 steps, stop (checkpoint), resume for 3 more  ==  6 steps straight.
    resumed = tmp_path / "resumed"
    shutil.copytree(three_steps, resumed)
    result = trainer.train(tiny_config("train.num_steps=6"), resumed, progress=False)
    assert (result.start_step, result.step) == (3, 6)
    straight = tmp_path / "straight"
    trainer.train(tiny_config("train.num_steps=6"), straight, progress=False)

    a, b = read_scalars(straight / "tensorboard"), read_scalars(resumed / "tensorboard")
    for tag in ("train/loss", "train/grad_norm", "train/tts/loss", "eval/loss", "eval/vc/loss"):
        assert dict(a[tag]) == dict(b[tag]), tag  # exact, every step
    assert sorted(dict(a["train/loss"])) == [1, 2, 3, 4, 5, 6]
    assert sorted(dict(a["eval/loss"])) == [3, 6]
    losses = dict(a["train/loss"])
    assert losses[6] < losses[1]  # it learns
    _assert_same_params(_params(straight, tiny_config()), _params(resumed, tiny_config()))
    # Per-task train/eval metrics and the run-rate scalars reach TensorBoard.
    for name in ("tts", "asr", "vc"):
        for split in ("train", "eval"):
            assert f"{split}/{name}/loss" in a and f"{split}/{name}/accuracy" in a
    for tag in ("train/learning_rate", "train/accuracy", "train/tokens_per_s", "train/steps_per_s"):
        assert tag in a, tag


def test_grad_accumulation_matches_the_full_batch(tmp_path):
    runs = {}
    for k in (1, 2):
        writer = MemoryWriter()
        config = tiny_config(
            "train.num_steps=3", f"train.grad_accum_steps={k}", "train.eval_every=0"
        )
        trainer.train(config, tmp_path / str(k), writer=writer, progress=False)
        runs[k] = (writer, _params(tmp_path / str(k), config))
    for tag in ("train/loss", "train/grad_norm", "train/accuracy", "train/asr/loss"):
        one, two = runs[1][0].series(tag), runs[2][0].series(tag)
        assert sorted(one) == sorted(two) == [1, 2, 3]
        for step in one:  # float summation order differs: relative 1e-5
            assert two[step] == pytest.approx(one[step], rel=1e-5), (tag, step)
    # Adam divides by sqrt(v): for a weight whose gradient is near zero, summation-order
    # noise in g becomes a visible change of its update (CI saw 1.6e-5 on one weight).
    # Every step moves a weight by at most ~lr, so allow 2 % of one step's largest move
    # (a loaded 2-core run saw 3.4e-5 = 1.1 % on one of 8,192 weights; with gpa_tiny's
    # guided-attention penalty, another summed term, 7.3e-5 = 2.4 % on one of 4,096).
    atol = 0.05 * config.optimizer.learning_rate
    for name, value in runs[1][1].items():
        np.testing.assert_allclose(runs[2][1][name], value, rtol=1e-4, atol=atol, err_msg=name)


def test_nan_stops_the_run_naming_step_and_tasks(three_steps, tmp_path):
    # A checkpoint whose params hold a NaN: the next step's loss is NaN.
    config = tiny_config("train.num_steps=6", "train.log_every=3")
    mesh = sharding.make_mesh(config.mesh)
    _, _, targets = ckpt.abstract_train_state(config, mesh)
    source = ckpt.make_manager(ckpt.checkpoint_dir(three_steps), read_only=True, async_save=False)
    state, data_state = ckpt.restore_checkpoint(source, targets)
    source.close()
    kernel = state[0]["decoder"]["layers"][0]["mlp"]["gate_proj"]["kernel"]
    kernel.set_value(kernel.get_value().at[0, 0].set(np.nan))
    manager = ckpt.make_manager(ckpt.checkpoint_dir(tmp_path), async_save=False)
    ckpt.save_checkpoint(manager, 3, state, data_state=data_state, config=config)
    manager.close()

    with pytest.raises(trainer.NonFiniteLossError) as err:
        trainer.train(config, tmp_path, writer=MemoryWriter(), progress=False)
    batch = SyntheticLMBatches(config).batch_at(3)  # the batch of step 4
    tasks = task_names_in(batch["decoder_task_ids"], task_names(config))
    message = str(err.value)
    assert "non-finite loss at step 4" in message, message
    assert f"tasks in its batch: {', '.join(tasks)}" in message, message
    check = ckpt.make_manager(ckpt.checkpoint_dir(tmp_path), read_only=True)
    assert check.all_steps() == [3]  # nothing saved from the broken state


def test_sigterm_saves_and_the_resumed_run_matches(compile_cache, tmp_path):
    """A real `launch.train` process gets SIGTERM mid-run, saves, exits 143; resuming is exact."""
    workdir = tmp_path / "killed"
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=compile_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    cmd = [
        sys.executable,
        "-m",
        "launch.train",
        f"--config={CONFIG}",
        *[f"--config.{o}" for o in OVERRIDES],
        "--config.train.num_steps=1000",
        "--config.train.checkpoint_every=0",
        "--config.train.eval_every=0",
        f"--workdir={workdir}",
        "--progress=false",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(240, proc.kill)
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"step [2-9]\d*/1000: loss", line):
                proc.send_signal(signal.SIGTERM)
                break
        lines.extend(proc.stdout)
        proc.wait()
    finally:
        watchdog.cancel()
    log = "".join(lines)
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert "received SIGTERM" in log and "stopped at step" in log, log[-3000:]
    manager = ckpt.make_manager(ckpt.checkpoint_dir(workdir), read_only=True)
    (k,) = manager.all_steps()
    manager.close()
    assert 2 <= k < 1000
    data_file = workdir / "checkpoints" / str(k) / "data_iter" / "process_0-of-1.json"
    assert f'"step": {k}' in data_file.read_text()

    # Resume two more steps in-process; compare with a straight run of k + 2 steps.
    resumed_writer = MemoryWriter()
    config = tiny_config(f"train.num_steps={k + 2}", "train.eval_every=0")
    result = trainer.train(config, workdir, writer=resumed_writer, progress=False)
    assert (result.start_step, result.step) == (k, k + 2)
    straight_writer = MemoryWriter()
    trainer.train(config, tmp_path / "straight", writer=straight_writer, progress=False)
    straight = straight_writer.series("train/loss")
    killed = dict(read_scalars(workdir / "tensorboard")["train/loss"])
    assert sorted(killed) == list(range(1, k + 1))
    for step in range(1, k + 1):  # event files store float32
        assert killed[step] == np.float32(straight[step]), step
    for step in (k + 1, k + 2):
        assert resumed_writer.series("train/loss")[step] == straight[step], step
    _assert_same_params(_params(workdir, config), _params(tmp_path / "straight", config))


def test_tensorboard_event_files_read_back(tmp_path):
    writer = create_default_writer(tmp_path)
    writer.write_scalars(3, {"train/loss": 1.5, "train/tts/accuracy": 0.25})
    writer.write_texts(3, {"sample": "hello"})
    writer.close()
    assert read_scalars(tmp_path) == {"train/loss": [(3, 1.5)], "train/tts/accuracy": [(3, 0.25)]}


# --- the continuous audio-input variant ------------------------------------------------------


class _WithAudioRows:
    """Synthetic batches plus log-mel-like rows at the prefix positions (a stand-in for the
    task data's gather, which tests/tasks covers): row = a fixed random projection of the
    token there, so the rows carry what the tokens carry."""

    def __init__(self, inner, dim):
        self.inner, self.table = inner, np.random.default_rng(0).standard_normal((256, dim))

    def __iter__(self):
        return self

    def __next__(self):
        batch = dict(next(self.inner))
        mask = (batch["decoder_prefix_mask"] > 0) & (batch["decoder_segment_ids"] > 0)
        batch["decoder_audio_mask"] = mask.astype(np.int32)
        rows = self.table[batch["decoder_input_tokens"] % 256] * mask[..., None]
        batch["decoder_audio_features"] = rows.astype(np.float32)
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


@pytest.mark.parametrize("variant", ["continuous", "hybrid"])
def test_continuous_variant_trains_its_encoder_and_serves_from_the_checkpoint(tmp_path, variant):
    """Also the hybrid variant (its fusion too), with mel dropout on: the trainer gives
    it a key though dropout_rate is 0."""
    from gpa_jax.sampling import Request, Sampler
    from gpa_jax.tasks.vocab import SpeechVocabulary

    config = tiny_config(
        f"model.audio_input={variant}", "model.audio_encoder_layers=1",
        "model.audio_feature_dim=8", "train.num_steps=3", "model.vocab_size=512",
        "model.mel_dropout=0.3",
    )  # fmt: skip
    train, evals = make_iterators(config)
    writer = MemoryWriter()
    trainer.train(config, tmp_path, train_iter=_WithAudioRows(train, 8),
                  eval_iter=_WithAudioRows(evals, 8), writer=writer, progress=False)  # fmt: skip
    losses = writer.series("train/loss")
    assert sorted(losses) == [1, 2, 3] and all(np.isfinite(list(losses.values())))
    assert np.isfinite(writer.series("eval/loss")[3])
    params = _params(tmp_path, config)
    encoder = [k for k in params if "audio_encoder" in k]
    assert encoder, sorted(params)[:5]
    fusion = [k for k in params if "fusion" in k]
    assert bool(fusion) == (variant == "hybrid"), fusion
    # A batch without the rows is refused by name.
    with pytest.raises(ValueError, match="decoder_audio_features"):
        trainer.train(config, tmp_path / "plain", writer=MemoryWriter(), progress=False)
    # The sampler serves it from the checkpoint (params only).
    import seqio

    vocab = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=1, codebook_size=64)
    sampler = Sampler.from_checkpoint(ckpt.checkpoint_dir(tmp_path), vocab, config=config)
    codes = np.arange(10)[None] % 64
    rows = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)
    result = sampler.generate([Request.asr(codes, source_features=rows, max_new_tokens=4)])[0]
    assert result.ok and 1 <= len(result.tokens) <= 4


def test_tensorboard_files_of_a_gs_log_dir_are_uploaded(fake_gcs):
    """A gs:// log dir: event files staged locally, uploaded (whole) as they grow and at
    close, when the staging folder goes."""
    logdir = f"{fake_gcs}/run/tensorboard"
    writer = create_default_writer(logdir)
    stage = writer._stage
    writer.write_scalars(1, {"train/loss": 2.5})
    writer.flush()
    assert paths.find_files(logdir, "*tfevents*")
    writer.write_scalars(2, {"train/loss": 1.5})
    writer.close()
    assert read_scalars(logdir) == {"train/loss": [(1, 2.5), (2, 1.5)]}
    assert not os.path.exists(stage)
