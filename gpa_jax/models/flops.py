"""Training FLOPs per token and MFU for the decoder LM (MaxText's accounting).

MaxText (`calculate_tflops_training_per_device`) counts the matmul FLOPs of one training
step as 3x the forward (forward + two backward matmuls per weight):

    weight FLOPs / token (forward) = 2 * (matmul weight elements), i.e. per layer
        q/k/v projections   embed * (heads + 2 * kv_heads) * head_dim
        output projection   heads * head_dim * embed
        SwiGLU MLP          3 * embed * mlp
      plus the output (logits) projection embed * vocab, counted whether or not it is
      tied to the input embedding (the input lookup itself is a gather: no FLOPs);
    causal attention FLOPs / token (forward) = per layer 4 * seq_len * heads * head_dim / 2
        (q.k scores and p.v, 2 FLOPs per multiply-add, half the square for causality).

training FLOPs / token = 3 * (2 * weight elements + attention). Norms, RoPE, softmax,
the optimizer and the auxiliary ASR CTC head (it runs on ASR source positions only) are
not counted (as in MaxText), so MFU slightly understates the work done.
Packed sequences are counted at the full `seq_len` (an upper bound on the attended
keys, as MaxText does).

MFU = training FLOPs / token * tokens / s / peak FLOP/s of the devices used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Dense peak FLOP/s per chip for bf16 matmuls, from the vendors' spec sheets (dense, no
# sparsity). Keys are matched case-insensitively as substrings of `jax.Device.device_kind`,
# longest key first. CPUs are not listed: their peak depends on cores, clock and ISA, so
# a CPU benchmark needs an explicit peak (launch.bench_train --peak_tflops).
PEAK_TFLOPS_BF16: dict[str, float] = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "H100": 989.0,
    "H200": 989.0,
    "H800": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "B200": 2250.0,
}


@dataclasses.dataclass(frozen=True)
class TrainingFlops:
    """Per-token training FLOPs split as MaxText reports them."""

    weight_flops: float  # 6 * matmul weight elements (incl. the logits projection)
    attention_flops: float  # 3 * causal attention forward FLOPs
    weight_params: int  # matmul weight elements counted above

    @property
    def total(self) -> float:
        return self.weight_flops + self.attention_flops


def matmul_weight_params(cfg: Any) -> int:
    """Weight elements that take part in a matmul per token (see the module doc)."""
    e, h, kv, d, m = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    per_layer = e * (h + 2 * kv) * d + h * d * e + 3 * e * m
    return cfg.num_layers * per_layer + e * cfg.vocab_size


def training_flops_per_token(cfg: Any, seq_len: int) -> TrainingFlops:
    """MaxText-style training FLOPs per token for an LMConfig-like `cfg` at `seq_len`."""
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    params = matmul_weight_params(cfg)
    attention_fwd = cfg.num_layers * 4 * seq_len * cfg.num_heads * cfg.head_dim / 2
    return TrainingFlops(
        weight_flops=6.0 * params, attention_flops=3.0 * attention_fwd, weight_params=params
    )


def peak_tflops_for(device_kind: str) -> float | None:
    """Known bf16 dense peak TFLOP/s for a `jax.Device.device_kind`, else None."""
    kind = device_kind.lower()
    for key in sorted(PEAK_TFLOPS_BF16, key=len, reverse=True):
        if key.lower() in kind:
            return PEAK_TFLOPS_BF16[key]
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (a fraction)."""
    if peak_flops_per_s <= 0:
        raise ValueError(f"peak FLOP/s must be > 0, got {peak_flops_per_s}")
    return flops_per_token * tokens_per_s / peak_flops_per_s
