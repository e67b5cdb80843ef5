"""Joint CTC/attention beam search for ASR, compiled as one program per shape bucket.

An LM trained with the auxiliary ASR CTC (`model.ctc_weight > 0`,
`gpa_jax.training.asr_ctc`) has two views of the transcript: the decoder's next-token
distribution (attention) and the CTC head over the source-audio positions' final hidden
states. Decoding with both (Watanabe et al. 2017, "Hybrid CTC/attention"; the prefix
scorer of ESPnet's `CTCPrefixScore`) scores a hypothesis h as

    (1 - ctc_weight) * log p_att(h) + ctc_weight * log p_ctc(h... )

where p_ctc(h...) is the CTC probability that the transcript *starts with* h (the prefix
probability), and log p_ctc(h <eos>) is the full CTC probability of h. The CTC term keeps
the decoder on what the audio says: greedy attention decoding of the CPU-sized default LM
drifts into plausible corpus sentences, which the prefix probability rules out.

Prefix probabilities, per hypothesis g (forward variables over the T source frames):
r_n[t] / r_b[t] = probability of frames 0..t emitting g and ending in a non-blank / blank.
Extending g by token c (x_t = the CTC log-probabilities of frame t):

    phi[t]   = r_b[t]                   if c is g's last token (a blank must separate)
               r_n[t] + r_b[t]          otherwise
    r_n'[0]  = x_0(c) if g is empty else 0
    r_n'[t]  = (r_n'[t-1] + phi[t-1]) x_t(c)
    r_b'[t]  = (r_n'[t-1] + r_b'[t-1]) x_t(blank)
    psi(gc)  = r_n'[0] + sum_t phi[t-1] x_t(c)          (in log space throughout)

and psi(g <eos>) = r_n[T-1] + r_b[T-1]. For the empty prefix r_b[t] = prod x_0..t(blank).
Frames are padded to a bucket with blank log-probability 0 and every other token -inf,
which carries r_n + r_b unchanged to the last slot: padded frames change no score.

The search (`search`): a beam of `beam` hypotheses; per step each expands its `candidates`
best tokens by attention (the output id range and <eos>), every candidate gets the joint
score, <eos> candidates end their hypothesis (the best ended one is kept), and the `beam`
best other candidates continue (the KV cache rows follow their parents). Joint scores
never increase as a hypothesis grows (both terms are log-probabilities of nested events),
so the search stops once the best ended hypothesis beats every live one, or at the token
budget. With beam 1 and ctc_weight 0 this is greedy decoding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpa_jax.models.layers import to_dtype
from gpa_jax.sampling import decode as decode_lib
from gpa_jax.tasks.ids import EOS_ID, PAD_ID

NEG_INF = -1e30  # finite "log 0": -inf - -inf would make NaNs in score differences


@dataclasses.dataclass(frozen=True)
class SearchShape:
    """Static sizes of one compiled search (bucketed by the caller)."""

    prompt_length: int  # P: the left-padded prompt
    frames: int  # T: the source frames, padded
    max_steps: int  # tokens the search may generate (<eos> included)
    beam: int
    candidates: int  # tokens each hypothesis expands per step


def extend_prefixes(ctc_logp, r_n, r_b, last, cands, first):
    """CTC prefix extension of every hypothesis by each of its candidate tokens.

    ctc_logp [T, V] log-probabilities per frame (blank = PAD_ID); r_n, r_b [W, T] the
    hypotheses' forward variables; last [W] their last tokens (-1: empty); cands [W, K];
    first: whether the hypotheses are empty. Returns (psi [W, K] prefix log-probabilities
    of g + c, r_n', r_b' [W, K, T])."""
    T = ctc_logp.shape[0]
    x = jnp.take(ctc_logp, cands, axis=1)  # [T, W, K]
    blank = ctc_logp[:, PAD_ID][:, None, None]
    total = jnp.logaddexp(r_n, r_b)  # [W, T]
    phi = jnp.where((cands == last[:, None])[None], r_b.T[:, :, None], total.T[:, :, None])
    start_n = jnp.where(first, x[0], NEG_INF)
    start_b = jnp.full_like(start_n, NEG_INF)

    def frame(carry, inputs):
        n_prev, b_prev, psi = carry
        x_t, blank_t, phi_prev = inputs
        n = jnp.logaddexp(n_prev, phi_prev) + x_t
        b = jnp.logaddexp(n_prev, b_prev) + blank_t
        return (n, b, jnp.logaddexp(psi, phi_prev + x_t)), (n, b)

    (_, _, psi), (ns, bs) = jax.lax.scan(
        frame,
        (start_n, start_b, start_n),
        (x[1:], jnp.broadcast_to(blank[1:], x[1:].shape), phi[:-1]),
    )
    new_n = jnp.concatenate([start_n[None], ns]) if T > 1 else start_n[None]
    new_b = jnp.concatenate([start_b[None], bs]) if T > 1 else start_b[None]
    return jnp.maximum(psi, NEG_INF), jnp.moveaxis(new_n, 0, -1), jnp.moveaxis(new_b, 0, -1)


def _take_rows(cache, rows, stacked: bool):
    """The KV cache's rows `rows` (batch axis 0, or 1 under scanned layers)."""
    return jax.tree.map(lambda c: jnp.take(c, rows, axis=1 if stacked else 0), cache)


def _masked_logp(logits, id_lo, id_hi):
    """log-softmax over the whole vocabulary, then only [id_lo, id_hi) and <eos> kept."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ids = jnp.arange(logp.shape[-1])
    allowed = ((ids >= id_lo) & (ids < id_hi)) | (ids == EOS_ID)
    return jnp.where(allowed, logp, NEG_INF)


def _search(state, arrays, *, graphdef, shape: SearchShape, rules, compute_dtype, stacked, use_ctc):
    """The whole search for one prompt (arrays: `decode.Batch` fields, row 0 the prompt,
    plus frame_index [T], frame_valid [T] and ctc_weight). Without `use_ctc` the CTC
    term is left out (an attention-only beam search)."""
    P, T, W, K = shape.prompt_length, shape.frames, shape.beam, shape.candidates
    L = P + shape.max_steps
    model = decode_lib.merged_model(graphdef, state, compute_dtype)
    h, cache = decode_lib.prefill_hidden(model, arrays, L, rules)
    lam = arrays["ctc_weight"]
    id_lo, id_hi = arrays["id_lo"][0], arrays["id_hi"][0]
    att0 = _masked_logp(model.logits(h[:1, -1:])[:, 0], id_lo, id_hi)  # [1, V]: row 0
    if use_ctc:
        frames = jnp.take(h[0], arrays["frame_index"], axis=0)  # [T, D]
        ctc = jax.nn.log_softmax(model.ctc_logits(frames[None])[0].astype(jnp.float32), axis=-1)
        # A CTC over the vocabulary's first ids only (model.ctc_classes) gives the rest
        # probability 0, so candidate ids index it as they index att0.
        ctc = jnp.pad(ctc, ((0, 0), (0, att0.shape[-1] - ctc.shape[-1])), constant_values=NEG_INF)
        pad_row = jnp.where(jnp.arange(ctc.shape[-1]) == PAD_ID, 0.0, NEG_INF)
        # Padded frames: blank with probability 1 (module docstring).
        ctc = jnp.where(arrays["frame_valid"][:, None], ctc, pad_row[None])
    else:
        ctc = jnp.zeros((1, att0.shape[-1]), jnp.float32)  # unread: every psi term is 0
        T = 1
    empty_b = jnp.cumsum(ctc[:, PAD_ID])

    make_model = decode_lib.loop_model(graphdef, state, compute_dtype)
    pad = P - arrays["lengths"][0]
    all_slots = jnp.arange(L, dtype=jnp.int32)
    alive0 = jnp.arange(W) == 0
    carry = {
        "step": jnp.asarray(0, jnp.int32),
        "cache": _take_rows(cache, jnp.zeros((W,), jnp.int32), stacked),
        "att": jnp.broadcast_to(att0, (W, att0.shape[-1])),
        "score": jnp.where(alive0, 0.0, NEG_INF),
        "psi": jnp.zeros((W,), jnp.float32),
        "r_n": jnp.full((W, T), NEG_INF),
        "r_b": jnp.broadcast_to(empty_b, (W, T)),
        "last": jnp.full((W,), -1, jnp.int32),
        "out": jnp.full((W, shape.max_steps), PAD_ID, jnp.int32),
        "best": jnp.asarray(NEG_INF, jnp.float32),
        "best_out": jnp.full((shape.max_steps,), PAD_ID, jnp.int32),
        "best_len": jnp.asarray(0, jnp.int32),
    }
    max_new = arrays["max_new"][0]

    def cond(c):
        live = jnp.max(c["score"])
        return (c["step"] < max_new) & (live > NEG_INF / 2) & (live > c["best"])

    def body(c):
        step = c["step"]
        att_top, cands = jax.lax.top_k(c["att"], K)  # [W, K]
        is_eos = cands == EOS_ID
        if use_ctc:
            psi_ext, new_n, new_b = extend_prefixes(
                ctc, c["r_n"], c["r_b"], c["last"], cands, step == 0
            )
            psi_eos = jnp.logaddexp(c["r_n"][:, -1], c["r_b"][:, -1])
            psi_c = jnp.where(is_eos, psi_eos[:, None], psi_ext)
        else:
            psi_ext = psi_c = jnp.zeros(cands.shape, jnp.float32)
            new_n = new_b = jnp.zeros((*cands.shape, T), jnp.float32)
        joint = c["score"][:, None] + (1.0 - lam) * att_top + lam * (psi_c - c["psi"][:, None])
        joint = jnp.where(
            (c["score"] > NEG_INF / 2)[:, None] & (att_top > NEG_INF / 2), joint, NEG_INF
        )
        # <eos> ends a hypothesis: keep the best ended one (its tokens are this step's `out`).
        ended = jnp.max(jnp.where(is_eos, joint, NEG_INF), axis=1)  # [W]
        w_end = jnp.argmax(ended)
        better = ended[w_end] > c["best"]
        best = jnp.where(better, ended[w_end], c["best"])
        best_out = jnp.where(better, c["out"][w_end], c["best_out"])
        best_len = jnp.where(better, step, c["best_len"])
        # The best other candidates continue.
        flat = jnp.where(is_eos, NEG_INF, joint).reshape(-1)
        score, pick = jax.lax.top_k(flat, W)
        parent, k = pick // K, pick % K
        tok = cands[parent, k]
        cache_rows = _take_rows(c["cache"], parent, stacked)
        out = c["out"][parent].at[:, step].set(tok)
        index = P + step  # the slot the new token is written to
        kv_mask = ((all_slots >= pad) & (all_slots <= index))[None].repeat(W, 0)
        pos = jnp.full((W, 1), arrays["lengths"][0] + step, jnp.int32)
        logits, cache_rows = make_model().decode_step(tok[:, None], pos, kv_mask, cache_rows, index)
        return {
            "step": step + 1,
            "cache": cache_rows,
            "att": _masked_logp(logits[:, 0], id_lo, id_hi),
            "score": score,
            "psi": psi_ext[parent, k],
            "r_n": new_n[parent, k],
            "r_b": new_b[parent, k],
            "last": tok,
            "out": out,
            "best": best,
            "best_out": best_out,
            "best_len": best_len,
        }

    c = jax.lax.while_loop(cond, body, carry)
    # No hypothesis ended within the budget: the best live one, cut at the budget.
    ended = c["best"] > NEG_INF / 2
    return {
        "tokens": jnp.where(ended, c["best_out"], c["out"][jnp.argmax(c["score"])]),
        "num_tokens": jnp.where(ended, c["best_len"], jnp.minimum(c["step"], max_new)),
        "hit_eos": ended,
        "score": jnp.where(ended, c["best"], jnp.max(c["score"])),
    }


class JointSearch:
    """Compiled joint CTC/attention searches of one model (module docstring), one compile
    per `SearchShape`."""

    def __init__(self, decoder: decode_lib.Decoder, *, use_ctc: bool = True):
        """use_ctc False: attention-only beam search (for an LM without a CTC head)."""
        self.decoder = decoder
        self.use_ctc = bool(use_ctc)
        self._compiled: dict[SearchShape, Any] = {}

    def _fn(self, shape: SearchShape):
        if shape not in self._compiled:
            d = self.decoder
            self._compiled[shape] = jax.jit(functools.partial(
                _search, graphdef=d.graphdef, shape=shape, rules=d.rules,
                compute_dtype=to_dtype(d.cfg.dtype), stacked=bool(d.cfg.scan_layers),
                use_ctc=self.use_ctc,
            ))  # fmt: skip
        return self._compiled[shape]

    def __call__(self, batch: decode_lib.Batch, frame_index: np.ndarray, shape: SearchShape,
                 ctc_weight: float) -> dict[str, np.ndarray]:  # fmt: skip
        """One prompt (`batch` of one row, prompt left-padded to shape.prompt_length);
        frame_index: the prompt-slot index of each source frame (at most shape.frames).
        Returns host arrays: tokens [max_steps], num_tokens (<eos> excluded), hit_eos,
        score (the joint log-score of the chosen hypothesis)."""
        n = len(frame_index)
        if not 0 < n <= shape.frames:
            raise ValueError(f"{n} source frames for a search of {shape.frames}")
        arrays = self.decoder.device_arrays(batch)
        arrays["frame_index"] = jnp.asarray(
            np.pad(np.asarray(frame_index, np.int32), (0, shape.frames - n))
        )
        arrays["frame_valid"] = jnp.arange(shape.frames) < n
        arrays["ctc_weight"] = jnp.asarray(ctc_weight, jnp.float32)
        return jax.device_get(self.decoder._run(self._fn(shape), self.decoder.state, arrays))
