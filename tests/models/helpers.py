"""Test helpers: models with numpy-drawn params.

On XLA:CPU, compiling JAX's (partitionable) threefry RNG costs seconds per param shape,
which dominated these tests; drawing the params with numpy into an abstract model
(nnx.eval_shape) builds a model in milliseconds. `create_sharded` (the real init under
jit) is tested once, in tests/test_sharding.py.
"""

import numpy as np
from flax import nnx

from gpa_jax.models import DecoderLM, LMConfig


def numpy_params(model: nnx.Module, seed: int = 0, embed_std: float = 1.0) -> nnx.Module:
    """Fills every Param of `model` (abstract or not) in place; returns it.

    Kernels get fan-in scaled normals (all leading dims but the last are treated as
    fan-in, except o_proj whose [heads, head_dim] both are), norm scales 1 + small
    noise (so a wrong norm axis shows), embeddings N(0, embed_std).
    """
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = var.shape
        names = [str(p) for p in path]
        if names[-1] == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif names[-1] == "embedding":
            value = embed_std * rng.standard_normal(shape)
        else:
            stacked = "layers" in names and not any(n.isdigit() for n in names)
            dims = shape[1:] if stacked else shape
            n_in = 2 if "o_proj" in names else 1
            fan_in = int(np.prod(dims[:n_in]))
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        var.set_value(np.asarray(value, dtype=var.dtype))
    return model


def numpy_model(cfg: LMConfig, seed: int = 0, sharding_rules=None) -> DecoderLM:
    """A DecoderLM for `cfg` without running JAX's RNG (see module doc)."""
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0), sharding_rules=sharding_rules))
    return numpy_params(model, seed, embed_std=cfg.init_std)
