"""data.source='cache': the SeqIO mixture's batches cached once to ArrayRecord and read
with Grain (gpa_jax.data.batch_cache): the same batches, a tiny resume state, per-host
rows, clear errors for a cache of another config, and training with TensorFlow blocked."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gpa_jax.data import batch_cache
from gpa_jax.tasks import tasks as tasks_lib
from gpa_jax.training import trainer
from gpa_jax.training.data_iter import make_iterators
from gpa_jax.training.metrics import MemoryWriter
from gpa_jax.training.model_kinds import write_batch_cache
from tests.training.test_task_data import (  # noqa: F401  (fixtures)
    TASK_OVERRIDES,
    _new_run,
    compile_cache,
    task_config,
    token_workdir,
)
from tests.training.test_trainer import OVERRIDES, REPO

STEPS = 4


def cache_config(*extra):
    return task_config(f"train.num_steps={STEPS}", "train.eval_steps=2", *extra)


@pytest.fixture(scope="module")
def cached_workdir(token_workdir, tmp_path_factory):  # noqa: F811 (the imported fixture)
    """A work dir with token shards and the batch cache of cache_config()."""
    workdir = _new_run(token_workdir, tmp_path_factory.getbasetemp() / "cached")
    write_batch_cache(cache_config(), workdir)
    return workdir


def _assert_same_batch(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_the_cache_holds_the_mixtures_batches_in_order(cached_workdir):
    config = cache_config()
    tasks_train, tasks_eval = make_iterators(config, workdir=cached_workdir)
    config.data.source = "cache"
    cache_train, cache_eval = make_iterators(config, workdir=cached_workdir)
    for _ in range(STEPS):
        _assert_same_batch(next(tasks_train), next(cache_train))
    for _ in range(2):
        _assert_same_batch(next(tasks_eval), next(cache_eval))
    assert cache_eval.reference_losses == pytest.approx(tasks_eval.reference_losses)
    assert set(cache_eval.reference_losses) == {"tts", "asr", "vc"}
    # The run asked for more than was cached: one message naming the fix.
    with pytest.raises(batch_cache.CacheError, match=f"holds {STEPS} train batches"):
        next(cache_train)


def test_state_is_small_and_restores_exactly(cached_workdir):
    config = cache_config("data.source=cache")
    it, _ = make_iterators(config, workdir=cached_workdir)
    next(it)
    state = it.get_state()
    assert len(json.dumps(state)) <= 1024
    expected = [next(it) for _ in range(2)]
    again, _ = make_iterators(config, workdir=cached_workdir)
    again.set_state(state)
    for batch in expected:
        _assert_same_batch(batch, next(again))
    with pytest.raises(batch_cache.CacheError, match="another data source"):
        again.set_state(b"tf.data checkpoint bytes")


def test_hosts_read_disjoint_rows_of_the_same_global_batches(cached_workdir):
    config = cache_config("data.source=cache")
    (single, _), hosts = make_iterators(config, workdir=cached_workdir), []
    for p in range(2):
        hosts.append(make_iterators(config, workdir=cached_workdir, process_index=p,
                                    process_count=2)[0])  # fmt: skip
    for _ in range(2):
        whole, parts = next(single), [next(h) for h in hosts]
        for k in whole:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    # Grain worker processes read the same batches.
    workers, _ = make_iterators(cache_config("data.source=cache", "data.cache_workers=1"),
                                workdir=cached_workdir)  # fmt: skip
    fresh, _ = make_iterators(config, workdir=cached_workdir)
    _assert_same_batch(next(fresh), next(workers))


def test_a_cache_of_another_config_is_refused_and_a_rerun_is_a_noop(cached_workdir):
    manifest = os.path.join(cached_workdir, "batch_cache", batch_cache.MANIFEST)
    before = os.path.getmtime(manifest)
    write_batch_cache(cache_config(), cached_workdir)  # up to date: nothing rewritten
    assert os.path.getmtime(manifest) == before
    for change in ("seed=7", "tasks.rates.asr=0.9", "train.batch_size=4"):
        with pytest.raises(batch_cache.CacheError, match="made for another mixture"):
            make_iterators(cache_config("data.source=cache", change), workdir=cached_workdir)


@pytest.mark.slow
def test_training_from_the_cache_resumes_and_matches_the_task_pipeline(cached_workdir, tmp_path):
    """4 steps from the cache == 2, stop, resume 2 == 4 steps on data.source=tasks."""
    tasks_run = _new_run(cached_workdir, tmp_path / "tasks")
    reference = MemoryWriter()
    trainer.train(cache_config(), tasks_run, writer=reference, progress=False)

    resumed = _new_run(cached_workdir, tmp_path / "resumed")
    first, second = MemoryWriter(), MemoryWriter()
    trainer.train(cache_config("data.source=cache", "train.num_steps=2"), resumed, writer=first,
                  progress=False)  # fmt: skip
    tasks_lib.clear_caches()
    result = trainer.train(cache_config("data.source=cache"), resumed, writer=second,
                           progress=False)  # fmt: skip
    assert (result.start_step, result.step) == (2, STEPS)
    for tag in ("train/loss", "train/tts/loss", "eval/loss", "eval/asr/loss"):
        parts = {**first.series(tag), **second.series(tag)}
        assert parts == reference.series(tag), tag


@pytest.mark.slow
def test_training_from_the_cache_imports_no_tensorflow(cached_workdir, tmp_path):
    """A process where TensorFlow and seqio look uninstalled trains two steps from the cache."""
    workdir = _new_run(cached_workdir, tmp_path / "no_tf")
    script = textwrap.dedent(f"""
        import sys

        # None in sys.modules: `import` raises ImportError, find_spec says "not installed".
        for name in ("tensorflow", "seqio", "tensorflow_datasets", "tensorflow_text"):
            sys.modules[name] = None
        from gpa_jax.training import trainer
        from tests.training.test_batch_cache import cache_config

        config = cache_config("data.source=cache", "train.num_steps=2")
        result = trainer.train(config, {str(workdir)!r}, progress=False)
        loaded = [m for m in sys.modules if m.startswith(("tensorflow.", "seqio."))]
        print("steps", result.step, "loaded", loaded)
    """)
    # The test module imports tasks (TensorFlow) at its top: give the child a copy of
    # what cache_config needs without those imports instead.
    env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    source = _CONFIG_SOURCE.format(tiny=OVERRIDES, tasks=TASK_OVERRIDES, repo=REPO, steps=STEPS)
    script = script.replace("from tests.training.test_batch_cache import cache_config", source)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "steps 2 loaded []" in out.stdout


# cache_config without importing the tests' task helpers (they import TensorFlow).
_CONFIG_SOURCE = textwrap.dedent("""
    import os

    from gpa_jax.config_utils import load_config

    TINY = {tiny!r}
    TASKS = {tasks!r}

    def cache_config(*extra):
        return load_config(os.path.join({repo!r}, "configs/gpa_tiny.py"),
                           [*TINY, *TASKS, "train.num_steps={steps}", "train.eval_steps=2", *extra])
""")


def test_a_cache_on_gs_round_trips(fake_gcs):
    """Written to a gs:// folder (staged, uploaded) and read back through the host cache."""
    from gpa_jax.training.data_iter import SyntheticLMBatches

    config = cache_config()
    directory = f"{fake_gcs}/run/batch_cache"
    split = batch_cache.write_split(directory, "train", SyntheticLMBatches(config), 3)
    batch_cache.write_manifest(directory, {"fingerprint": "f", "splits": {"train": split}})
    it = batch_cache.CachedBatches(directory, "train", fingerprint_value="f")
    expected = SyntheticLMBatches(config)
    for _ in range(3):
        _assert_same_batch(next(expected), next(it))
