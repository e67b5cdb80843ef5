"""Loss weighting, z-loss, optimizer settings, and overfitting one batch with the
trainer's step (`trainer.make_step_fns`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gpa_jax import sharding
from gpa_jax.models import LMConfig, lm_model_config, mesh_config
from gpa_jax.training.config import lm_config, optimizer_config
from gpa_jax.training.train_step import cross_entropy_loss, make_optimizer, make_schedule
from tests.models.helpers import numpy_model
from tests.training.helpers import trainer_steps

MODEL = dict(
    vocab_size=64,
    num_layers=1,
    embed_dim=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    dtype="float32",
    scan_layers=False,
)


def _batch(seed=0, batch_size=4, length=16, vocab=64):
    rng = np.random.default_rng(seed)
    toks = rng.integers(1, vocab, (batch_size, length + 1)).astype(np.int32)
    weights = np.zeros((batch_size, length), np.int32)
    weights[:, length // 2 :] = 1  # loss only on the "output" half
    return dict(
        decoder_input_tokens=jnp.asarray(toks[:, :-1]),
        decoder_target_tokens=jnp.asarray(toks[:, 1:]),
        decoder_segment_ids=jnp.ones((batch_size, length), jnp.int32),
        decoder_positions=jnp.broadcast_to(
            jnp.arange(length, dtype=jnp.int32), (batch_size, length)
        ),
        decoder_loss_weights=jnp.asarray(weights),
    )


def test_cross_entropy_matches_reference_and_ignores_masked_targets():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((2, 5, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 5)))
    weights = jnp.asarray([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0]])
    loss, aux = cross_entropy_loss(logits, targets, weights)
    logp = np.asarray(jax.nn.log_softmax(logits))
    nll = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    w = np.asarray(weights)
    assert float(loss) == pytest.approx((nll * w).sum() / w.sum(), rel=1e-6)
    assert float(aux["denominator"]) == 5
    correct = np.argmax(np.asarray(logits), -1) == np.asarray(targets)
    assert float(aux["accuracy"]) == pytest.approx((correct * w).sum() / w.sum())
    # A target under weight 0 does not matter.
    other = targets.at[0, 2].set((targets[0, 2] + 1) % 7)
    assert float(cross_entropy_loss(logits, other, weights)[0]) == float(loss)
    # All-zero weights: loss 0, no NaN.
    assert float(cross_entropy_loss(logits, targets, jnp.zeros_like(weights))[0]) == 0.0


def test_z_loss_adds_the_expected_term():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.standard_normal((2, 4, 9)) * 3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 9, (2, 4)))
    weights = jnp.asarray([[1, 1, 1, 0], [1, 0, 1, 1]])
    base, _ = cross_entropy_loss(logits, targets, weights, z_loss=0.0)
    with_z, aux = cross_entropy_loss(logits, targets, weights, z_loss=1e-2)
    lse = np.asarray(jax.nn.logsumexp(logits, -1))
    w = np.asarray(weights)
    expected = 1e-2 * (lse**2 * w).sum() / w.sum()
    assert float(with_z - base) == pytest.approx(expected, rel=1e-5)
    assert float(aux["z_loss"]) == pytest.approx(expected, rel=1e-5)


def _one_device_mesh():
    return sharding.make_mesh(mesh_config((1, 1, 1)), devices=jax.devices()[:1])


def test_step_loss_masks_non_output_positions():
    config = lm_config(model=lm_model_config(**MODEL))
    config.optimizer = optimizer_config()
    model = numpy_model(LMConfig.from_config(config.model))
    _, state, _, eval_step = trainer_steps(config, model, _one_device_mesh())
    batch = _batch()

    def loss(b):
        sums = eval_step(state, b)
        return float(sums["loss_sum"] / sums["weight_sum"])

    base = loss(batch)
    masked = dict(batch, decoder_target_tokens=batch["decoder_target_tokens"].at[:, 3].add(1))
    assert loss(masked) == base  # position 3 has weight 0
    counted = dict(batch, decoder_target_tokens=batch["decoder_target_tokens"].at[:, 12].add(1))
    assert loss(counted) != base


def test_optimizer_schedule_clipping_and_decay_mask():
    config = lm_config(model=lm_model_config(**MODEL))
    config.optimizer = optimizer_config(
        learning_rate=1.0, warmup_steps=2, total_steps=10, weight_decay=0.5, clip_norm=1.0
    )
    tx = make_optimizer(config)
    params = {"kernel": jnp.ones((2, 2)), "norm": {"scale": jnp.ones((2, 2))}}
    state = tx.init(params)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    # Warmup over 2 updates: the first already uses lr 1/2, the second the peak 1.0
    # (no update is spent at lr 0). Zero gradients: the update is weight decay alone,
    # -lr * 0.5 * param, on the kernel only.
    updates, state = tx.update(zero_grads, state, params)
    np.testing.assert_allclose(updates["kernel"], -0.5 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["norm"]["scale"], 0.0)
    updates, _ = tx.update(zero_grads, state, params)
    np.testing.assert_allclose(updates["kernel"], -1.0 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    schedule = make_schedule(config)
    lrs = [float(schedule(k)) for k in range(10)]
    assert lrs[:2] == [0.5, 1.0] and all(a > b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lrs[-1] == pytest.approx(0.1)  # end_lr_fraction of the peak at update total_steps
    # Global-norm clipping: a huge gradient is rescaled to norm clip_norm before Adam.
    clip = optax.clip_by_global_norm(config.optimizer.clip_norm)
    big = {"kernel": jnp.full((2, 2), 100.0)}
    clipped, _ = clip.update(big, clip.init(big))
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-5)


def test_overfits_one_batch():
    config = lm_config(model=lm_model_config(**MODEL))
    config.optimizer = optimizer_config(learning_rate=1e-2, warmup_steps=3, total_steps=30)
    model = numpy_model(LMConfig.from_config(config.model))
    graphdef, state, step, _ = trainer_steps(config, model, _one_device_mesh())
    batch = _batch()
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.3 * losses[0], losses
    _, optimizer = nnx.merge(graphdef, state)
    assert int(optimizer.step[...]) == 30
