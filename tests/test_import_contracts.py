"""The import contracts in pyproject.toml ([tool.importlinter]) hold: the gpa_jax packages
import only the layers below them, and the training host's trainer and Grain readers
import no TensorFlow or seqio. `lint-imports` (import-linter, the dev extra) checks them."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def test_import_contracts_hold():
    # This checkout's gpa_jax first on the path (not another editable install's).
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", _RUN, "--no-cache", "--no-logo", os.path.join(REPO, "pyproject.toml")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert "No module named 'importlinter'" not in out.stderr, (
        "import-linter is missing: pip install -c constraints.txt -e '.[dev]'"
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout, out.stdout[-3000:]
