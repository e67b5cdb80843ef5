"""Inference for the LM: prefill + KV-cache decode, and the task-level sampler.

decode    one compiled program per (batch, prompt, steps) bucket: prefill of
          left-padded prompts, a lax.while_loop decode with fused sampling
config    sampling_config(): bucketing, per-task sampling defaults, length limits
sampler   Sampler (from params or a checkpoint, params only), Request, Result
joint_ctc joint CTC/attention beam search for ASR (an LM with a CTC head)
engine    Engine: continuous batching (fixed slots over one KV cache, requests join and
          leave between decode calls), for serving
streaming chunked TTS/VC audio (fixed batches, or per request from an Engine)

Names are imported lazily, so `from gpa_jax.sampling.config import sampling_config` (what
an LM config file needs for its `sampling` section) does not pull in seqio and the model.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "config": ("sampling_config",),
    "decode": ("Decoder", "Mode", "make_batch"),
    "sampler": (
        "Request",
        "RequestError",
        "Result",
        "Sampler",
        "SamplingParams",
        "config_from_checkpoint",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
