"""Small models and full-recompute references for the sampler tests."""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpa_jax.models import LMConfig
from gpa_jax.sampling import decode
from tests.models.helpers import numpy_model

BASE = LMConfig(
    vocab_size=128,
    num_layers=2,
    embed_dim=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    rope_theta=10_000.0,
    max_len=128,
    dtype="float32",
    scan_layers=False,
    prefix_bidirectional=True,
    init_std=1.0,  # numpy init: logits depend visibly on every input token
)


@functools.cache
def model(**overrides) -> nnx.Module:
    """One model per distinct config (numpy params, seed 0); do not mutate."""
    return numpy_model(dataclasses.replace(BASE, **overrides))


FULL_LEN = 48  # full-recompute sequences are padded to this (one compile per model)


@nnx.jit
def _forward(m, tokens, segment_ids, prefix_mask):
    b, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    return m(tokens, segment_ids, positions, prefix_mask)


def full_logits(m, prompt, generated) -> np.ndarray:
    """Logits [len(prompt) + len(generated), V] of one sequence without a cache; the
    prompt is the bidirectional prefix (as in training and in the sampler). The sequence
    is end-padded to FULL_LEN (segment id 0), which causal attention never reads."""
    seq = np.concatenate([np.asarray(prompt), np.asarray(generated, np.int64)]).astype(np.int32)
    n = len(seq)
    assert n <= FULL_LEN
    tokens = np.zeros(FULL_LEN, np.int32)
    tokens[:n] = seq
    segment_ids = (np.arange(FULL_LEN) < n).astype(np.int32)
    prefix = (np.arange(FULL_LEN) < len(prompt)).astype(np.int32)
    out = _forward(m, *(jnp.asarray(a[None]) for a in (tokens, segment_ids, prefix)))
    return np.asarray(out)[0, :n]


def greedy_reference(m, prompt, steps, id_range=None, allow_eos=False) -> list[int]:
    """Greedy tokens by recomputing the whole sequence each step (no cache)."""
    out: list[int] = []
    for _ in range(steps):
        logits = full_logits(m, prompt, out)[-1]
        ids = np.arange(len(logits))
        allowed = (
            np.ones_like(ids, bool)
            if id_range is None
            else (ids >= id_range[0]) & (ids < id_range[1])
        )
        allowed |= (ids == decode.EOS_ID) & allow_eos
        if not allow_eos:
            allowed &= ids != decode.EOS_ID
        out.append(int(np.argmax(np.where(allowed, logits, -np.inf))))
        if out[-1] == decode.EOS_ID:
            break
    return out


def batch(
    prompts,
    *,
    max_new,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    penalty=1.0,
    id_range=(2, BASE.vocab_size),
    allow_eos=False,
    seeds=None,
    **kw,
) -> decode.Batch:
    n = len(prompts)

    def per_row(v):
        return list(v) if isinstance(v, list) else [v] * n

    return decode.make_batch(
        prompts,
        max_new=per_row(max_new),
        temperature=per_row(temperature),
        top_k=per_row(top_k),
        top_p=per_row(top_p),
        repetition_penalty=per_row(penalty),
        id_ranges=[id_range] * n,
        allow_eos=per_row(allow_eos),
        seeds=list(range(n)) if seeds is None else seeds,
        **kw,
    )


def prompts(lengths, seed=0, vocab_size=BASE.vocab_size):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, vocab_size, n).astype(np.int32) for n in lengths]
