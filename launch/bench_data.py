"""Does the Grain batch-cache loader keep up with the trainer? Batches/s side by side.

    python -m launch.bench_data                       # gpa_tiny's batch and train step
    python -m launch.bench_data --workers=2           # Grain worker processes

Writes `--batches` global batches of the config's shape (data_iter.SyntheticLMBatches,
the same keys, dtypes and sizes as the task mixture's) to a batch cache in a temporary
folder (gpa_jax.data.batch_cache: real ArrayRecord files), then times, interleaved over
`--rounds` rounds so load on a shared machine hits both alike: reading the cache with
`CachedBatches` (a fresh iterator per round, so its prefetch starts cold) and the
trainer's own jitted train step on the config's mesh (launch.bench_train's JAX side).
`ratio` = loader batches/s over trainer steps/s (the loader must stay well ahead: ≥ 10
on gpa_tiny). The resume state's size is reported too. The last stdout line is JSON.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

from absl import app, flags

from gpa_jax import config_utils
from launch import common

config_utils.define_config_flag("configs/gpa_tiny.py")
_BATCHES = flags.DEFINE_integer(
    "batches", 48, "Batches read from the cache per round.", lower_bound=1
)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed train steps per round.", lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds of (read, train).", lower_bound=1)
_WORKERS = flags.DEFINE_integer(
    "workers", 0, "Grain worker processes (0 = threads).", lower_bound=0
)


def run(config, *, batches: int, steps: int, rounds: int, workers: int) -> dict:
    from gpa_jax.data import batch_cache
    from gpa_jax.training.data_iter import SyntheticLMBatches
    from launch.bench_steps import JaxSide

    if min(batches, steps, rounds) < 1 or workers < 0:
        raise ValueError("--batches, --steps and --rounds must be >= 1, --workers >= 0")
    with tempfile.TemporaryDirectory() as directory:
        split = batch_cache.write_split(directory, "train", SyntheticLMBatches(config), batches)
        batch_cache.write_manifest(directory, {"fingerprint": "bench", "splits": {"train": split}})
        trainer = JaxSide(config, SyntheticLMBatches(config).batch_at(0))
        trainer.step()  # compile
        read_s, step_s, state = [], [], None
        for _ in range(rounds):
            it = batch_cache.CachedBatches(directory, "train", fingerprint_value="bench",
                                           workers=workers)  # fmt: skip
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            read_s.append((time.perf_counter() - t0) / batches)
            state = it.get_state()
            for _ in range(steps):
                t0 = time.perf_counter()
                trainer.step()
                step_s.append(time.perf_counter() - t0)
    loader, train = 1.0 / statistics.median(read_s), 1.0 / statistics.median(step_s)
    return {
        "batch": [int(config.train.batch_size), int(config.train.seq_len)],
        "workers": workers,
        "loader_batches_per_s": round(loader, 2),
        "trainer_steps_per_s": round(train, 3),
        "ratio": round(loader / train, 1),
        "state_bytes": len(json.dumps(state)),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_utils.config_from_flags()
    summary = run(config, batches=_BATCHES.value, steps=_STEPS.value, rounds=_ROUNDS.value,
                  workers=_WORKERS.value)  # fmt: skip
    print(f"loader {summary['loader_batches_per_s']} batches/s, trainer "
          f"{summary['trainer_steps_per_s']} steps/s: ratio {summary['ratio']}; resume state "
          f"{summary['state_bytes']} bytes")  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    common.run(main)
