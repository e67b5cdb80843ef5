"""The trainer on the real task pipeline: SeqIO mixture over token shards made here.

Token shards come from tests.tasks.conftest.write_corpus (random codes, parallel
sentences, byte-level text) under <workdir>/tokens/<corpus>, where config.tasks finds
them by default. The model and mesh are test_trainer's tiny ones, rows of 128 tokens.
"""

import os
import shutil

import jax
import numpy as np
import pytest

from gpa_jax.tasks import tasks as tasks_lib
from gpa_jax.tasks.config import default_token_dir
from gpa_jax.training import lm_report, trainer
from gpa_jax.training.data_iter import (
    AUDIO_FEATURES_KEY,
    AUDIO_FRAMES_KEY,
    AUDIO_MASK_KEY,
    AudioFeatureBatches,
    TaskData,
    make_iterators,
)
from gpa_jax.training.metrics import MemoryWriter, read_scalars
from tests.tasks.conftest import FEATURE_DIM, write_corpus
from tests.training.test_trainer import (  # noqa: F401  (compile_cache: autouse fixture)
    _assert_same_params,
    _params,
    compile_cache,
    tiny_config,
)

CORPUS = "test_speech/tiny"
TASK_OVERRIDES = (
    "data.source=tasks",
    f"tasks.corpus={CORPUS}",
    "tasks.vocab.text=byte",
    "tasks.ref_max_frames=40",
    "tasks.ref_min_frames=10",
    "model.vocab_size=512",
    "model.max_len=128",
    "train.seq_len=128",
    "train.eval_every=2",
    "train.checkpoint_every=2",
)


def task_config(*extra):
    return tiny_config(*TASK_OVERRIDES, *extra)


@pytest.fixture(scope="module")
def token_workdir(tmp_path_factory):
    """A work dir holding only token shards (train + validation), as launch.tokenize leaves it."""
    workdir = tmp_path_factory.mktemp("tokens_only")
    write_corpus(default_token_dir(str(workdir), CORPUS))
    return workdir


def _new_run(token_workdir, path):
    shutil.copytree(token_workdir, path)
    return path


def test_iterators_batches_baselines_and_host_shards(token_workdir):
    config = task_config()
    train_it, eval_it = make_iterators(config, workdir=token_workdir)
    batch = next(train_it)
    assert all(v.shape == (8, 128) for v in batch.values())
    assert set(np.unique(batch["decoder_task_ids"])) >= {1, 2}
    assert set(eval_it.reference_losses) == {"tts", "asr", "vc"}
    assert all(v > 1.0 for v in eval_it.reference_losses.values())
    assert isinstance(train_it.get_state(), bytes)

    # Two hosts: 4 rows each, disjoint examples (each keeps every 2nd planned example).
    def examples(it, n=3):
        out = set()
        for _ in range(n):
            b = next(it)
            for row, seg in zip(b["decoder_target_tokens"], b["decoder_segment_ids"], strict=True):
                out |= {tuple(row[seg == s]) for s in np.unique(seg[seg > 0])}
        return out

    hosts = [
        TaskData(config, token_workdir, process_index=i, process_count=2).iterator("train")
        for i in (0, 1)
    ]
    assert next(hosts[0])["decoder_target_tokens"].shape == (4, 128)
    seen = [examples(h) for h in hosts]
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_bad_data_settings_name_the_fix(token_workdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="launch.tokenize"):
        make_iterators(task_config(), workdir=tmp_path)
    with pytest.raises(ValueError, match="raise model.vocab_size"):
        make_iterators(task_config("model.vocab_size=256"), workdir=token_workdir)
    with pytest.raises(ValueError, match="model.ctc_classes=100 leaves out text ids"):
        make_iterators(task_config("model.ctc_weight=0.5", "model.ctc_classes=100"), workdir=token_workdir)
    with pytest.raises(FileNotFoundError, match="launch.train_spm"):
        make_iterators(task_config("tasks.vocab.text=spm"), workdir=token_workdir)
    with pytest.raises(ValueError, match="no split 'test'"):
        make_iterators(task_config("tasks.eval_split=test"), workdir=token_workdir)


def test_resume_on_the_task_pipeline_reproduces_the_straight_run(token_workdir, tmp_path):
    """4 steps straight == 2 steps, stop, fresh process state, resume 2: every loss equal."""
    straight = _new_run(token_workdir, tmp_path / "straight")
    trainer.train(task_config("train.num_steps=4"), straight, progress=False)

    resumed = _new_run(token_workdir, tmp_path / "resumed")
    first, second = MemoryWriter(), MemoryWriter()
    trainer.train(task_config("train.num_steps=2"), resumed, writer=first, progress=False)
    tasks_lib.clear_caches()  # as a new process: banks re-read, tasks re-registered
    result = trainer.train(task_config("train.num_steps=4"), resumed, writer=second, progress=False)
    assert (result.start_step, result.step) == (2, 4)

    logged = read_scalars(straight / "tensorboard")
    for tag in ("train/loss", "train/grad_norm", "train/tts/loss", "train/asr/loss"):
        parts = {**first.series(tag), **second.series(tag)}
        assert sorted(parts) == [1, 2, 3, 4], tag
        for step, value in dict(logged[tag]).items():  # event files store float32
            assert np.float32(parts[step]) == value, (tag, step)
    for tag in ("eval/loss", "eval/tts/loss", "eval/asr/loss", "eval/vc/loss"):
        parts = {**first.series(tag), **second.series(tag)}
        assert {s: np.float32(v) for s, v in parts.items()} == dict(logged[tag]), tag
    config = task_config()
    _assert_same_params(_params(straight, config), _params(resumed, config))

    # Each eval carries the unigram baselines; the report prints both per task.
    baselines = TaskData(config, straight).unigram_baselines()
    for task, b in baselines.items():
        assert dict(logged[f"eval/{task}/unigram_loss"])[4] == np.float32(b.eval_cross_entropy)
    text = lm_report.report(config, straight)
    assert text.startswith("step 4:")
    for task in ("tts", "asr", "vc"):
        line = next(x for x in text.splitlines() if x.startswith(f"{task} "))
        loss = dict(logged[f"eval/{task}/loss"])[4]
        assert f"{loss:.4f}" in line and f"{baselines[task].eval_cross_entropy:.4f}" in line
    assert jax.device_count() == 8  # the mesh (2, 2, 2) really sharded the run
    assert os.path.isdir(straight / "checkpoints" / "4" / "data_iter")


# --- the continuous audio input (model.audio_input != "tokens") ---------------------------


def continuous(config, variant="continuous"):
    """`config` with the LM reading audio features (the model's key may not exist yet)."""
    from tests.tasks.conftest import FEATURE_DIM

    with config.unlocked():
        config.model.audio_input = variant
        config.model.audio_feature_dim = FEATURE_DIM  # the test shards' rows
    return config


@pytest.fixture(scope="module")
def feature_workdir(tmp_path_factory):
    """Token shards with per-frame features (the same codes as `token_workdir`'s)."""
    workdir = tmp_path_factory.mktemp("tokens_with_features")
    write_corpus(default_token_dir(str(workdir), CORPUS), features=True)
    return workdir


def test_continuous_audio_input_batches_carry_their_splits_features(feature_workdir):
    train_it, eval_it = make_iterators(continuous(task_config()), workdir=feature_workdir)
    assert isinstance(train_it, AudioFeatureBatches) and isinstance(train_it.get_state(), bytes)
    tokens_it, _ = make_iterators(task_config(), workdir=feature_workdir)  # tokens only
    for it, split in ((train_it, "train"), (eval_it, "validation")):
        rows = {r.tobytes() for r in it.bank.features.astype(np.float32)}
        assert all(utt.startswith(f"{split}-") for utt in it.bank.ids)  # its own split's
        for _ in range(2):
            b = next(it)
            assert AUDIO_FRAMES_KEY not in b
            feats, mask = b[AUDIO_FEATURES_KEY], b[AUDIO_MASK_KEY]
            assert feats.shape == (8, 128, FEATURE_DIM) and feats.dtype == np.float32
            assert mask.shape == (8, 128) and mask.dtype == np.int32 and mask.any()
            assert all(row.tobytes() in rows for row in feats[mask == 1])
            assert not feats[mask == 0].any()
            if split == "train":  # everything else is the tokens-only batch
                plain = next(tokens_it)
                assert set(b) == set(plain) | {AUDIO_FEATURES_KEY, AUDIO_MASK_KEY}
                for key, value in plain.items():
                    np.testing.assert_array_equal(b[key], value, err_msg=key)
    assert set(eval_it.reference_losses) == {"tts", "asr", "vc"}


def test_continuous_audio_input_iterator_state_restores_exactly(feature_workdir):
    config = continuous(task_config())
    it = TaskData(config, feature_workdir).iterator("train")
    next(it)
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    tasks_lib.clear_caches()  # as a new process: banks re-read, tasks re-registered
    again = TaskData(config, feature_workdir).iterator("train")
    again.set_state(state)
    for expected in want:
        got = next(again)
        assert set(got) == set(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("variant", ["continuous", "hybrid"])
def test_continuous_audio_input_needs_shards_with_features(token_workdir, variant):
    with pytest.raises(ValueError, match=f"{variant}' reads them: tokenize with data.token_features"):
        make_iterators(continuous(task_config(), variant), workdir=token_workdir)


def test_hybrid_input_reads_the_continuous_variants_batches(feature_workdir):
    """The same rows at the same (input) positions: only the model differs."""
    cont, _ = make_iterators(continuous(task_config()), workdir=feature_workdir)
    hybrid, _ = make_iterators(continuous(task_config(), "hybrid"), workdir=feature_workdir)
    for _ in range(2):
        a, b = next(cont), next(hybrid)
        assert set(a) == set(b) and b[AUDIO_MASK_KEY].any()
        for key, value in a.items():
            np.testing.assert_array_equal(b[key], value, err_msg=key)


def test_feature_rows_of_another_width_are_named_before_any_batch(feature_workdir):
    from tests.tasks.conftest import FEATURE_DIM

    config = continuous(task_config())
    with config.unlocked():
        config.model.audio_feature_dim = FEATURE_DIM + 1
    with pytest.raises(ValueError, match=rf"rows of {FEATURE_DIM} values, but model.audio_feature_dim="
                                         rf"{FEATURE_DIM + 1}: set model.audio_feature_dim={FEATURE_DIM}"):  # fmt: skip
        make_iterators(config, workdir=feature_workdir)
