"""The notebook's first cell, as Colab runs it: installs [judge] and keeps Colab's jax / torch."""

import os
import subprocess
import sys
import types
from importlib import metadata

import nbformat

from launch import check_python_versions as check
from tests.conftest import REPO


def test_colab_cell_pins_installed_jax_and_torch(tmp_path, monkeypatch):
    nb = nbformat.read(os.path.join(REPO, "notebooks", "inspect_generations.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code").source
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if "pip" in cmd:  # the constraint file exists only while the cell runs
            calls.append(open(cmd[cmd.index("-c") + 1]).read().split())
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("GPA_JAX_REPO", str(tmp_path))
    monkeypatch.chdir(REPO)  # restored after the cell's chdir
    exec(cell, {})
    pip = next(c for c in calls if "pip" in c)
    assert pip[-2:] == ["-e", f"{tmp_path}[judge]"]
    keep = calls[calls.index(pip) + 1]
    for name in ("jax", "jaxlib", "torch"):
        assert f"{name}=={metadata.version(name)}" in keep
    _, extras, _ = check.read_setup()
    assert not [r for r in extras["judge"] if r.startswith(("torch", "jax"))]
