"""The trainer's own train step on one fixed batch: the JAX side of the benchmarks that
time training (launch.bench_train against PyTorch, launch.bench_data against the loader).
A module of its own so that both import it without the other's flags."""

from __future__ import annotations

from typing import Any


class JaxSide:
    """The trainer's jitted train step on the config's mesh, one fixed device batch."""

    def __init__(self, config, batch: dict[str, Any], label: str | None = None):
        import jax
        import numpy as np
        from flax import nnx

        from gpa_jax import sharding as sharding_lib
        from gpa_jax.training import checkpoint as ckpt_lib
        from gpa_jax.training import trainer

        self.name = f"jax[{config.model.dtype}]" if label is None else f"jax[{label}]"
        self._jax = jax
        mesh = sharding_lib.make_mesh(config.mesh)
        graphdef, shardings, _ = ckpt_lib.abstract_train_state(config, mesh)
        objs = sharding_lib.create_sharded(
            ckpt_lib.train_state_factory(config), mesh, config.sharding_rules
        )
        self.state = nnx.state(objs)
        del objs
        self.step_fn, _, batch_sharding = trainer.make_step_fns(config, graphdef, shardings, mesh)
        self.batch = {
            k: jax.device_put(
                np.asarray(v, np.float32 if k == "decoder_loss_weights" else np.int32),
                batch_sharding,
            )
            for k, v in batch.items()
        }
        self.devices = mesh.devices.size
        self.device_kind = mesh.devices.flat[0].device_kind
        self.platform = mesh.devices.flat[0].platform

    def step(self) -> float:
        self.state, metrics = self.step_fn(self.state, self.batch)
        return float(self._jax.device_get(metrics["loss"]))
