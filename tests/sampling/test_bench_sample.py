"""launch.bench_sample end to end on a tiny shape (behaviour, not timing)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TINY = [
    "--config.model.num_layers=2",
    "--config.model.embed_dim=32",
    "--config.model.mlp_dim=64",
    "--config.model.head_dim=16",
    "--config.model.vocab_size=256",
    "--config.model.attention_impl=cpu",
    "--batch_sizes=1,3",
    "--prompt_len=10",
    "--new_tokens=12",
    "--rounds=1",
    "--torch_threads=1",  # no thread probe: a test checks behaviour, not speed
]
HAS_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


def _bench(*args):
    result = subprocess.run(
        [sys.executable, "-m", "launch.bench_sample", *_TINY, *args],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAS_TORCH, reason="needs the [bench] extra (torch, transformers)")
def test_bench_runs_both_sides_on_the_same_weights():
    _, summary = _bench()
    for b in (1, 3):
        assert summary[f"b{b}_jax_tok_s"] > 0 and summary[f"b{b}_torch_float32_tok_s"] > 0
        assert summary[f"b{b}_ratio"] == pytest.approx(
            summary[f"b{b}_jax_tok_s"] / summary[f"b{b}_torch_float32_tok_s"], rel=1e-2
        )
        # Same weights, same architecture, greedy: the same tokens (float32 both sides).
        assert summary[f"b{b}_agreement_float32"] == 1.0
    # No --workdir: no trained chain to time TTS with (tests/launch/test_demo.py does).
    assert summary["tts_rtf"] is None and "--workdir" in summary["tts_note"]


def test_bench_without_torch_reports_jax_only():
    _, summary = _bench("--torch=false")
    assert summary["b1_jax_tok_s"] > 0 and summary["b3_jax_tok_s"] > 0
    assert summary["b1_ratio"] is None and summary["torch_missing"] == "--torch=false"
