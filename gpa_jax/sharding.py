"""Mesh construction and logical-axis sharding (MaxText's pattern, for Flax NNX).

Every parameter carries logical axis names in its `out_sharding` metadata (attached with
`nnx.with_partitioning(..., eager_sharding=False)` in `gpa_jax.models.layers`), and the
model constrains major activations with the same names through `with_logical_constraint`.
The config's `sharding_rules` table maps logical names to mesh axes, so changing the
parallelism is a config change only:

    mesh = make_mesh(config.mesh)
    graphdef, abstract = abstract_state(lambda: make_lm(config, rngs=nnx.Rngs(0)))
    shardings = state_shardings(abstract, mesh, config.sharding_rules)   # jit in/out
    targets = abstract_with_shardings(abstract, shardings)               # Orbax restore
    model = create_sharded(lambda: make_lm(config, rngs=nnx.Rngs(config.seed)), mesh,
                           config.sharding_rules)

Activation constraints read the mesh from JAX's context (`jax.set_mesh(mesh)`), so run
sharded code inside `with jax.set_mesh(mesh):`; outside a mesh they are no-ops and the
same model runs unsharded on one device. This module names no model: the LM's own
helpers on top of it (`create_sharded_model`, `count_params`) live in `gpa_jax.models`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, Any], ...]
LogicalAxes = Sequence[str | None]


# --- rules ------------------------------------------------------------------------------


def normalize_rules(rules: Sequence[Sequence[Any]] | None) -> Rules | None:
    """Rules as a hashable tuple of (name, str | tuple[str, ...] | None) pairs.

    ConfigDicts and command-line overrides may hand lists; models keep rules as static
    (hashable) attributes, so everything is turned into tuples here.
    """
    if rules is None:
        return None
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"sharding rule {rule!r} must be a (logical_axis, mesh_axes) pair")
        name, axes = rule
        if isinstance(axes, list | tuple):
            axes = tuple(axes)
        out.append((str(name), axes))
    return tuple(out)


def logical_to_mesh_spec(
    logical_axes: LogicalAxes, rules: Sequence[Sequence[Any]]
) -> PartitionSpec:
    """Maps one array's logical axis names to a PartitionSpec.

    For each dimension, the first rule for its name whose mesh axes are not yet used by an
    earlier dimension wins; a rule mapping to None replicates; a name with rules that are
    all taken is replicated. A name with no rule at all is an error (it is almost always
    a typo, or a new axis that needs a rule in the config).
    """
    rules = normalize_rules(rules) or ()
    known = {name for name, _ in rules}
    used: set[str] = set()
    spec: list[Any] = []
    for name in logical_axes:
        if name is None:
            spec.append(None)
            continue
        if name not in known:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(known)}")
        chosen: Any = None
        for rule_name, mesh_axes in rules:
            if rule_name != name:
                continue
            if mesh_axes is None:
                break
            axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
            if used.intersection(axes):
                continue
            used.update(axes)
            chosen = axes[0] if len(axes) == 1 else axes
            break
        spec.append(chosen)
    return PartitionSpec(*spec)


def with_logical_constraint(
    x: jax.Array, logical_axes: LogicalAxes, rules: Sequence[Sequence[Any]] | None
) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op without rules or a mesh context."""
    if rules is None:
        return x
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    if len(logical_axes) != x.ndim:
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {x.shape}")
    spec = logical_to_mesh_spec(logical_axes, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


# --- mesh -------------------------------------------------------------------------------


def _infer_shape(shape: Sequence[int], num_devices: int, what: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if sum(s == -1 for s in shape) > 1:
        raise ValueError(f"{what} {shape}: at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"{what} {shape}: {num_devices} devices not divisible by {known}")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f"{what} {shape} needs {math.prod(shape)} devices, have {num_devices}")
    return shape


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) Mesh from `config.mesh`.

    `mesh.shape` is the per-slice (ICI) shape with at most one -1 (inferred from the
    device count). With `mesh.dcn_shape` product > 1 the devices span several slices
    (TPU multi-slice, or GPU hosts over DCN/IB) and the mesh comes from
    `mesh_utils.create_hybrid_device_mesh`, which keeps each ICI group inside one slice
    and lays the dcn factor over slices; the final axis sizes are shape * dcn_shape.
    Put only data parallelism (or fsdp, for very large models) on DCN: it carries one
    gradient reduction per step, while tensor parallelism needs ICI bandwidth.
    All axes are `AxisType.Auto` (sharding propagation + explicit constraints).
    """
    axes = tuple(mesh_config.axes)
    devices = list(devices) if devices is not None else jax.devices()
    dcn_shape = tuple(int(s) for s in getattr(mesh_config, "dcn_shape", (1,) * len(axes)))
    if len(mesh_config.shape) != len(axes) or len(dcn_shape) != len(axes):
        raise ValueError(f"mesh shape/dcn_shape must have one entry per axis {axes}")
    num_slices = math.prod(dcn_shape)
    if len(devices) % num_slices:
        raise ValueError(f"{len(devices)} devices do not split into {num_slices} slices")
    ici_shape = _infer_shape(mesh_config.shape, len(devices) // num_slices, "mesh.shape")
    if num_slices > 1:
        device_array = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
    elif len(devices) == 1:
        device_array = np.asarray(devices).reshape(ici_shape)
    else:
        device_array = mesh_utils.create_device_mesh(ici_shape, devices)
    return Mesh(device_array, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


# --- abstract state and shardings ---------------------------------------------------------


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def abstract_state(factory: Callable[[], Any]) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of ShapeDtypeStructs) of what `factory` builds; nothing allocated."""
    abstract = nnx.eval_shape(factory)
    return nnx.split(abstract)


def _variable_spec(
    var: nnx.Variable, mesh: Mesh, rules: Rules, path: tuple[Any, ...]
) -> PartitionSpec:
    names = var.get_metadata().get("out_sharding")
    shape = tuple(var.get_value().shape)
    if not names:
        return PartitionSpec()
    if len(names) != len(shape):
        raise ValueError(f"{_path_str(path)}: logical axes {names} do not match shape {shape}")
    spec = logical_to_mesh_spec(names, rules)
    for dim, axes in zip(shape, spec, strict=True):
        if axes is None:
            continue
        size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
        if dim % size:
            raise ValueError(
                f"{_path_str(path)}: dimension {dim} (logical axes {names}) is not divisible "
                f"by mesh axes {axes} of size {size}; change the shape, the mesh or the "
                "sharding_rules"
            )
    return spec


def _path_str(path: tuple[Any, ...]) -> str:
    return ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[Sequence[Any]]) -> Any:
    """A pytree like `state` holding NamedShardings (inside the same Variables).

    Usable directly as jit in_shardings/out_shardings for `state`. Variables without
    logical names (e.g. optimizer step counters) are replicated. Raises if a sharded
    dimension does not divide by its mesh axes, naming the parameter.
    """
    rules = normalize_rules(rules)

    def one(path, leaf):
        if _is_variable(leaf):
            return leaf.replace(NamedSharding(mesh, _variable_spec(leaf, mesh, rules, path)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    """`state` as ShapeDtypeStructs carrying `shardings`: Orbax restore targets."""

    def one(leaf, sharding):
        if _is_variable(leaf):
            value = leaf.get_value()
            return leaf.replace(
                jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding.get_value())
            )
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree.map(one, state, shardings, is_leaf=_is_variable)


def shard_state(state: Any, mesh: Mesh, rules: Sequence[Sequence[Any]]) -> Any:
    """Places an existing (e.g. host or restored) state on `mesh` per the rules."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


def partition_specs(state: Any, rules: Sequence[Sequence[Any]]) -> dict[str, PartitionSpec]:
    """{'dotted.param.path': PartitionSpec} for every Variable in `state` (for tests/logs)."""
    rules = normalize_rules(rules)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)[0]:
        names = leaf.get_metadata().get("out_sharding") if _is_variable(leaf) else None
        out[_path_str(path)] = logical_to_mesh_spec(names, rules) if names else PartitionSpec()
    return out


def create_sharded(factory: Callable[[], Any], mesh: Mesh, rules: Sequence[Sequence[Any]]) -> Any:
    """Builds `factory()` directly sharded: init runs under jit with out_shardings.

    No full copy ever lives on one device (MaxText's pattern), which is what lets a model
    larger than one accelerator's memory be initialised. `factory` must be deterministic
    (take its randomness from keys it closes over) so eval_shape and the real init agree.
    """
    graphdef, abstract = abstract_state(factory)
    shardings = state_shardings(abstract, mesh, rules)

    def init():
        return nnx.state(factory())

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
