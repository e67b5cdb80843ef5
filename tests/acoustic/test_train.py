"""Training the acoustic stage: a tiny model overfits a batch; launch-style runs through the
LM trainer (Orbax checkpoints, resume) and the complete() API on the restored model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gpa_jax.acoustic import data, kind
from gpa_jax.acoustic.api import AcousticStage, latent_to_codes
from gpa_jax.acoustic.config import AcousticConfig
from gpa_jax.acoustic.model import AcousticModel
from gpa_jax.training import checkpoint as ckpt
from gpa_jax.training import trainer
from gpa_jax.training.metrics import MemoryWriter

from .conftest import CODEBOOK, N_Q
from .test_data import tiny_config


def fixed_batch(config, rows=8):
    it = data.DataIterator(data.make_dataset(config, "train", shuffle=True, batch_size=rows))
    return {k: jnp.asarray(v) for k, v in next(it).items()}


def overfit(model, batch, config, steps):
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, batch):
        def loss(m):
            sums = kind.batch_sums(m, batch, None, config)
            return sums["loss_sum"] / sums["weight_sum"], sums

        (value, sums), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        opt.update(model, grads)
        return value, sums

    losses = []
    for _ in range(steps):
        value, sums = step(model, opt, batch)
        losses.append(float(value))
    return losses, jax.device_get(sums)


def test_tiny_nar_model_overfits_a_batch(token_corpus):
    config = tiny_config(token_corpus[0])
    model = AcousticModel(AcousticConfig.from_config(config.model), rngs=nnx.Rngs(0))
    losses, sums = overfit(model, fixed_batch(config), config, 150)
    assert losses[-1] < 0.1 * losses[0], losses[::25]
    assert sums["correct_sum"] / sums["weight_sum"] > 0.97


def test_tiny_vocoder_overfits_a_batch(token_corpus):
    config = tiny_config(token_corpus[0], "model.variant=vocoder", "data.task_names=('latent',)")
    books = np.random.default_rng(0).standard_normal((N_Q, CODEBOOK, 8)).astype(np.float32)
    cfg = AcousticConfig.from_config(config.model)
    model = AcousticModel(cfg, rngs=nnx.Rngs(0), codebooks=books)
    losses, sums = overfit(model, fixed_batch(config), config, 150)
    assert losses[-1] < 0.1 * losses[0], losses[::25]
    assert sums["rel_l2_sum"] / sums["weight_sum"] < 0.1
    # Re-quantizing an exact latent gives its codes back (the codec-side helper), with
    # residual codebooks whose scale shrinks per layer as a trained RVQ's does.
    from gpa_jax.codec.rvq import ResidualVectorQuantizer

    books = books * (0.1 ** np.arange(N_Q))[:, None, None]

    class RVQOnly(nnx.Module):  # the part of the codec that latent_to_codes uses
        def __init__(self):
            self.quantizer = ResidualVectorQuantizer(
                dimension=8, n_q=N_Q, codebook_size=CODEBOOK, rngs=nnx.Rngs(0)
            )
            self.quantizer.embed.set_value(jnp.asarray(books))

    codes = np.random.default_rng(1).integers(0, CODEBOOK, (N_Q, 10))
    latent = sum(books[q][codes[q]] for q in range(N_Q))
    np.testing.assert_array_equal(latent_to_codes(RVQOnly(), latent), codes)


def test_launch_style_training_resumes_and_serves_complete(token_corpus, tmp_path):
    directory, written = token_corpus
    # Sharded over the 8 simulated devices: batch on (data, fsdp), heads on tensor.
    mesh = ("mesh.shape=(2, 2, 2)", "model.num_kv_heads=2")
    config = tiny_config(directory, "train.num_steps=3", *mesh)
    workdir = str(tmp_path / "nar")
    writer = MemoryWriter()
    result = trainer.train(config, workdir, writer=writer, progress=False)
    assert result.step == 3
    assert {"train/loss", "train/accuracy", "eval/loss"} <= set(result.train_metrics) | set(
        result.eval_metrics
    )
    assert any(k.startswith("train/rvq") for k in result.train_metrics)
    # Resume: a longer run continues from the checkpoint at step 3.
    longer = tiny_config(directory, "train.num_steps=5", *mesh)
    result = trainer.train(longer, workdir, writer=writer, progress=False)
    assert (result.start_step, result.step) == (3, 5)
    assert ckpt.make_manager(ckpt.checkpoint_dir(workdir), read_only=True).latest_step() == 5

    stage = AcousticStage.from_workdir(longer, workdir, nar_decoding="greedy")
    assert stage.variant == "nar" and stage.output == "codes"
    items = [v[2] for k, v in sorted(written["validation"].items())][:3]
    rvq1 = [c[0] for c in items]
    prompts = [items[(i + 1) % 3][:, :9] for i in range(3)]
    outs = stage.complete(rvq1, prompts)
    for out, tokens in zip(outs, rvq1, strict=True):
        assert out.shape == (N_Q, tokens.size) and out.dtype == np.int32
        np.testing.assert_array_equal(out[0], tokens)  # RVQ-1 is kept, layers 2..N filled
        assert out.min() >= 0 and out.max() < CODEBOOK
    # Batched with padding == one at a time.
    single = stage.complete(rvq1[1], prompts[1])
    np.testing.assert_array_equal(single, outs[1])
    with pytest.raises(ValueError, match="prompt_codes"):
        stage.complete(rvq1[0], prompts[0][:2])
    with pytest.raises(ValueError, match="outside"):
        stage.complete(rvq1[0] + CODEBOOK, prompts[0])


def test_trained_nar_follows_the_prompt_speaker(token_corpus):
    """After training, the filled layers follow the PROMPT's speaker: prompted by speaker
    X, layers 2..N match X's code pattern more often than another speaker's pattern."""
    from .conftest import speaker_offsets

    directory, written = token_corpus
    config = tiny_config(directory)
    model = AcousticModel(AcousticConfig.from_config(config.model), rngs=nnx.Rngs(0))
    it = data.DataIterator(data.make_dataset(config, "train", shuffle=True, batch_size=16))
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, batch):
        def loss(m):
            sums = kind.batch_sums(m, batch, None, config)
            return sums["loss_sum"] / sums["weight_sum"]

        opt.update(model, nnx.grad(loss)(model))

    for _ in range(250):
        step(model, opt, {k: jnp.asarray(v) for k, v in next(it).items()})
    stage = AcousticStage(model)
    offsets = speaker_offsets()
    train = written["train"]
    src = train["train-anna-0"][2][0]

    def pattern(s):
        return np.stack([(3 * q * src + offsets[s, q]) % CODEBOOK for q in range(1, N_Q)])

    speakers = {"ben": 1, "cleo": 2, "dan": 3}
    for who, s in speakers.items():
        out = stage.complete(src, train[f"train-{who}-3"][2][:, :16])
        own = np.mean(out[1:] == pattern(s))
        others = max(np.mean(out[1:] == pattern(o)) for o in speakers.values() if o != s)
        assert own > others + 0.2, (who, own, others)


CODEC_CONFIG = """
from gpa_jax.codec.config import codec_config


def get_config(arg=None):
    return codec_config(
        codec=dict(n_filters=4, dimension=8, lstm_layers=1, codebook_size=16, n_q=4),
        teacher=dict(kind="none"),
        loss=dict(adversarial=False),
    )
"""


def test_vocoder_trains_with_the_frozen_codec_codebooks(token_corpus, tmp_path):
    """The vocoder through the trainer: codebooks read from a codec checkpoint, frozen."""
    from gpa_jax.codec import train as codec_train
    from gpa_jax.config_utils import load_config

    spec = tmp_path / "codec_small.py"
    spec.write_text(CODEC_CONFIG)
    codec_state = codec_train.CodecState.create(load_config(str(spec)))
    codec_dir = str(tmp_path / "codec")
    codec_train.save_checkpoint(codec_train.checkpoint_manager(codec_dir), 7, codec_state, {})
    books = kind.codec_codebooks(codec_state.model)

    config = tiny_config(
        token_corpus[0], "model.variant=vocoder", "data.task_names=('latent',)",
        "train.num_steps=2", "train.eval_every=2", "train.checkpoint_every=2",
        f"codec.config={spec}", f"codec.checkpoint_dir={codec_dir}", "mesh.shape=(2, 2, 2)", "model.num_kv_heads=2",
    )  # fmt: skip
    workdir = str(tmp_path / "vocoder")
    result = trainer.train(config, workdir, writer=MemoryWriter(), progress=False)
    assert result.step == 2
    assert {"train/l1", "train/l2", "train/rel_l2", "train/latent/loss"} <= set(
        result.train_metrics
    )
    assert "train/accuracy" not in result.train_metrics
    stage = AcousticStage.from_workdir(config, workdir)
    np.testing.assert_array_equal(np.asarray(stage.model.codebooks[...]), books)  # frozen
    latent = stage.complete(np.arange(10) % CODEBOOK, np.zeros((N_Q, 5), np.int64))
    assert latent.shape == (10, 8) and latent.dtype == np.float32


@pytest.mark.slow
def test_the_stage_trains_from_the_batch_cache_as_from_its_task(token_corpus, tmp_path):
    """data.source='cache' (launch.cache_batches' cache, read with Grain) gives the NAR
    stage the batches and losses of its SeqIO task."""
    from gpa_jax.training.model_kinds import write_batch_cache

    directory, _ = token_corpus
    mesh = ("mesh.shape=(2, 2, 2)", "model.num_kv_heads=2")
    config = tiny_config(directory, "train.num_steps=3", *mesh)
    workdir = str(tmp_path / "cached")
    write_batch_cache(config, workdir)
    reference, cached = MemoryWriter(), MemoryWriter()
    trainer.train(config, str(tmp_path / "tasks"), writer=reference, progress=False)
    trainer.train(tiny_config(directory, "train.num_steps=3", "data.source=cache", *mesh),
                  workdir, writer=cached, progress=False)  # fmt: skip
    for tag in ("train/loss", "eval/loss"):
        assert cached.series(tag) == reference.series(tag), tag
