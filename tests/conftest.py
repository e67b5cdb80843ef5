"""Shared test set-up.

Sharded code is tested on 8 simulated CPU devices; the flag must be set before JAX
initialises its backend, so it is set here, before any test module imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

from tests.fake_gcs import fake_gcs, fake_gcs_with_tensorstore  # noqa: E402, F401 - gs:// in memory


def _has_platform(name: str) -> bool:
    try:
        return bool(jax.devices(name))
    except RuntimeError:
        return False


# The module whose tests start the shared quick-demo run (the `quick_demo` fixture).
DEMO_MODULE = "tests/launch/test_demo.py"


def pytest_collection_modifyitems(config, items):
    for marker, platform in (("gpu", "gpu"), ("tpu", "tpu")):
        skip = pytest.mark.skip(reason=f"needs a {platform.upper()}")
        for item in items:
            if marker in item.keywords and not _has_platform(platform):
                item.add_marker(skip)
    items[:] = scheduled_order(items)


def scheduled_order(items):
    """Modules in the order `make test`'s workers take them (`--dist=loadscope
    --no-loadscope-reorder` keeps this order): the demo's own module first, so one
    worker starts the shared quick-demo run at once; then the modules that do not need
    that run, largest first (xdist's own default); last the other modules that read the
    run, which is done by the time they start instead of keeping a worker waiting on
    its lock. Deterministic, as every worker must collect the same order."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    uses_demo = {m for m, its in modules.items()
                 if any("quick_demo" in getattr(i, "fixturenames", ()) for i in its)}  # fmt: skip
    first = [m for m in modules if m == DEMO_MODULE]
    middle = sorted((m for m in modules if m not in uses_demo and m not in first),
                    key=lambda m: -len(modules[m]))  # fmt: skip
    last = [m for m in modules if m in uses_demo and m not in first]
    return [item for m in (*first, *middle, *last) for item in modules[m]]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """The README's main command at --quick size, run once per test run.

    Returns (workdir, CompletedProcess). The demo runs on one CPU device (no simulated
    8-device flag), as a user's `make demo DEMO_ARGS=--quick` does. Under pytest-xdist
    (`make test`) the workers share one run: the first to ask runs it under a file lock
    in the run's common temp dir and leaves its result there; the others wait for it.
    """
    import json
    import subprocess
    import sys

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the temp dir all workers of this run share
    workdir, record = root / "quick_demo", root / "quick_demo.json"
    args = [sys.executable, "-m", "launch.demo", "--quick", f"--workdir={workdir}"]
    with FileLock(str(root / "quick_demo.lock")):
        if not record.exists():
            env = {**os.environ, "XLA_FLAGS": ""}
            done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=2400, check=False)  # fmt: skip
            record.write_text(json.dumps(dict(returncode=done.returncode, stdout=done.stdout,
                                              stderr=done.stderr)))  # fmt: skip
        saved = json.loads(record.read_text())
    return workdir, subprocess.CompletedProcess(args, **saved)
