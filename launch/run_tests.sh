#!/usr/bin/env bash
# README command 2 (`make test`): set up the environment, then run the test suite.
# Extra arguments go to pytest, e.g. `make test PYTEST_ARGS="-k audio"`.
set -uo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh || exit $?
# One persistent XLA compilation cache per run, shared by the workers and every process
# they start (the quick demo's stages, the CLIs, the preemption tests' reruns): many tests
# compile the same programs in separate processes. A fresh folder each run, so no entry
# outlives the code that compiled it; an exported JAX_COMPILATION_CACHE_DIR is used as is.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d -t gpa_jax_xla_cache.XXXXXX)"
  export JAX_COMPILATION_CACHE_DIR
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
# Two or more workers (pytest-xdist, up to 4 on a larger machine): much of the suite is
# single-threaded (XLA compiles, subprocess start-ups), so two workers use CI's 2 cores.
# --dist=loadscope keeps each module's tests (and its module fixtures) on one worker,
# taking modules in the order tests/conftest.py's scheduled_order gives them
# (--no-loadscope-reorder); the workers share one quick-demo run (tests/conftest.py).
# GPA_JAX_TEST_WORKERS=0 runs in one process.
workers="${GPA_JAX_TEST_WORKERS:-auto}"
if [ "$workers" = "0" ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest -n "$workers" --maxprocesses=4 --dist=loadscope --no-loadscope-reorder "$@"
fi
rc=$?
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected": say so loudly instead of failing the run with an
  # opaque code; CI reports such a run as having run no test.
  echo "run_tests: pytest collected no tests (check the test paths / -k filter)" >&2
  exit 0
fi
exit "$rc"
