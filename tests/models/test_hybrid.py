"""The hybrid audio-input variant (WHISPER-GPT): a causal mel encoding fused with the token
embedding at every position, a learned null row where no mel is recorded."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpa_jax import sharding
from gpa_jax.models import LMConfig, lm_model_config, mesh_config
from gpa_jax.training.config import lm_config, optimizer_config
from tests.models.helpers import numpy_model
from tests.training.helpers import trainer_steps

CFG = LMConfig(
    vocab_size=64, num_layers=2, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16,
    mlp_dim=64, rope_theta=10_000.0, dtype="float32", scan_layers=False,
    audio_input="hybrid", audio_encoder_layers=1, audio_feature_dim=6, init_std=1.0,
    mel_dropout=0.0,
)  # fmt: skip
B, L, F = 2, 16, 6

# Two packed examples per row: [tag, delim, audio x4, delim, text x1] + [tag, delim, audio
# x3, delim, text...]; recorded rows are the mask's ones.
SEGMENTS = np.array([[1] * 8 + [2] * 8] * B, np.int32)
POSITIONS = np.concatenate([np.arange(8), np.arange(8)])[None].repeat(B, 0).astype(np.int32)
MASK = np.array([[0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]] * B, np.int32)


def inputs(seed=0, batch=B):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, (batch, L)).astype(np.int32)
    features = rng.standard_normal((batch, L, F)).astype(np.float32)
    return tokens, features


@nnx.jit
def forward(model, tokens, features, mask):
    return model(tokens, SEGMENTS, POSITIONS, None, audio_features=features, audio_mask=mask)


def _diff(a, b):
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


@pytest.mark.parametrize("encoder_layers", [1, 0])
def test_mel_of_frame_t_changes_no_logit_before_t_nor_another_example(encoder_layers):
    model = numpy_model(dataclasses.replace(CFG, audio_encoder_layers=encoder_layers))
    tokens, features = inputs()
    base = forward(model, tokens, features, MASK)
    for t in (2, 4, 5, 11):
        edited = features.copy()
        edited[:, t] += 3.0
        changed = forward(model, tokens, edited, MASK)
        end = 8 if t < 8 else L
        np.testing.assert_allclose(changed[:, :t], base[:, :t], atol=1e-5, err_msg=f"t={t}")
        np.testing.assert_allclose(changed[:, end:], base[:, end:], atol=1e-5, err_msg=f"t={t}")
        assert _diff(changed[:, t:end], base[:, t:end]) > 1e-3, t
        # The row's own position already reads it.
        assert _diff(changed[:, t], base[:, t]) > 1e-3, t


def test_rows_outside_the_mask_are_never_read_and_tokens_always_are():
    model = numpy_model(CFG)
    tokens, features = inputs()
    base = forward(model, tokens, features, MASK)
    noise = np.where(MASK[..., None] > 0, features, features + 5.0)
    np.testing.assert_allclose(forward(model, tokens, noise, MASK), base, atol=1e-5)
    # Unlike the continuous variant, the codec ids at recorded positions are read too.
    other = np.where(MASK > 0, (tokens + 7) % CFG.vocab_size, tokens)
    assert _diff(forward(model, other, features, MASK)[:, 2], base[:, 2]) > 1e-3


def test_without_recorded_rows_every_position_reads_the_null_row():
    """No mask anywhere == the decode-time input (fusion with the null row), and the null
    row is a trained parameter that the input depends on."""
    model = numpy_model(CFG)
    tokens, features = inputs()
    empty = np.zeros_like(MASK)
    x = model.embed(tokens, audio_features=features, audio_mask=empty,
                    segment_ids=SEGMENTS, positions=POSITIONS)  # fmt: skip
    np.testing.assert_allclose(x, model.fusion(model.embedder(tokens), None, None), atol=1e-6)
    model.fusion.null_mel[...] = model.fusion.null_mel[...] + 1.0
    moved = model.embed(tokens, audio_features=features, audio_mask=empty,
                        segment_ids=SEGMENTS, positions=POSITIONS)  # fmt: skip
    assert _diff(moved, x) > 1e-3


def test_missing_features_are_named_and_bad_values_rejected():
    model = numpy_model(CFG)
    tokens, _ = inputs()
    with pytest.raises(ValueError, match="hybrid.*decoder_audio_features"):
        model(tokens)
    with pytest.raises(ValueError, match="mel_dropout=1.0 must be in"):
        dataclasses.replace(CFG, mel_dropout=1.0)
    with pytest.raises(ValueError, match="mel_dropout=-0.1 must be in"):
        dataclasses.replace(CFG, mel_dropout=-0.1)
    with pytest.raises(ValueError, match="'whisper'.*hybrid"):
        dataclasses.replace(CFG, audio_input="whisper")


def test_one_encoder_and_every_part_trains():
    model = numpy_model(CFG)
    # The continuous variant's encoder, causal; no second encoder.
    encoders = [p for p, _ in nnx.iter_graph(model) if p and "encoder" in str(p[-1])]
    assert encoders == [("audio_encoder",)] and model.audio_encoder.causal
    tokens, features = inputs()

    def loss(m):
        logits = m(tokens, SEGMENTS, POSITIONS, None, audio_features=features, audio_mask=MASK)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = nnx.grad(loss)(model)
    for part in (grads.audio_encoder, grads.fusion):
        leaves = jax.tree.leaves(nnx.state(part, nnx.Param))
        assert leaves and all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


def test_continuous_encoder_is_unchanged_by_the_causal_option():
    """The centred convolution still reads t+1 (the continuous variant), the causal one not."""
    from gpa_jax.models.audio_encoder import _neighbour_mask, _neighbours

    x = jnp.arange(5, dtype=jnp.float32)[None, :, None]
    mask = jnp.ones((1, 5), bool)
    seg = jnp.ones((1, 5), jnp.int32)
    centred = _neighbours(x, _neighbour_mask(mask, seg), causal=False)[0, 2, :, 0]
    causal = _neighbours(x, _neighbour_mask(mask, seg, True), causal=True)[0, 2, :, 0]
    np.testing.assert_array_equal(centred, [1, 2, 3])
    np.testing.assert_array_equal(causal, [0, 1, 2])
    # At an example's first row the causal window reads nothing before it.
    first = _neighbours(x, _neighbour_mask(mask, seg, True), causal=True)[0, 0, :, 0]
    np.testing.assert_array_equal(first, [0, 0, 0])


# --- mel dropout ----------------------------------------------------------------------------


def test_mel_dropout_only_in_training_and_only_on_recorded_rows():
    model = numpy_model(dataclasses.replace(CFG, mel_dropout=0.5))
    tokens, features = inputs(batch=8)
    seg = np.tile(SEGMENTS[:1], (8, 1))
    pos = np.tile(POSITIONS[:1], (8, 1))
    mask = np.tile(MASK[:1], (8, 1))
    kw = dict(audio_features=features, audio_mask=mask, segment_ids=seg, positions=pos)
    clean = model.embed(tokens, **kw)
    # Deterministic forward passes draw nothing: no key, same logits.
    det = model(tokens, seg, pos, None, audio_features=features, audio_mask=mask)
    det2 = model(tokens, seg, pos, None, audio_features=features, audio_mask=mask,
                 deterministic=True, rngs=jax.random.key(3))  # fmt: skip
    np.testing.assert_array_equal(det, det2)
    with pytest.raises(ValueError, match="needs rngs"):
        model(tokens, seg, pos, None, audio_features=features, audio_mask=mask,
              deterministic=False)  # fmt: skip
    dropped = model.embed(tokens, mel_dropout_key=jax.random.key(0), **kw)
    null = np.asarray(model.fusion(model.embedder(tokens), None, None))
    differs = np.abs(np.asarray(dropped) - np.asarray(clean)).max(-1) > 1e-5
    # Only recorded rows (and, through the causal encoder, later recorded rows of the same
    # example) change; text / control positions never do.
    assert not differs[mask == 0].any()
    is_null = np.abs(np.asarray(dropped) - null).max(-1) < 1e-5
    dropped_rows = is_null & (mask > 0)
    frac = dropped_rows.sum() / (mask > 0).sum()
    assert 0.25 < frac < 0.75, frac
    # The training forward applies it; another key drops other rows.
    train = model(tokens, seg, pos, None, audio_features=features, audio_mask=mask,
                  deterministic=False, rngs=jax.random.key(0))  # fmt: skip
    assert _diff(train, det) > 1e-3
    other = model.embed(tokens, mel_dropout_key=jax.random.key(1), **kw)
    assert _diff(other, dropped) > 1e-3


def test_mel_dropout_key_comes_through_the_train_step():
    """The hybrid LM with mel_dropout > 0 and dropout_rate 0 still gets a key per step
    (needs_train_rng), so two steps of the same batch see different dropped rows; with
    mel_dropout 0 the step is deterministic."""
    from gpa_jax.training.model_kinds import needs_train_rng

    base = _config(mel_dropout=0.5)
    assert needs_train_rng(base)
    assert not needs_train_rng(_config(mel_dropout=0.0))
    assert not needs_train_rng(_config(audio_input="continuous", mel_dropout=0.5))
    assert needs_train_rng(_config(audio_input="tokens", dropout_rate=0.1))
    batch = _batch()
    losses = {}
    for mel in (0.5, 0.0):
        config = _config(mel_dropout=mel, num_layers=1, scan_layers=False)
        config.optimizer = optimizer_config(learning_rate=0.0, warmup_steps=0, total_steps=10)
        mesh = sharding.make_mesh(mesh_config((1, 1, 1)), devices=jax.devices()[:1])
        model = numpy_model(LMConfig.from_config(config.model))
        _, state, step, _ = trainer_steps(config, model, mesh)
        losses[mel] = []
        for _ in range(2):  # learning rate 0: the same params both steps
            state, metrics = step(state, batch)
            losses[mel].append(float(metrics["loss"]))
    assert losses[0.5][0] != losses[0.5][1]
    assert losses[0.0][0] == losses[0.0][1]


# --- sharded training -----------------------------------------------------------------------

SMALL = dict(
    vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
    mlp_dim=64, rope_theta=10_000.0, dtype="float32", audio_input="hybrid",
    audio_encoder_layers=1, audio_feature_dim=F, scan_layers=True, max_len=L,
)  # fmt: skip


def _config(**overrides):
    config = lm_config(model=lm_model_config(**{**SMALL, **overrides}))
    config.optimizer = optimizer_config(
        learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=1e-4
    )
    return config


def _batch(rows=8):
    tokens, features = inputs(seed=5, batch=rows)
    targets = np.roll(tokens, -1, axis=1)
    weights = (MASK == 0) & (np.arange(L) % 8 >= 6)
    return dict(
        decoder_input_tokens=tokens,
        decoder_target_tokens=targets,
        decoder_segment_ids=np.tile(SEGMENTS[:1], (rows, 1)),
        decoder_positions=np.tile(POSITIONS[:1], (rows, 1)),
        decoder_loss_weights=np.tile(weights[:1], (rows, 1)).astype(np.int32),
        decoder_audio_features=features,
        decoder_audio_mask=np.tile(MASK[:1], (rows, 1)),
    )


def test_train_step_on_8_devices_with_sharded_params_equals_one_device():
    config = _config(mel_dropout=0.0)
    rules = config.sharding_rules
    batch = _batch()
    results = []
    for shape, devices in (((1, 1, 1), jax.devices()[:1]), ((2, 2, 2), jax.devices()[:8])):
        mesh = sharding.make_mesh(mesh_config(shape), devices=devices)
        model = numpy_model(LMConfig.from_config(config.model), sharding_rules=rules)
        graphdef, state, step, _ = trainer_steps(config, model, mesh)
        state, metrics = step(state, batch)
        model, _ = nnx.merge(graphdef, state)
        params = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        results.append((jax.device_get(metrics), params, model))
    (m1, p1, _), (m8, p8, model8) = results
    assert np.isfinite(m1["loss"]) and m1["grad_norm"] > 0
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), p1, p8)
    # The fusion's params are sharded by the rules like the LM's.
    kernel = model8.fusion.proj.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
    assert len(kernel.sharding.device_set) == 8
    before = nnx.to_pure_dict(nnx.state(numpy_model(LMConfig.from_config(config.model)), nnx.Param))
    assert not np.allclose(before["fusion"]["null_mel"], p8["fusion"]["null_mel"])


# --- KV-cache decoding ----------------------------------------------------------------------


@pytest.mark.parametrize("scan", [False, True])
def test_cache_decode_equals_full_recompute(scan):
    """Prefill reads the prompt's rows, each decode step the null row: the logits equal
    one forward pass over prompt + generated tokens with no rows past the prompt."""
    model = numpy_model(dataclasses.replace(CFG, scan_layers=scan, prefix_bidirectional=False))
    tokens, features = inputs(seed=2)
    P, steps = 8, 6
    mask = np.zeros((B, L), np.int32)
    mask[:, 2:7] = 1
    seg = np.ones((B, P), np.int32)
    pos = np.arange(P, dtype=np.int32)[None].repeat(B, 0)
    prefill = nnx.jit(lambda m: m.prefill(tokens[:, :P], seg, pos, None, P + steps,
                                          audio_features=features[:, :P], audio_mask=mask[:, :P]))
    step = nnx.jit(lambda m, tok, i, cache: m.decode_step(
        tok, jnp.full((B, 1), i, jnp.int32),
        jnp.broadcast_to(jnp.arange(P + steps) <= i, (B, P + steps)), cache, i))  # fmt: skip
    hidden, cache = prefill(model)
    got = [model.logits(hidden)]
    for i in range(steps):
        logits, cache = step(model, tokens[:, P + i : P + i + 1], jnp.asarray(P + i, jnp.int32), cache)
        got.append(logits)
    got = jnp.concatenate(got, axis=1)
    n = P + steps
    full = model(tokens[:, :n], np.ones((B, n), np.int32), None, None,
                 audio_features=features[:, :n], audio_mask=mask[:, :n])  # fmt: skip
    np.testing.assert_allclose(got, full, atol=2e-4)
    # A decode position never reads a row, even when the batch holds one there.
    recorded = np.where(np.arange(n) >= P, 1, mask[:, :n]).astype(np.int32)
    with_rows = model(tokens[:, :n], np.ones((B, n), np.int32), None, None,
                      audio_features=features[:, :n], audio_mask=recorded)  # fmt: skip
    assert _diff(with_rows[:, P:], got[:, P:]) > 1e-3
