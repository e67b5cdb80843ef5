"""Continuous batching: a fixed number of slots over one KV cache, requests join and leave.

    engine = Engine(sampler, slots=8)
    engine.warmup()                        # compiles every bucket before the first request
    ticket = engine.submit(Request.tts("hello there", ref, seed=3))
    while not ticket.finished:
        for event in engine.step():        # join waiting requests, decode a few steps
            print(event.ticket.request.id, event.tokens, event.finished)
    print(ticket.result.rvq1)

Requests of any task share the slots, except greedy ASR requests when the sampler decodes
them by its joint CTC/attention beam search (`Sampler.searches`): each is searched whole,
as `Sampler.generate` does, in the `step()` that finds it waiting (one event, finished).
`step()` first lets waiting requests join the free slots (one prefill of up to
`max_join` prompts, its first tokens sampled from it), then runs up to `steps_per_call`
decode steps for every occupied slot; a request leaves its slot when it emits <eos> or
reaches its token budget, and the slot is free for the next join.
Prompts, budgets, sampling settings and the per-token sampling are the `Sampler`'s own
(`Sampler.prepare`, `decode.prefill_logits`, `decode.emit_tokens`), so a request gets
the tokens it gets from `Sampler.generate`.

Cache layout: one cache of `slots` rows and S = sampler.max_total_len slots per row, used
as a ring with one write position (the clock) for all rows. A request joining at clock c
has its (left-padded, bucket-length P) prompt written at ring slots c-P .. c-1 of its row;
each decode step writes every row's fed token at slot c and advances c. A row's tokens are
the `length + 1` ring slots ending at c, which the attention mask selects by ring distance;
attention does not care where in the row they sit, and RoPE positions are per row (0 at
the first prompt token), so a row attends exactly as it would alone. A request needs
prompt + budget <= S (what `Sampler.prepare` already guarantees).

Per-request determinism: the sampling key of a request's step s is fold_in(key(seed), s),
as in `Decoder`, and the sampling program's top-k width is fixed per engine
(`num_candidates`, default the whole vocabulary), so what a request draws never depends
on which slot it has or what else is in the batch. Greedy rows take the argmax either way.

Compiles (all done by `warmup`): joins, one per (join rows, prompt bucket): join rows are
powers of two up to `max_join`, prompt buckets `sampling.prompt_bucket` times powers of two
up to S; decode, one per static variant (all rows greedy or not, repetition penalty used
or not). Nothing is compiled per request.

Threads: an Engine is used from one thread (`gpa_jax.serving` runs it in its worker).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpa_jax import sharding as sharding_lib
from gpa_jax.models.layers import to_dtype
from gpa_jax.models.stack import cache_logical_axes, init_cache
from gpa_jax.sampling import decode as decode_lib
from gpa_jax.sampling.sampler import Request, RequestError, Result, Sampler

# Per-row settings the decode steps read; the names are `decode.Batch` fields.
ROW_FIELDS = ("max_new", "temperature", "top_k", "top_p", "repetition_penalty", "id_lo",
              "id_hi", "allow_eos", "seeds")  # fmt: skip
_ROW_DTYPES = {"temperature": jnp.float32, "top_p": jnp.float32, "repetition_penalty": jnp.float32,
               "allow_eos": jnp.bool_, "seeds": jnp.uint32}  # fmt: skip


class QueueFull(RuntimeError):
    """The engine's waiting queue is at its bound; the request was not taken."""


@dataclasses.dataclass(eq=False)
class Ticket:
    """One submitted request: its place in the engine and what it generated so far."""

    request: Request
    prepared: Any  # the Sampler's prepared request (prompt, budget, params, id range)
    serial: int
    submitted_s: float
    slot: int | None = None
    started_s: float | None = None  # when it joined a slot
    tokens: list[int] = dataclasses.field(default_factory=list)  # generated, <eos> excluded
    steps: int = 0  # tokens generated, <eos> included
    result: Result | None = None
    cancelled: bool = False

    @property
    def finished(self) -> bool:
        return self.result is not None


@dataclasses.dataclass
class Event:
    """What one `step` produced for one request."""

    ticket: Ticket
    tokens: np.ndarray  # int32: ids generated since the last event, <eos> excluded
    finished: bool  # then ticket.result is set


def _pow2_buckets(first: int, last: int) -> list[int]:
    """first, 2 first, 4 first, ... below `last`, then `last`."""
    out, size = [], max(1, int(first))
    while size < last:
        out.append(size)
        size *= 2
    return [*out, int(last)]


def _insert_rows(cache: jax.Array, part: jax.Array, rows: jax.Array, ring: jax.Array):
    """Writes part [n, kv, P, d] (or [layers, n, kv, P, d]) into rows `rows` at ring slots
    `ring` [P] of cache [B, kv, S, d] (or stacked). Rows out of range are dropped (filler)."""
    if cache.ndim == 4:
        values = jnp.swapaxes(part, 1, 2)  # [n, P, kv, d]: the indexed axes first
        return cache.at[rows[:, None], :, ring[None, :], :].set(values, mode="drop")
    values = jnp.transpose(part, (1, 3, 0, 2, 4))  # [n, P, layers, kv, d]
    return cache.at[:, rows[:, None], :, ring[None, :], :].set(values, mode="drop")


def _init_state(*, cfg, slots: int, cache_len: int):
    zeros = jnp.zeros((slots,), jnp.int32)
    return {
        "cache": init_cache(cfg, slots, cache_len),
        "tok": zeros,
        "length": zeros,  # RoPE position of `tok` = tokens before it in the row
        "step": zeros,  # tokens generated so far (the sampling step of the next one)
        "done": jnp.ones((slots,), jnp.bool_),  # free or finished rows
        "seen": jnp.zeros((slots, cfg.vocab_size), jnp.bool_),  # for the repetition penalty
        "clock": jnp.zeros((), jnp.int32),  # the ring slot the next fed token goes to
        "rows": {f: jnp.zeros((slots,), _ROW_DTYPES.get(f, jnp.int32)) for f in ROW_FIELDS},
    }


def _with_keys(arrays):
    return {**arrays, "keys": jax.vmap(jax.random.key)(arrays["seeds"])}


def _join(weights, state, arrays, rows, *, graphdef, rules, compute_dtype, mode, cache_len):
    """Prefill of the joining prompts, their first tokens, and their rows of the state."""
    model = decode_lib.merged_model(graphdef, weights, compute_dtype)
    P = arrays["tokens"].shape[1]
    logits, part = decode_lib.prefill_logits(model, arrays, P, rules)
    # Step 0 has seen nothing, so no repetition penalty applies (as in Decoder).
    first, _, done = decode_lib.emit_tokens(
        logits, 0, _with_keys(arrays), None, jnp.zeros(rows.shape, jnp.bool_), mode
    )
    ring = (state["clock"] - P + jnp.arange(P, dtype=jnp.int32)) % cache_len
    cache = jax.tree.map(lambda c, p: _insert_rows(c, p, rows, ring), state["cache"], part)

    def put(x, values):
        return x.at[rows].set(values.astype(x.dtype), mode="drop")

    new = {
        "cache": cache,
        "tok": put(state["tok"], first),
        "length": put(state["length"], arrays["lengths"]),
        "step": put(state["step"], jnp.ones_like(first)),
        "done": put(state["done"], done),
        "seen": put(state["seen"], jax.nn.one_hot(first, state["seen"].shape[1], dtype=jnp.bool_)),
        "clock": state["clock"],
        "rows": {f: put(state["rows"][f], arrays[f]) for f in ROW_FIELDS},
    }
    return new, {"first": first, "done": done}


def _advance(weights, state, stop, *, graphdef, compute_dtype, mode, steps, cache_len):
    """Up to `steps` decode steps of every row not done (rows in `stop` are ended first)."""
    make_model = decode_lib.loop_model(graphdef, weights, compute_dtype)
    arrays = _with_keys(state["rows"])
    slots = state["tok"].shape[0]
    ring = jnp.arange(cache_len, dtype=jnp.int32)[None, :]
    keep = ("tok", "length", "step", "seen", "cache", "clock")
    carry = {k: state[k] for k in keep}
    carry.update(i=jnp.asarray(0, jnp.int32), done=state["done"] | stop,
                 out=jnp.full((slots, steps), decode_lib.PAD_ID, jnp.int32))  # fmt: skip
    if not mode.repetition_penalty:
        carry["seen"] = None  # only rows with a penalty read it, and none is running

    def cond(c):
        return (c["i"] < steps) & ~jnp.all(c["done"])

    def body(c):
        write = c["clock"]
        # A row's tokens (this one included) are the length + 1 slots ending at `write`.
        kv_mask = ((write - ring) % cache_len) <= c["length"][:, None]
        logits, cache = make_model().decode_step(
            c["tok"][:, None], c["length"][:, None], kv_mask, c["cache"], write
        )
        live = ~c["done"]
        new, seen, done = decode_lib.emit_tokens(logits[:, 0], c["step"], arrays, c["seen"],
                                                 c["done"], mode)  # fmt: skip
        return {
            "i": c["i"] + 1,
            "tok": jnp.where(live, new, c["tok"]),
            "length": c["length"] + live,
            "step": c["step"] + live,
            "done": done,
            "seen": seen,
            "cache": cache,
            "clock": (write + 1) % cache_len,
            "out": jax.lax.dynamic_update_slice_in_dim(c["out"], new[:, None], c["i"], axis=1),
        }

    c = jax.lax.while_loop(cond, body, carry)
    new = {k: c[k] for k in keep}
    new.update(done=c["done"], rows=state["rows"])
    if c["seen"] is None:
        new["seen"] = state["seen"]
    return new, {"tokens": c["out"], "step": c["step"], "done": c["done"], "iterations": c["i"]}


class Engine:
    """Continuous batching over one Sampler's model (module docstring)."""

    def __init__(
        self,
        sampler: Sampler,
        *,
        slots: int = 8,
        max_queue: int = 64,
        steps_per_call: int = 8,
        max_join: int = 4,
        num_candidates: int = 0,
    ):
        """slots: rows of the KV cache (requests decoded together); max_queue: requests
        that may wait for a slot (`submit` raises QueueFull past it); steps_per_call: decode
        steps per `step()` (joins and leaves happen between calls: more steps cost fewer
        host round trips, fewer let a waiting request join sooner); max_join: prompts
        prefilled together; num_candidates: the sampled path's top-k width (0 = the whole
        vocabulary, exact for every top_k / top_p; a smaller width truncates requests whose
        top_k is 0 or larger)."""
        if min(slots, steps_per_call, max_join, max_queue) < 1:
            raise ValueError(
                f"slots={slots}, steps_per_call={steps_per_call}, max_join={max_join} and "
                f"max_queue={max_queue} must be >= 1"
            )
        self.sampler = sampler
        decoder = sampler.decoder
        self.cfg = sampler.cfg
        multiple = sampler.batch_multiple
        self.slots = -(-int(slots) // multiple) * multiple
        self.max_join = min(-(-int(max_join) // multiple) * multiple, self.slots)
        self.max_queue = int(max_queue)
        self.steps_per_call = int(steps_per_call)
        self.cache_len = int(sampler.max_total_len)
        vocab = int(self.cfg.vocab_size)
        self.num_candidates = min(int(num_candidates), vocab) if num_candidates else vocab
        self.prompt_buckets = _pow2_buckets(sampler.sampling.prompt_bucket, self.cache_len)
        self.join_sizes = [n * multiple for n in _pow2_buckets(1, self.max_join // multiple)]
        self._run = decoder._run
        self._weights = decoder.state
        static = dict(graphdef=decoder.graphdef, compute_dtype=to_dtype(self.cfg.dtype),
                      cache_len=self.cache_len)  # fmt: skip
        out_shardings = self._state_shardings(decoder.mesh, decoder.rules)
        jit_kw = {} if out_shardings is None else {"out_shardings": out_shardings}
        self._join_fn = jax.jit(
            functools.partial(_join, rules=decoder.rules, mode=self._mode(sampled=True), **static),
            donate_argnums=(1,), **jit_kw,
        )  # fmt: skip
        self._advance_fns = {}
        self._advance_static = dict(steps=self.steps_per_call, **static)
        self._advance_jit = jit_kw
        init = functools.partial(
            _init_state, cfg=self.cfg, slots=self.slots, cache_len=self.cache_len
        )
        init_kw = {} if out_shardings is None else {"out_shardings": out_shardings[0]}
        self._init_fn = jax.jit(init, **init_kw)
        self._serial = 0
        self.stats = collections.Counter()  # joins, decode_calls, decode_steps, tokens, finished, searched
        self.reset()

    def reset(self) -> None:
        """Empties the engine (every request dropped, the cache zeroed); the compiled
        programs stay. A server calls it after a failed step."""
        for ticket in [*getattr(self, "_waiting", ()), *getattr(self, "_tickets", ())]:
            if ticket is not None and not ticket.finished:
                ticket.cancelled, ticket.slot = True, None
        self._state = self._run(self._init_fn)
        self._tickets: list[Ticket | None] = [None] * self.slots
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._stop = np.zeros(self.slots, np.bool_)  # slots freed by a cancel, to end on device

    def _state_shardings(self, mesh, rules):
        """(state, outputs) shardings on a mesh: the cache as the model's rules say, the
        rest replicated; None without a mesh. Fixed shardings keep each program's inputs
        the same from call to call, so nothing recompiles."""
        if mesh is None or rules is None:
            return None
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        abstract = jax.eval_shape(functools.partial(
            _init_state, cfg=self.cfg, slots=self.slots, cache_len=self.cache_len))  # fmt: skip
        state = jax.tree.map(lambda _: replicated, abstract)
        state["cache"] = jax.tree.map(
            lambda axes: jax.sharding.NamedSharding(mesh, sharding_lib.logical_to_mesh_spec(axes, rules)),
            cache_logical_axes(self.cfg), is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x),
        )  # fmt: skip
        return state, replicated

    def _mode(self, *, sampled: bool, penalty: bool = False) -> decode_lib.Mode:
        return decode_lib.Mode(greedy=not sampled, repetition_penalty=penalty,
                               num_candidates=self.num_candidates if sampled else 0)  # fmt: skip

    def _advance_fn(self, mode: decode_lib.Mode):
        if mode not in self._advance_fns:
            self._advance_fns[mode] = jax.jit(
                functools.partial(_advance, mode=mode, **self._advance_static),
                donate_argnums=(1,), **self._advance_jit,
            )  # fmt: skip
        return self._advance_fns[mode]

    # --- requests -----------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(t is not None for t in self._tickets)

    @property
    def idle(self) -> bool:
        return not self._waiting and self.active == 0

    def submit(self, request: Request) -> Ticket:
        """Prepares `request` (RequestError if it cannot be served) and queues it for the
        next free slot (QueueFull when max_queue requests already wait)."""
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(f"{len(self._waiting)} requests already wait for a slot")
        prepared = self.sampler.prepare(request, self._serial)
        if len(prepared.prompt) + prepared.max_new > self.cache_len:  # prepare caps it
            raise RequestError(f"prompt + budget exceed the cache of {self.cache_len} slots")
        ticket = Ticket(request, prepared, self._serial, time.perf_counter())
        self._serial += 1
        self._waiting.append(ticket)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drops a request (waiting or running); its slot is free from the next step on."""
        if ticket.finished:
            return
        ticket.cancelled = True
        if ticket in self._waiting:
            self._waiting.remove(ticket)
        if ticket.slot is not None:
            self._stop[ticket.slot] = True
            self._tickets[ticket.slot] = None
            ticket.slot = None

    # --- the loop -------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """Joins waiting requests into free slots, then decodes up to steps_per_call steps
        of every running request. Returns one Event per request that got tokens or ended."""
        events: dict[int, tuple[Ticket, list[int]]] = {}
        self._search_waiting(events)
        joined = self._join_waiting()
        running = [t for t in self._tickets if t is not None and not t.finished]
        decoded = None
        if running:
            params = [t.prepared.params for t in running]
            mode = self._mode(sampled=any(p.temperature > 0 for p in params),
                              penalty=any(p.repetition_penalty != 1.0 for p in params))  # fmt: skip
            stop = jnp.asarray(self._stop)
            self._stop[:] = False
            self._state, decoded = self._run(
                self._advance_fn(mode), self._weights, self._state, stop
            )
        if joined is not None:  # read after the decode call was queued: one wait for both
            tickets, out = joined
            out = jax.device_get(out)
            for i, ticket in enumerate(tickets):
                self._take(ticket, [int(out["first"][i])], bool(out["done"][i]), events)
        if decoded is not None:
            out = jax.device_get(decoded)
            self.stats["decode_calls"] += 1
            self.stats["decode_steps"] += int(out["iterations"])
            for ticket in running:
                if ticket.finished or ticket.slot is None:
                    continue
                slot = ticket.slot
                n = int(out["step"][slot]) - ticket.steps
                self._take(
                    ticket, out["tokens"][slot, :n].tolist(), bool(out["done"][slot]), events
                )
        for ticket, _ in events.values():
            if ticket.finished and ticket.slot is not None:
                self._tickets[ticket.slot] = None
                ticket.slot = None
        return [Event(t, np.asarray(new, np.int32), t.finished) for t, new in events.values()]

    def _take(self, ticket: Ticket, new: list[int], done: bool, events) -> None:
        """Appends a request's new ids; on done, its Result."""
        _, fresh = events.setdefault(ticket.serial, (ticket, []))
        ticket.steps += len(new)
        self.stats["tokens"] += len(new)
        hit_eos = decode_lib.EOS_ID in new
        if hit_eos:
            new = new[: new.index(decode_lib.EOS_ID)]
        ticket.tokens.extend(new)
        fresh.extend(new)
        if done or hit_eos:
            ticket.result = self.sampler.result(ticket.prepared, ticket.tokens, hit_eos)
            self.stats["finished"] += 1

    def _search_waiting(self, events) -> None:
        """Decodes the waiting requests that the sampler's ASR search serves
        (`Sampler.searches`: beam hypotheses, not one slot's row) whole, in this step."""
        for ticket in [t for t in self._waiting if self.sampler.searches(t.prepared)]:
            self._waiting.remove(ticket)
            ticket.started_s = time.perf_counter()
            ticket.result = self.sampler.search(ticket.prepared)
            ticket.tokens = ticket.result.tokens.tolist()
            ticket.steps = len(ticket.tokens) + (ticket.result.stop == "eos")
            events[ticket.serial] = (ticket, list(ticket.tokens))
            self.stats["tokens"] += ticket.steps
            self.stats["searched"] += 1
            self.stats["finished"] += 1

    def _join_waiting(self):
        """One prefill of up to max_join waiting requests into free slots (dispatched, not
        waited for): (tickets, device outputs) or None."""
        free = [s for s, t in enumerate(self._tickets) if t is None]
        n = min(len(free), len(self._waiting), self.max_join)
        if n == 0:
            return None
        tickets = [self._waiting.popleft() for _ in range(n)]
        longest = max(len(t.prepared.prompt) for t in tickets)
        P = next(b for b in self.prompt_buckets if b >= longest)
        size = next(b for b in self.join_sizes if b >= n)
        batch, _ = self.sampler.decode_batch([t.prepared for t in tickets], prompt_length=P,
                                             batch_size=size)  # fmt: skip
        rows = np.full(size, self.slots, np.int32)  # filler rows point past the cache: dropped
        now = time.perf_counter()
        for i, ticket in enumerate(tickets):
            ticket.slot, ticket.started_s = free[i], now
            self._tickets[free[i]] = ticket
            rows[i] = free[i]
            self._stop[free[i]] = False
        self._state, out = self._run(self._join_fn, self._weights, self._state,
                                     self._arrays(batch), jnp.asarray(rows))  # fmt: skip
        self.stats["joins"] += 1
        return tickets, out

    @staticmethod
    def _arrays(batch: decode_lib.Batch) -> dict[str, jax.Array]:
        return {f.name: jnp.asarray(getattr(batch, f.name)) for f in dataclasses.fields(batch)
                if getattr(batch, f.name) is not None}  # fmt: skip

    # --- conveniences ---------------------------------------------------------------------

    def warmup(self, log=None) -> int:
        """Compiles every join bucket and decode variant without touching a request (filler
        rows only, every slot done); not the ASR searches (compiled per shape on first
        use). Returns the number of programs. `log(message)` is called once per program."""
        if not self.idle:
            raise RuntimeError("warm up an idle engine")
        count = 0
        for sampled in (False, True):
            for penalty in (False, True):
                stop = jnp.ones(self.slots, jnp.bool_)
                mode = self._mode(sampled=sampled, penalty=penalty)
                self._state, _ = self._run(self._advance_fn(mode), self._weights, self._state, stop)
                count += 1
                if log:
                    log(f"decode program {count}: sampled={sampled}, penalty={penalty}")
        dim = self.cfg.audio_feature_dim if self.sampler.cfg.audio_input != "tokens" else 0
        for size in self.join_sizes:
            for P in self.prompt_buckets:
                audio = (
                    [(np.zeros((1, dim), np.float32), np.zeros(1, np.int32))] * size
                    if dim
                    else None
                )
                batch = decode_lib.make_batch(
                    [np.asarray([decode_lib.EOS_ID])] * size, max_new=[1] * size,
                    temperature=[0.0] * size, top_k=[0] * size, top_p=[1.0] * size,
                    repetition_penalty=[1.0] * size, id_ranges=[(0, 1)] * size, seeds=[0] * size,
                    prompt_length=P, audio=audio,
                )  # fmt: skip
                rows = jnp.full(size, self.slots, jnp.int32)
                self._state, out = self._run(self._join_fn, self._weights, self._state,
                                             self._arrays(batch), rows)  # fmt: skip
                jax.block_until_ready(out)
                count += 1
                if log:
                    log(f"join program {count}: {size} prompts of {P} tokens")
        return count

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        """Serves `requests` through the slots (submitted as the queue allows) and returns
        one Result per request, in order; a rejected request's Result carries the error."""
        results: list[Result | None] = [None] * len(requests)
        tickets: dict[int, int] = {}
        pending = collections.deque(enumerate(requests))
        while pending or not self.idle:
            while pending and len(self._waiting) < self.max_queue:
                i, request = pending.popleft()
                try:
                    tickets[self.submit(request).serial] = i
                except RequestError as e:
                    results[i] = Result(id=request.id, task=str(request.task), error=str(e))
            for event in self.step():
                if event.finished and event.ticket.serial in tickets:
                    results[tickets[event.ticket.serial]] = event.ticket.result
        return results  # type: ignore[return-value]
