"""One way for every long job to stop on SIGTERM / SIGINT: save, say where, exit 143 / 130.

    with preemption.watch("codec training"):        # deferred: the job polls at step ends
        for step in ...:
            ...
            if preemption.requested():
                save(step)
                preemption.stop(f"checkpoint {step} saved in {directory}")   # raises

    with preemption.watch("tokenization", immediate=True,
                          note="finished splits are kept"):       # nothing unsaved to lose
        ...

Two modes, chosen by what a job holds in memory:
- deferred (jobs with state: the trainers): the first signal only sets a flag; the job
  finishes the step in flight, saves, and calls `stop`, which prints what was saved and
  raises `Preempted`.
- immediate (jobs whose finished work is already on disk and whose partial work is
  redone on a rerun: corpus build, tokenization, evaluation, the stages between steps):
  the signal raises `Preempted` where the job is. Their outputs are written atomically
  (`gpa_jax.paths.atomic_write`), so an interrupted one never looks finished.

`Preempted` is a `SystemExit` with status 128 + signal (143 SIGTERM, 130 SIGINT, the shell
convention): a launch entry point ends with that status and one message, no traceback,
and no `except Exception` in between swallows it. Contexts nest (the demo wraps every
stage in an immediate one; a trainer inside pushes a deferred one): the handlers are
installed once by the outermost context and the innermost one decides. A signal that
arrives while a deferred job finishes its last step is honoured when control returns to
an immediate context, so the demo never starts the next stage after it. A second Ctrl-C
aborts at once without saving (still exit 130).

Why not only orbax's preemption support: `CheckpointManager.reached_preemption` is JAX's
coordination-service sync point, which exists only in multi-process jobs and only sees
SIGTERM; the trainers here also run as one process and stop on Ctrl-C, and the data jobs
hold no Orbax state. Multi-host trainers agree on the flag across hosts themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Exit status of a run stopped by a signal: 128 + signal number.
EXIT_CODES = {sig: 128 + int(sig) for sig in SIGNALS}


class Preempted(SystemExit):
    """A job stopped on SIGTERM/SIGINT (after saving what it had); exits 128 + signal."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(EXIT_CODES.get(signum, 128 + int(signum)))
        self.signum = int(signum)
        self.message = message
        self.result = None  # what the job had done, where it has a result object

    def __str__(self) -> str:
        return self.message or f"stopped by {signal_name(self.signum)}"


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@dataclasses.dataclass
class _Frame:
    job: str
    immediate: bool
    note: str | Callable[[], str]
    on_signal: Callable[[int], None] | None

    def says(self) -> str:
        note = self.note() if callable(self.note) else self.note
        return note or "rerun the same command to resume"


class _State:
    def __init__(self):
        self.signum: int | None = None
        self.stack: list[_Frame] = []
        self.previous: dict[int, object] = {}


_STATE = _State()


def requested() -> int | None:
    """The signal received inside the current `watch` (None if none)."""
    return _STATE.signum


def _stopped(job: str, signum: int, detail: str) -> Preempted:
    message = f"{job}: stopped by {signal_name(signum)}; {detail}"
    # stderr, once: this is the line a user (or a scheduler's log) must see.
    print(message, file=sys.stderr, flush=True)
    return Preempted(signum, message)


def stop(saved: str, *, job: str | None = None) -> None:
    """Raises `Preempted` for the signal received, after a deferred job saved `saved`."""
    signum = _STATE.signum or signal.SIGTERM
    job = job or (_STATE.stack[-1].job if _STATE.stack else "job")
    raise _stopped(job, signum, f"{saved}; rerun the same command to resume")


def check() -> None:
    """Raises `Preempted` if a signal arrived (for points between units of work)."""
    if _STATE.signum is not None:
        frame = _STATE.stack[-1] if _STATE.stack else _Frame("job", True, "", None)
        raise _stopped(frame.job, _STATE.signum, frame.says())


def _preempted_cause(exc: BaseException) -> Preempted | None:
    """The `Preempted` that `exc` is, or was raised from or during (None if none)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Preempted):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _handle(signum: int, frame) -> None:
    del frame
    state = _STATE
    top = state.stack[-1] if state.stack else None
    for f in reversed(state.stack):
        if f.on_signal is not None:
            f.on_signal(signum)
            break
    if state.signum is not None:
        if signum == signal.SIGINT:  # a second Ctrl-C: the user does not want to wait
            raise _stopped(
                top.job if top else "job", signum, "second Ctrl-C: aborted without saving"
            )
        logging.warning("received %s again: already stopping", signal_name(signum))
        return
    state.signum = signum
    if top is not None and top.immediate:
        raise _stopped(top.job, signum, top.says())
    logging.warning(
        "received %s: %s stops after the current step and saves",
        signal_name(signum),
        top.job if top else "the job",
    )


@contextlib.contextmanager
def watch(
    job: str,
    *,
    immediate: bool = False,
    note: str | Callable[[], str] = "",
    on_signal: Callable[[int], None] | None = None,
) -> Iterator[None]:
    """Catches SIGTERM/SIGINT while the block runs (see the module docstring).

    job: named in the messages ("LM training"). note (immediate): what a rerun does, e.g.
    "finished splits are kept; a rerun resumes at the first unfinished one", or a function
    that says it when the signal comes (what has been kept by then).
    on_signal(signum): called from the handler first (e.g. to forward the signal to a child).
    """
    state = _STATE
    if threading.current_thread() is not threading.main_thread():
        # Python delivers signals to the main thread only; a job run from another thread
        # (a server, a notebook worker) keeps the default behaviour.
        logging.warning("%s: not in the main thread, SIGTERM/SIGINT will not save", job)
        yield
        return
    outermost = not state.stack
    if outermost:
        state.signum = None
        for sig in SIGNALS:
            state.previous[sig] = signal.signal(sig, _handle)
    state.stack.append(_Frame(job, immediate, note, on_signal))
    try:
        if immediate:
            check()  # a signal that came before this block: do not start it
        yield
    except BaseException as exc:
        state.stack.pop()
        stopped = _preempted_cause(exc) if state.signum is not None else None
        if stopped is not None and stopped is not exc:
            # The handler's Preempted landed inside a library that wrapped it in its own
            # error (JAX does when the signal comes during its pytree checks): the job
            # was still stopped by the signal, so it ends as one, with its status.
            raise stopped from None
        raise
    else:
        state.stack.pop()
        # A signal that arrived while an inner deferred job was finishing: the enclosing
        # immediate context stops here instead of starting its next piece of work.
        if state.stack and state.stack[-1].immediate and state.signum is not None:
            check()
    finally:
        if outermost:
            for sig, handler in state.previous.items():
                signal.signal(sig, handler)
            state.previous.clear()
            state.signum = None
            state.stack.clear()


def job(name: str, *, note: str = "rerun the same command to resume"):
    """Decorates a launch entry point's `main`: SIGTERM/SIGINT stop it with 143 / 130 and
    one message (immediate mode; the trainers inside push their own deferred handling)."""

    def decorate(main: Callable) -> Callable:
        import functools

        @functools.wraps(main)
        def wrapped(*args, **kwargs):
            with watch(name, immediate=True, note=note):
                return main(*args, **kwargs)

        return wrapped

    return decorate
