"""launch.bench_train end to end on a tiny shape (behaviour, not timing)."""

import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The tiny LM's config flags (launch.bench_data's test uses them too).
TINY_CONFIG = [
    "--config.model.num_layers=1",
    "--config.model.embed_dim=32",
    "--config.model.mlp_dim=64",
    "--config.model.head_dim=16",
    "--config.model.vocab_size=128",
    "--config.model.attention_q_block=8",
    "--config.train.batch_size=8",  # divides the 8 simulated CPU devices of conftest
    "--config.train.seq_len=32",
]
_TINY = [*TINY_CONFIG, "--steps=1", "--rounds=2", "--warmup=1"]


def _bench(*args):
    result = subprocess.run(
        [sys.executable, "-m", "launch.bench_train", *_TINY, *args],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_reports_jax_and_torch_side_by_side():
    has_torch = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    stdout, summary = _bench("--config.model.dtype=bfloat16", "--peak_tflops=1.0")
    assert summary["batch"] == [8, 32] and summary["steps_timed"] == 2
    assert summary["tokens_per_s"] > 0
    assert summary["dtype"] == "bfloat16"
    # MFU = FLOPs/token (MaxText) x tokens/s / peak.
    assert abs(summary["mfu"] - summary["flops_per_token"] * summary["tokens_per_s"] / 1e12) < 1e-9
    if has_torch:
        assert summary["torch_dtype"] == "bfloat16"  # the same precision as the JAX side
        assert summary["ratio"] == summary["tokens_per_s"] / summary["torch_tokens_per_s"]
        assert summary["torch_float32_tokens_per_s"] > 0
        assert "torch[bfloat16]" in stdout and "torch[float32]" in stdout
    else:
        assert summary["ratio"] is None and "torch side skipped" in stdout


def test_bench_without_torch_and_cpu_mfu_needs_a_peak():
    stdout, summary = _bench(
        "--torch=false", "--config.model.attention_impl=cpu", "--compare=model.attention_impl=xla"
    )
    assert summary["torch_tokens_per_s"] is None and summary["ratio"] is None
    assert summary["mfu"] is None and "--peak_tflops" in stdout
    # --compare adds a JAX side with its overrides, timed in the same rounds.
    assert list(summary["sides"]) == ["jax[float32]", "jax[model.attention_impl=xla]"]
    other = summary["sides"]["jax[model.attention_impl=xla]"]
    assert other["ratio_to_main"] == other["tokens_per_s"] / summary["tokens_per_s"]
