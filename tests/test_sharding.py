"""Logical-axis sharding on 8 simulated CPU devices: rules, mesh, golden specs, equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from gpa_jax import sharding
from gpa_jax.config_utils import load_config_file
from gpa_jax.models import (
    DEFAULT_SHARDING_RULES,
    LMConfig,
    create_sharded_model,
    lm_model_config,
    make_lm,
    mesh_config,
)
from gpa_jax.training.config import lm_config, optimizer_config
from tests.models.helpers import numpy_model
from tests.training.helpers import trainer_steps

RULES = DEFAULT_SHARDING_RULES


def test_rules_first_unused_mesh_axis_wins():
    # A kernel's 'embed' is fsdp-sharded ...
    assert sharding.logical_to_mesh_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
    # ... but an activation already spent fsdp on 'batch', so its 'embed' is replicated.
    assert sharding.logical_to_mesh_spec(("batch", "length", "embed"), RULES) == P(
        ("data", "fsdp"), None, None
    )
    assert sharding.logical_to_mesh_spec(("batch", "length", "vocab"), RULES) == P(
        ("data", "fsdp"), None, "tensor"
    )
    assert sharding.logical_to_mesh_spec(("layers", None, "head_dim"), RULES) == P(None, None, None)
    fallback = (("embed", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"))
    assert sharding.logical_to_mesh_spec(("mlp", "embed"), fallback) == P("tensor", "fsdp")
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_mesh_spec(("embd",), RULES)


def test_make_mesh_infers_and_validates():
    mesh = sharding.make_mesh(mesh_config((-1, 1, 1)))
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    mesh = sharding.make_mesh(mesh_config((2, -1, 2)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    one = sharding.make_mesh(mesh_config((1, 1, 1)), devices=jax.devices()[:1])
    assert one.devices.size == 1
    with pytest.raises(ValueError, match="needs 12 devices"):
        sharding.make_mesh(mesh_config((3, 2, 2)))
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.make_mesh(mesh_config((-1, -1, 1)))


def test_constraint_is_a_noop_outside_a_mesh():
    x = jnp.ones((4, 2, 8))
    assert sharding.with_logical_constraint(x, ("batch", "length", "embed"), RULES) is x


def _tiny_layer_specs(prefix: str, stacked: bool) -> dict[str, P]:
    lead = (None,) if stacked else ()
    per_param = {
        "attn.q_proj.kernel": ("fsdp", "tensor", None),
        "attn.k_proj.kernel": ("fsdp", "tensor", None),
        "attn.v_proj.kernel": ("fsdp", "tensor", None),
        "attn.o_proj.kernel": ("tensor", None, "fsdp"),
        "attn.q_norm.scale": (None,),
        "attn.k_norm.scale": (None,),
        "mlp.gate_proj.kernel": ("fsdp", "tensor"),
        "mlp.up_proj.kernel": ("fsdp", "tensor"),
        "mlp.down_proj.kernel": ("tensor", "fsdp"),
        "pre_attn_norm.scale": (None,),
        "pre_mlp_norm.scale": (None,),
    }
    return {f"{prefix}.{name}": P(*lead, *spec) for name, spec in per_param.items()}


@pytest.mark.parametrize("scan", [False, True])
def test_golden_partition_specs_gpa_tiny(scan):
    """Every gpa_tiny parameter's PartitionSpec under the default rules."""
    config = load_config_file("configs/gpa_tiny.py")
    assert config.model.scan_layers is False  # the shipped CPU config unrolls
    config.model.scan_layers = scan
    _, state = sharding.abstract_state(lambda: make_lm(config, rngs=nnx.Rngs(0)))
    expected = {
        "embedder.embedding": P("tensor", "fsdp"),
        "decoder.final_norm.scale": P(None),
        "ctc_proj.kernel": P("fsdp", None),  # the auxiliary ASR CTC's head (ctc_weight > 0)
    }
    if scan:
        expected.update(_tiny_layer_specs("decoder.layers", stacked=True))
    else:
        for i in range(6):
            expected.update(_tiny_layer_specs(f"decoder.layers.{i}", stacked=False))
    assert sharding.partition_specs(state, config.sharding_rules) == expected


def test_indivisible_dimension_is_reported_by_name():
    cfg = LMConfig(num_heads=4, num_kv_heads=1)  # kv_heads=1 cannot split over tensor=2
    _, state = sharding.abstract_state(lambda: make_lm(cfg, rngs=nnx.Rngs(0)))
    mesh = sharding.make_mesh(mesh_config((2, 2, 2)))
    with pytest.raises(ValueError, match=r"k_proj\.kernel.*kv_heads"):
        sharding.state_shardings(state, mesh, RULES)


SMALL = dict(
    vocab_size=64,
    num_layers=2,
    embed_dim=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    dtype="float32",
)


def test_create_sharded_model_and_orbax_targets(tmp_path):
    # One scanned layer: the init's RNG dominates the compile time on XLA:CPU.
    config = lm_config(
        model=lm_model_config(**dict(SMALL, num_layers=1)), mesh=mesh_config((2, 2, 2))
    )
    mesh = sharding.make_mesh(config.mesh)
    model = create_sharded_model(config, mesh, rngs=nnx.Rngs(3))
    kernel = model.decoder.layers.mlp.gate_proj.kernel[...]
    assert kernel.sharding.spec == P(None, "fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (1, 16, 32)
    assert model.embedder.embedding[...].sharding.spec == P("tensor", "fsdp")

    # Abstract state + shardings as Orbax restore targets: a save/restore round trip.
    graphdef, abstract = sharding.abstract_state(lambda: make_lm(config, rngs=nnx.Rngs(0)))
    targets = sharding.abstract_with_shardings(
        abstract, sharding.state_shardings(abstract, mesh, config.sharding_rules)
    )
    target_kernel = targets["decoder"]["layers"]["mlp"]["gate_proj"]["kernel"].get_value()
    assert isinstance(target_kernel, jax.ShapeDtypeStruct)
    assert target_kernel.sharding.spec == P(None, "fsdp", "tensor")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", nnx.state(model))
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "ckpt", targets)
    restored_kernel = restored["decoder"]["layers"]["mlp"]["gate_proj"]["kernel"][...]
    assert restored_kernel.sharding.spec == P(None, "fsdp", "tensor")
    np.testing.assert_array_equal(restored_kernel, kernel)


def _batch(batch_size: int, length: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    toks = rng.integers(1, vocab, (batch_size, length + 1)).astype(np.int32)
    half = length // 2
    seg = np.array([[1] * half + [2] * (half - 2) + [0, 0]] * batch_size, np.int32)
    pos = np.array([list(range(half)) + list(range(half - 2)) + [0, 0]] * batch_size, np.int32)
    prefix = np.zeros((batch_size, length), np.int32)
    prefix[:, :3] = 1
    prefix[:, half : half + 2] = 1
    weights = ((seg > 0) & (prefix == 0)).astype(np.int32)
    return dict(
        decoder_input_tokens=toks[:, :-1],
        decoder_target_tokens=toks[:, 1:],
        decoder_segment_ids=seg,
        decoder_positions=pos,
        decoder_loss_weights=weights,
        decoder_prefix_mask=prefix,
    )


def test_train_step_is_the_same_on_one_device_and_a_2x2x2_mesh():
    """One step (scanned layers, full remat, prefix attention, float32) on 1 device and on
    data=2 x fsdp=2 x tensor=2 gives the same metrics and params to 1e-5: only the order
    of the sharded reductions differs. Adam's first update is lr * g / (|g| + eps), which
    amplifies rounding of near-zero gradients by lr / eps (gradients agree to ~1e-8 here);
    eps=1e-4 instead of 1e-8 bounds that so 1e-5 holds for every element."""
    model_cfg = dict(SMALL, scan_layers=True, remat_policy="full", prefix_bidirectional=True)
    config = lm_config(model=lm_model_config(**model_cfg))
    config.optimizer = optimizer_config(
        learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=1e-4
    )
    batch = _batch(4, 16, SMALL["vocab_size"])
    results = []
    for shape, devices in (((1, 1, 1), jax.devices()[:1]), ((2, 2, 2), jax.devices())):
        mesh = sharding.make_mesh(mesh_config(shape), devices=devices)
        model = numpy_model(LMConfig.from_config(config.model), sharding_rules=RULES)
        graphdef, state, step, _ = trainer_steps(config, model, mesh)
        state, metrics = step(state, batch)
        model, _ = nnx.merge(graphdef, state)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        results.append((jax.device_get(metrics), jax.device_get(params), model))
    (m1, p1, _), (m8, p8, model8) = results
    for key in ("loss", "correct_sum", "weight_sum", "grad_norm"):
        np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), p1, p8)
    # The step's out_shardings keep the updated params where the rules put them.
    up = model8.decoder.layers.mlp.up_proj.kernel[...]
    assert up.sharding.spec == P(None, "fsdp", "tensor")
    assert not jax.tree.all(jax.tree.map(np.array_equal, p1, _initial_params(config)))


def _initial_params(config):
    return nnx.to_pure_dict(nnx.state(numpy_model(LMConfig.from_config(config.model)), nnx.Param))
