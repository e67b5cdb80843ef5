"""Batched prefill + KV-cache decoding compiled as one program (no Python loop per token).

Layout: prompts are LEFT-padded to a common length P, so after prefill every row's next
token goes to the same cache slot (one dynamic_update_slice for the whole batch per layer
and step, done in place inside the loop). Row b's first real token sits at slot
pad[b] = P - len[b]; its RoPE positions start at 0 there (as in training, where positions
restart per example), and the attention mask hides slots < pad[b] and slots not yet
written. The prompt is one prefix: with `prefix_bidirectional` the prefill attends
bidirectionally inside it, exactly as the trainer's prefix-LM mask does; generated tokens
are causal.

Step s = 0 samples from the prefill's last logits; step s >= 1 feeds token s-1 at slot
P + s - 1. A row stops after <eos> or after its own `max_new` tokens; the loop
(`jax.lax.while_loop`) ends when every row has stopped or after `max_steps` (static)
steps. The cache has P + max_steps slots.

Sampling, fused into the loop, per row (HF transformers' order): id-range mask (only
[id_lo, id_hi) and, when `allow_eos`, <eos> can be emitted) -> repetition penalty (CTRL
style: a seen token's logit is divided by the penalty if positive, multiplied if negative;
"seen" = tokens this row generated so far, not the prompt, whose reference audio a TTS row
should be free to echo) -> greedy when temperature == 0, else temperature -> top-k ->
top-p (nucleus over the top-k candidates, renormalised) -> categorical draw with the row's
own key (fold_in(key(seed), step)), so a row's draw does not depend on its batch mates.

Static variants (one compile each, chosen from the batch's parameters): all-greedy rows
skip the sampling path; `num_candidates` = the largest top-k of the batch (rounded up to a
power of two) when every sampled row has a top-k, else the whole vocabulary (exact top-p);
the repetition penalty's bookkeeping exists only when some row uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpa_jax.models.layers import to_dtype
from gpa_jax.sharding import with_logical_constraint

PAD_ID = 0
EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class Mode:
    """Static choices of one compiled decode program."""

    greedy: bool  # every row greedy: no sampling path at all
    num_candidates: int  # top-k width of the sampling path (vocab size = exact top-p)
    repetition_penalty: bool  # some row has penalty != 1


@dataclasses.dataclass
class Batch:
    """Host arrays of one decode call (built by `make_batch`); rows = requests."""

    tokens: np.ndarray  # int32 [B, P] left-padded prompts
    lengths: np.ndarray  # int32 [B] prompt lengths (>= 1)
    max_new: np.ndarray  # int32 [B] tokens this row may generate (>= 1, <= max_steps)
    temperature: np.ndarray  # float32 [B]; 0 = greedy
    top_k: np.ndarray  # int32 [B]; 0 = off
    top_p: np.ndarray  # float32 [B]; 1 = off
    repetition_penalty: np.ndarray  # float32 [B]; 1 = off
    id_lo: np.ndarray  # int32 [B]: allowed output ids are [id_lo, id_hi) (+ <eos>)
    id_hi: np.ndarray  # int32 [B]
    allow_eos: np.ndarray  # bool [B]
    seeds: np.ndarray  # uint32 [B]
    # The continuous audio-input variant's prompt rows (left-padded like `tokens`):
    # float32 [B, P, F] token-aligned log-mel and int32 [B, P] where they are read.
    audio_features: np.ndarray | None = None
    audio_mask: np.ndarray | None = None


def make_batch(
    prompts: list[np.ndarray],
    *,
    max_new: list[int],
    temperature: list[float],
    top_k: list[int],
    top_p: list[float],
    repetition_penalty: list[float],
    id_ranges: list[tuple[int, int]],
    seeds: list[int],
    allow_eos: list[bool] | None = None,
    prompt_length: int | None = None,
    batch_size: int | None = None,
    audio: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> Batch:
    """Left-pads `prompts` to `prompt_length` (default: the longest) and the batch to
    `batch_size` rows (filler rows: one <eos> prompt, one greedy step, then stopped).

    audio: per prompt, (features [len, F], mask [len]) for a continuous-input model."""
    n = len(prompts)
    if n == 0:
        raise ValueError("make_batch needs at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) < 1:
        raise ValueError("every prompt needs at least one token")
    P = max(lengths) if prompt_length is None else int(prompt_length)
    if max(lengths) > P:
        raise ValueError(f"prompt of {max(lengths)} tokens exceeds prompt_length={P}")
    B = n if batch_size is None else int(batch_size)
    if B < n:
        raise ValueError(f"batch_size={B} < {n} prompts")
    fill = B - n
    tokens = np.full((B, P), PAD_ID, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p) :] = np.asarray(p, np.int32)
    tokens[n:, -1] = EOS_ID

    def col(values, dtype, filler):
        return np.asarray(list(values) + [filler] * fill, dtype)

    features = mask = None
    if audio is not None:
        dim = int(np.asarray(audio[0][0]).shape[-1])
        features = np.zeros((B, P, dim), np.float32)
        mask = np.zeros((B, P), np.int32)
        for i, (f, m) in enumerate(audio):
            features[i, P - len(m) :] = f
            mask[i, P - len(m) :] = m
    ranges = list(id_ranges)
    return Batch(
        tokens=tokens,
        lengths=col(lengths, np.int32, 1),
        max_new=col(max_new, np.int32, 1),
        temperature=col(temperature, np.float32, 0.0),
        top_k=col(top_k, np.int32, 0),
        top_p=col(top_p, np.float32, 1.0),
        repetition_penalty=col(repetition_penalty, np.float32, 1.0),
        id_lo=col([r[0] for r in ranges], np.int32, 0),
        id_hi=col([r[1] for r in ranges], np.int32, 1 << 30),
        allow_eos=col(allow_eos if allow_eos is not None else [True] * n, np.bool_, True),
        seeds=col(seeds, np.uint32, 0),
        audio_features=features,
        audio_mask=mask,
    )


def choose_mode(batch: Batch, vocab_size: int) -> Mode:
    """The static variant that serves `batch` (see module docstring)."""
    sampled = batch.temperature > 0
    rep = bool(np.any(batch.repetition_penalty != 1.0))
    if not sampled.any():
        return Mode(greedy=True, num_candidates=0, repetition_penalty=rep)
    ks = batch.top_k[sampled]
    if np.all(ks > 0):
        k = int(min(vocab_size, 1 << int(np.ceil(np.log2(max(int(ks.max()), 1))))))
    else:
        k = int(vocab_size)
    return Mode(greedy=False, num_candidates=k, repetition_penalty=rep)


# --- sampling -------------------------------------------------------------------------


def _argmax(x: jax.Array) -> jax.Array:
    """First index of the maximum over the last axis, as int32.

    Two plain reductions (max, then the smallest index reaching it) instead of
    jnp.argmax's (value, index) variadic reduce, which XLA:CPU runs ~5x slower
    (measured on [32, 4096]: 1.5 ms vs 0.3 ms per step). Same result, ties included.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    ids = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x >= top, ids, x.shape[-1]), axis=-1)


def _mask_logits(logits, id_lo, id_hi, allow_eos):
    ids = jnp.arange(logits.shape[-1], dtype=jnp.int32)[None, :]
    allowed = (ids >= id_lo[:, None]) & (ids < id_hi[:, None])
    allowed |= (ids == EOS_ID) & allow_eos[:, None]
    return jnp.where(allowed, logits, -jnp.inf)


def _penalise(logits, seen, penalty):
    p = penalty[:, None]
    return jnp.where(seen, jnp.where(logits > 0, logits / p, logits * p), logits)


def _sample_row(key, scores, ids, top_k, top_p):
    """One row: scores [C] (descending, temperature applied), ids [C] -> token id."""
    C = scores.shape[-1]
    rank = jnp.arange(C)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, C), C)
    keep = rank < k
    scores = jnp.where(keep, scores, -jnp.inf)
    probs = jax.nn.softmax(scores)
    # Nucleus: keep the smallest prefix whose mass reaches top_p (the first always stays).
    before = jnp.cumsum(probs) - probs
    keep &= (before < top_p) | (rank == 0)
    # Gumbel-max draw (what jax.random.categorical does), with the fast argmax.
    noisy = jnp.where(keep, scores, -jnp.inf) + jax.random.gumbel(key, scores.shape)
    return ids[_argmax(noisy)]


def select_tokens(logits, step, arrays, seen, mode: Mode):
    """Logits [B, V] float32 -> next tokens [B] (module docstring's order)."""
    logits = _mask_logits(logits, arrays["id_lo"], arrays["id_hi"], arrays["allow_eos"])
    if mode.repetition_penalty:
        logits = _penalise(logits, seen, arrays["repetition_penalty"])
    greedy = _argmax(logits)
    if mode.greedy:
        return greedy
    temperature = arrays["temperature"]
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    scores, ids = jax.lax.top_k(scaled, mode.num_candidates)
    # A row's key depends on its own seed and step only (step: scalar or per row [B]).
    keys = arrays["keys"]
    keys = jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(step, keys.shape))
    sampled = jax.vmap(_sample_row)(keys, scores, ids, arrays["top_k"], arrays["top_p"])
    return jnp.where(temperature > 0, sampled.astype(jnp.int32), greedy)


# --- the compiled program ---------------------------------------------------------------


def _compute_dtype_weights(state: nnx.State, dtype: Any) -> nnx.State:
    """Matrices (ndim >= 2: kernels, the embedding table) cast to the compute dtype once,
    before the loop. The layers cast them at every use anyway, so the values are the
    same; the loop then reads half the bytes per step in bfloat16. Norm scales keep their
    dtype (RMSNorm applies them in float32)."""

    def cast(x):
        if x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, state)


def prefill_logits(model, arrays, cache_length: int, rules):
    """Prefill of left-padded prompts (arrays: tokens [B, P], lengths [B], optional audio
    rows) -> (logits of each row's last prompt position [B, V], KV cache of `cache_length`
    slots, the prompts at slots 0..P-1). Shared by `Decoder` and the continuous-batching
    engine (`gpa_jax.sampling.engine`)."""
    h, cache = prefill_hidden(model, arrays, cache_length, rules)
    return model.logits(h[:, -1:])[:, 0], cache


def prefill_hidden(model, arrays, cache_length: int, rules):
    """`prefill_logits` before the output table: (final hidden states [B, P, D] of every
    prompt slot, KV cache). The joint CTC/attention search reads the source slots' states."""
    tokens = arrays["tokens"]
    P = tokens.shape[1]
    pad = P - arrays["lengths"]  # [B]
    slots = jnp.arange(P, dtype=jnp.int32)[None, :]
    segment_ids = (slots >= pad[:, None]).astype(jnp.int32)
    positions = jnp.maximum(slots - pad[:, None], 0)
    tokens = with_logical_constraint(tokens, ("batch", "length"), rules)
    h, cache = model.prefill(
        tokens, segment_ids, positions, segment_ids, cache_length,
        audio_features=arrays.get("audio_features"), audio_mask=arrays.get("audio_mask"),
    )  # fmt: skip
    return h, cache


def emit_tokens(logits, step, arrays, seen, done, mode: Mode):
    """One decode step's tokens [B] from logits [B, V]: PAD for rows already `done`, `seen`
    (None without a repetition penalty) marks the new tokens, and a row is done after
    <eos> or once `step + 1` reaches its max_new (`step`: scalar or per row)."""
    new = select_tokens(logits, step, arrays, seen, mode)
    new = jnp.where(done, PAD_ID, new)
    if seen is not None:
        rows = jnp.arange(new.shape[0])
        seen = seen.at[rows, new].set(seen[rows, new] | ~done)
    done = done | (new == EOS_ID) | (step + 1 >= arrays["max_new"])
    return new, seen, done


def merged_model(graphdef, state, compute_dtype):
    """The model with its matrices in the compute dtype (see _compute_dtype_weights)."""
    return nnx.merge(graphdef, _compute_dtype_weights(state, compute_dtype))


def loop_model(graphdef, state, compute_dtype):
    """A function that rebuilds the model from raw arrays inside a loop body: Variables
    (and nnx.scan over stacked layers) must not cross into a while_loop's trace."""
    leaves, treedef = jax.tree.flatten(_compute_dtype_weights(state, compute_dtype))
    return lambda: nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def _start(state, arrays, *, graphdef, max_steps, mode, rules, compute_dtype):
    """Prefill + the first sampled token: the decode carry at step 1."""
    model = merged_model(graphdef, state, compute_dtype)
    B, P = arrays["tokens"].shape
    logits, cache = prefill_logits(model, arrays, P + max_steps, rules)
    seen = jnp.zeros((B, logits.shape[-1]), jnp.bool_) if mode.repetition_penalty else None
    tok, seen, done = emit_tokens(logits, 0, arrays, seen, jnp.zeros((B,), jnp.bool_), mode)
    return {
        "step": jnp.asarray(1, jnp.int32),
        "tok": tok,
        "done": done,
        "out": jnp.full((B, max_steps), PAD_ID, jnp.int32).at[:, 0].set(tok),
        "cache": cache,
        "seen": seen,
    }


def _advance(state, arrays, carry, stop, *, graphdef, max_steps, mode, compute_dtype):
    """Decode steps until step `stop` (traced: one compile for every stop), max_steps or
    every row done. Called once with stop = max_steps, or chunk by chunk when streaming."""
    make_model = loop_model(graphdef, state, compute_dtype)
    B, P = arrays["tokens"].shape
    pad = P - arrays["lengths"]  # [B]
    all_slots = jnp.arange(P + max_steps, dtype=jnp.int32)[None, :]
    stop = jnp.minimum(stop, max_steps)

    def cond(c):
        return (c["step"] < stop) & ~jnp.all(c["done"])

    def body(c):
        step = c["step"]
        index = P + step - 1  # slot of the token being fed
        kv_mask = (all_slots >= pad[:, None]) & (all_slots <= index)
        pos = (arrays["lengths"] + step - 1)[:, None]
        logits, cache = make_model().decode_step(c["tok"][:, None], pos, kv_mask, c["cache"], index)
        new, seen, done = emit_tokens(logits[:, 0], step, arrays, c["seen"], c["done"], mode)
        out = jax.lax.dynamic_update_slice_in_dim(c["out"], new[:, None], step, axis=1)
        return {"step": step + 1, "tok": new, "done": done, "out": out, "cache": cache,
                "seen": seen}  # fmt: skip

    return jax.lax.while_loop(cond, body, carry)


def _outputs(carry, arrays, max_steps):
    out = carry["out"]
    is_eos = out == EOS_ID
    hit_eos = jnp.any(is_eos, axis=1)
    first_eos = jnp.argmax(is_eos, axis=1)
    num = jnp.where(hit_eos, first_eos + 1, jnp.minimum(arrays["max_new"], max_steps))
    return {"tokens": out, "num_tokens": num.astype(jnp.int32), "hit_eos": hit_eos,
            "steps": carry["step"]}  # fmt: skip


def _generate(state, arrays, *, graphdef, max_steps, mode, rules, compute_dtype):
    """The whole generation as one program: _start, then _advance to max_steps."""
    kw = dict(graphdef=graphdef, max_steps=max_steps, mode=mode, compute_dtype=compute_dtype)
    carry = _start(state, arrays, rules=rules, **kw)
    carry = _advance(state, arrays, carry, jnp.asarray(max_steps, jnp.int32), **kw)
    return _outputs(carry, arrays, max_steps)


def chunk_schedule(first: int, growth: float = 1.0, largest: int | None = None) -> Iterator[int]:
    """Endless chunk sizes: `first`, then each the previous times `growth` (rounded up),
    capped at `largest`. Growing chunks keep the first chunk (the latency to first audio)
    small and make later ones, which play while the next is made, cost fewer passes."""
    if first < 1 or growth < 1.0 or (largest is not None and largest < first):
        raise ValueError(
            f"chunk sizes need first >= 1, growth >= 1 and largest >= first; got first={first}, "
            f"growth={growth}, largest={largest}"
        )
    size = int(first)
    while True:
        yield size
        size = int(math.ceil(size * growth))
        if largest is not None:
            size = min(size, int(largest))


class Decoder:
    """Compiled prefill + decode for one model (graphdef + params state).

    `__call__(batch, max_steps)` returns host arrays: tokens [B, max_steps] (PAD after a
    row stopped), num_tokens [B] (generated, <eos> included when hit), hit_eos [B] and
    steps (loop iterations run). Compiles once per (B, P, max_steps, Mode): callers bucket
    B, P and max_steps (`gpa_jax.sampling.Sampler` does).
    """

    def __init__(self, model: nnx.Module, mesh: jax.sharding.Mesh | None = None):
        graphdef, state = nnx.split(model)
        self.graphdef = graphdef
        self.state = state
        self.cfg = model.cfg
        self.mesh = mesh
        self.rules = getattr(model, "rules", None)
        self._compiled: dict[tuple[int, Mode], Any] = {}

    def _fn(self, max_steps: int, mode: Mode, part: str = "generate"):
        """The jitted `part` ("generate", "start" or "advance") for (max_steps, mode)."""
        key = (max_steps, mode, part)
        if key not in self._compiled:
            kw = dict(graphdef=self.graphdef, max_steps=max_steps, mode=mode,
                      compute_dtype=to_dtype(self.cfg.dtype))  # fmt: skip
            if part == "advance":  # the carry (KV cache included) is updated in place
                fn = jax.jit(functools.partial(_advance, **kw), donate_argnums=(2,))
            else:
                fn = jax.jit(functools.partial(_start if part == "start" else _generate,
                                               rules=self.rules, **kw))  # fmt: skip
            self._compiled[key] = fn
        return self._compiled[key]

    def _run(self, fn, *args):
        if self.mesh is None:
            return fn(*args)
        with jax.set_mesh(self.mesh):
            return fn(*args)

    def device_arrays(self, batch: Batch) -> dict[str, jax.Array]:
        arrays = {
            f.name: jnp.asarray(getattr(batch, f.name))
            for f in dataclasses.fields(batch)
            if f.name != "seeds" and getattr(batch, f.name) is not None
        }
        arrays["keys"] = jax.vmap(jax.random.key)(jnp.asarray(batch.seeds))
        return arrays

    def _check(self, batch: Batch, max_steps: int, mode: Mode | None) -> Mode:
        if int(batch.max_new.max()) > max_steps:
            raise ValueError(f"max_new {int(batch.max_new.max())} > max_steps {max_steps}")
        longest = int((batch.lengths + batch.max_new).max())
        if longest > self.cfg.max_len:
            raise ValueError(
                f"a row's prompt + max_new ({longest} tokens) exceeds the model's max_len "
                f"{self.cfg.max_len}"
            )
        return choose_mode(batch, self.cfg.vocab_size) if mode is None else mode

    def __call__(self, batch: Batch, max_steps: int, mode: Mode | None = None):
        mode = self._check(batch, max_steps, mode)
        fn = self._fn(int(max_steps), mode)
        return jax.device_get(self._run(fn, self.state, self.device_arrays(batch)))

    def stream(
        self,
        batch: Batch,
        max_steps: int,
        chunk_steps: int,
        mode: Mode | None = None,
        *,
        growth: float = 1.0,
        max_chunk_steps: int | None = None,
    ):
        """The same generation in chunks: yields (lo, hi, tokens, done) after each chunk,
        where host `tokens` [B, hi - lo] are steps lo..hi-1 (PAD for rows already stopped)
        and `done` [B] says which rows have stopped. Chunk sizes follow `chunk_schedule`
        (`chunk_steps`, then times `growth`, at most `max_chunk_steps`). Each chunk is one
        compiled while_loop up to a traced stop step (one compile for all chunks). Same
        tokens as `__call__` for the same batch (the same per-step keys and cache)."""
        sizes = chunk_schedule(chunk_steps, growth, max_chunk_steps)
        mode = self._check(batch, max_steps, mode)
        arrays = self.device_arrays(batch)
        carry = self._run(self._fn(int(max_steps), mode, "start"), self.state, arrays)
        advance = self._fn(int(max_steps), mode, "advance")
        lo = 0
        while True:
            stop = min(lo + next(sizes), int(max_steps))
            carry = self._run(advance, self.state, arrays, carry, jnp.asarray(stop, jnp.int32))
            hi = int(carry["step"])
            done = np.asarray(carry["done"])
            tokens = np.asarray(jax.device_get(carry["out"]))[:, lo:hi]  # host slice: no compile
            yield lo, hi, tokens, done
            lo = hi
            if hi >= max_steps or done.all():
                return
