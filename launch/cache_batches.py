"""Caches the LM's training batches once, for a training host without TensorFlow.

    python -m launch.cache_batches --config=configs/gpa_tiny.py --workdir=runs/demo
    python -m launch.train --config=configs/gpa_tiny.py --workdir=runs/demo \
        --config.data.source=cache

Runs the SeqIO mixture of the config's tasks over the work dir's token shards and writes
the `train.num_steps` train batches and `train.eval_steps` eval batches the trainer reads,
in order, to ArrayRecord under <workdir>/batch_cache (or --config.data.cache_dir), with a
fingerprint of what defined them (gpa_jax.data.batch_cache). Training with
`data.source=cache` then reads them with Grain: the same batches as `data.source=tasks`,
a resume state of a few bytes, and no TensorFlow import. Give this command the same config
overrides as the training run; a config whose batches would differ (mixture, seed,
lengths, batch size, token shards) refuses a cache made for another. Rerunning is a no-op
when the cache is up to date.
"""

from __future__ import annotations

import os
import time

from absl import app

from gpa_jax import config_utils, paths
from launch import common

config_utils.define_config_flag("configs/gpa_tiny.py")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_utils.config_from_flags()
    from gpa_jax.training import model_kinds

    start = time.time()
    directory = model_kinds.write_batch_cache(config, common.existing_workdir())
    size = ""
    if not paths.is_remote(directory):
        mib = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)) / 2**20
        size = f"{mib:.1f} MiB "
    print(f"batch cache {directory}: {size}in {time.time() - start:.0f} s; "
          "train with --config.data.source=cache")  # fmt: skip


if __name__ == "__main__":
    common.run(main)
