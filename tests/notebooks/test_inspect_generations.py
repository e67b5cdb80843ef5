"""notebooks/inspect_generations.ipynb runs top to bottom on the quick demo's checkpoints."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_notebook_executes_on_a_tiny_checkpoint(quick_demo, monkeypatch):
    workdir, result = quick_demo
    assert result.returncode == 0, result.stderr[-3000:]
    nb = nbformat.read(os.path.join(REPO, "notebooks", "inspect_generations.ipynb"), as_version=4)
    monkeypatch.setenv("GPA_JAX_WORKDIR", str(workdir))
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend makes the images
    monkeypatch.setenv("GPA_JAX_SPLIT", "train")  # the tiny corpus: see the notebook
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "LM (greedy):" in text and "judge hears:" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    audio = [o for o in outputs if "text/html" in o.get("data", {}) and "<audio" in o["data"]["text/html"]]
    assert len(images) >= 5 and len(audio) >= 5
