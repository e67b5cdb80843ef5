"""Tokens -> train -> evaluate with the work dir on gs://.

Backend: the in-memory fake gs:// (tests/fake_gcs.py). Token shards + manifest and the
SentencePiece model are written to the bucket (ShardWriter, train_sentencepiece, as
launch.tokenize / launch.train_spm do with a gs:// work dir); the trainer reads them
through `gpa_jax.paths` (ArrayRecord shards and the model via the per-host cache) and its
periodic evaluation scores the bucket's validation split (per-task eval losses). The
first test keeps the run's own work dir local (a sweep run reading shared data); the
second puts the whole work dir in the bucket, Orbax checkpoints included (tensorstore
through the fake's JSON API server). Metrics go to a MemoryWriter: TensorBoard's event
writer is TensorFlow's GCS client, which the fake does not stand in for.
"""

import math
import os

import numpy as np

from gpa_jax import paths
from gpa_jax.tasks import spm
from gpa_jax.tasks.config import default_spm_model, default_token_dir
from gpa_jax.training import trainer
from gpa_jax.training.data_iter import make_iterators
from gpa_jax.training.metrics import MemoryWriter
from tests.tasks.conftest import SENTENCES, write_corpus
from tests.training.test_task_data import CORPUS, task_config
from tests.training.test_trainer import compile_cache  # noqa: F401  (autouse fixture)


def test_tokens_train_evaluate_from_gs(fake_gcs, tmp_path):
    workdir = f"{fake_gcs}/runs/gpa"
    token_dir = default_token_dir(workdir, CORPUS)
    spm_model = default_spm_model(workdir, CORPUS, 48)
    write_corpus(token_dir)
    spm.train_sentencepiece(SENTENCES, spm_model, vocab_size=48)
    assert paths.isfile(f"{token_dir}/manifest.json") and paths.isfile(spm_model)
    assert not os.path.exists(token_dir)  # nothing local pretends to be the bucket

    config = task_config("tasks.vocab.text=spm", "tasks.vocab.spm_vocab_size=48",
                         "train.num_steps=2")  # fmt: skip
    # The config's default paths, resolved against the gs:// work dir.
    train_it, eval_it = make_iterators(config, workdir=workdir)
    assert next(train_it)["decoder_target_tokens"].shape == (8, 128)
    assert set(eval_it.reference_losses) == {"tts", "asr", "vc"}

    # A run whose own work dir is local, reading the shared data on gs:// (as a sweep run).
    config = task_config("tasks.vocab.text=spm", "train.num_steps=2",
                         f"tasks.token_dir={token_dir}", f"tasks.vocab.spm_model={spm_model}")  # fmt: skip
    writer = MemoryWriter()
    result = trainer.train(config, tmp_path / "run", writer=writer, progress=False)
    assert result.step == 2
    for tag in ("eval/loss", "eval/tts/loss", "eval/asr/loss", "eval/vc/loss"):
        values = writer.series(tag)
        assert values and all(math.isfinite(v) for v in values.values()), tag


def test_whole_work_dir_on_gs_checkpoints_resume_and_restore(fake_gcs_with_tensorstore, tmp_path):
    """Backend: the fake gs:// for epath/fsspec AND for tensorstore (its JSON API server on
    localhost, tests/fake_gcs.py): tokens, SentencePiece model and the run's Orbax
    checkpoints all in the bucket. 2 steps, then a resumed run to 4, then a params-only
    restore (what the sampler and evaluation do) equal to the last saved state."""
    from gpa_jax.training import checkpoint as ckpt
    from tests.training.test_trainer import _params

    workdir = f"{fake_gcs_with_tensorstore}/runs/whole"
    write_corpus(default_token_dir(workdir, CORPUS))
    spm.train_sentencepiece(SENTENCES, default_spm_model(workdir, CORPUS, 48), vocab_size=48)
    extra = ("tasks.vocab.text=spm", "tasks.vocab.spm_vocab_size=48")

    first = trainer.train(task_config(*extra, "train.num_steps=2"), workdir,
                          writer=MemoryWriter(), progress=False)  # fmt: skip
    assert first.step == 2
    assert ckpt.saved_steps(ckpt.checkpoint_dir(workdir)) == [2]
    assert paths.isfile(f"{workdir}/checkpoints/2/commit_success.txt")  # Orbax's GCS marker
    assert not os.path.exists(workdir)  # nothing local pretends to be the bucket

    writer = MemoryWriter()
    second = trainer.train(task_config(*extra, "train.num_steps=4"), workdir, writer=writer,
                           progress=False)  # fmt: skip
    assert (second.start_step, second.step) == (2, 4)
    assert ckpt.saved_steps(ckpt.checkpoint_dir(workdir))[-1] == 4
    assert all(math.isfinite(v) for v in writer.series("eval/loss").values())
    params = _params(workdir, task_config(*extra, "train.num_steps=4"))
    assert params and all(np.all(np.isfinite(v)) for v in params.values())
