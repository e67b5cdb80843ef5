"""Inference for the LM: prefill + KV-cache decode, and the task-level sampler.

decode    one compiled program per (batch, prompt, steps) bucket: prefill of
          left-padded prompts, a lax.while_loop decode with fused sampling
config    sampling_config(): bucketing, per-task sampling defaults, length limits
sampler   Sampler (from params or a checkpoint, params only), Request, Result
joint_ctc joint CTC/attention beam search for ASR (an LM with a CTC head)
engine    Engine: continuous batching (fixed slots over one KV cache, requests join and
          leave between decode calls), for serving
streaming chunked TTS/VC audio (fixed batches, or per request from an Engine)
"""

from gpa_jax.sampling.config import sampling_config
from gpa_jax.sampling.decode import Decoder, Mode, make_batch
from gpa_jax.sampling.sampler import (
    Request,
    RequestError,
    Result,
    Sampler,
    SamplingParams,
    config_from_checkpoint,
)

__all__ = [
    "Decoder",
    "Mode",
    "Request",
    "RequestError",
    "Result",
    "Sampler",
    "SamplingParams",
    "config_from_checkpoint",
    "make_batch",
    "sampling_config",
]
