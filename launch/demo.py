"""README command 1: the whole chain on the embedded synthetic corpus, on CPU.

    make demo                          # default size, work dir runs/demo
    make demo DEMO_ARGS="--quick"      # tiny sizes, a quick smoke run

Stages run in order and each reports what it made. The chain grows with the project:
corpus -> codec -> tokens -> LM -> acoustic stage -> sampling -> evaluation; stages
that are not built yet are not listed here (DESIGN.md has the full data flow).
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging

from gpa_jax import config_utils
from launch import common
from launch.build_corpus import build_corpus

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

flags.DEFINE_bool("quick", False, "Tiny sizes everywhere: a smoke run of a few minutes.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = common.workdir()
    size = "tiny" if flags.FLAGS.quick else "default"
    stages = [
        ("corpus", lambda: build_corpus(config_utils.load_config(os.path.join(CONFIGS, f"corpus.py:{size}")), workdir)),
    ]
    logging.info("demo: work dir %s, %s sizes", workdir, size)
    total = time.time()
    for index, (name, run) in enumerate(stages, start=1):
        start = time.time()
        print(f"== [{index}/{len(stages)}] {name}", flush=True)
        run()
        print(f"== [{index}/{len(stages)}] {name} done in {time.time() - start:.1f} s", flush=True)
    print(f"demo finished in {time.time() - total:.1f} s; artefacts under {workdir}")


if __name__ == "__main__":
    app.run(main)
