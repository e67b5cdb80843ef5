"""Joining a multi-process JAX job, and stopping with one clear line when a peer is lost.

Every process of a multi-host run (TPU pod slice, GPU nodes, or several processes on one
machine with CPU collectives) runs the same `python -m launch.train` command; they meet
through `jax.distributed.initialize`. Each field of the job is taken from the first of:

    coordinator_address   --coordinator_address, $JAX_COORDINATOR_ADDRESS
    num_processes         --num_processes,       $JAX_NUM_PROCESSES
    process_id            --process_id,          $JAX_PROCESS_ID

and whatever is still unset JAX detects itself (Cloud TPU metadata, SLURM, Open MPI).
(JAX reads only JAX_COORDINATOR_ADDRESS from the environment; the other two are read
here.) On CPU the processes exchange data through gloo, jax's default CPU collectives.

A lost peer: JAX's coordination service notices a process that stopped sending
heartbeats (after `heartbeat_timeout_s`) or a coordinator that stopped answering (at
once), and the runtime then aborts every other process from a C++ thread, printing a
fatal log and a stack trace; a survivor blocked in a collective would otherwise wait
for ever. Nothing in Python runs before that abort (the runtime's callback hook cannot
be used from Python in this jaxlib), so `supervise` runs the trainer as a child process
and watches it: the runtime's fatal block (and the traceback a failing collective may
start at the same moment) is held back, and the supervisor prints one line naming the
lost process and exits with `LOST_PEER_STATUS`. Everything else the child prints passes
through; SIGTERM/SIGINT are forwarded once (the child runs in its own session, as sweep
runs do); the child dies with the supervisor (Linux PR_SET_PDEATHSIG), so killing a
launch.train process kills its trainer.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from absl import logging

from gpa_jax.errors import UserError

# JAX's default is 100 s; a survivor of a lost peer should stop well within a minute.
DEFAULT_HEARTBEAT_TIMEOUT_S = 30
# Exit status of a process stopped because a peer was lost (EX_TEMPFAIL: rerun as is).
LOST_PEER_STATUS = 75
# Set by `supervise` in its child: the supervisor's pid (the child joins the job itself).
SUPERVISOR_ENV = "GPA_JAX_SUPERVISOR_PID"
_ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


class MultihostError(UserError, ValueError):
    """The flags / environment describe no usable multi-process job."""


@dataclasses.dataclass(frozen=True)
class Job:
    """What this process knows of the job; None fields are left to JAX's detection."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def describe(self) -> str:
        """The fields that are set, e.g. "coordinator_address=h:1, num_processes=2"."""
        given = [f"{k}={v}" for k, v in dataclasses.asdict(self).items() if v is not None]
        return ", ".join(given) or "nothing given"


def cluster_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a scheduler describes a multi-process job JAX detects by itself: a TPU
    slice with several workers, TPU multi-slice (MEGASCALE_*), SLURM / Open MPI with
    more than one task."""
    env = os.environ if environ is None else environ
    if env.get("MEGASCALE_COORDINATOR_ADDRESS") or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return any(
        _int(env.get(var) or "1", var) > 1 for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
    )


def _int(text: str | int, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MultihostError(f"{name}={text!r} is not an integer") from None


def resolve_job(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Job:
    """The job from the arguments (flags), else the JAX_* variables; checked for sense."""
    env = os.environ if environ is None else environ
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    for field, var in _ENV.items():
        if given[field] is None and env.get(var):
            given[field] = env[var] if field == "coordinator_address" else _int(env[var], var)
    job = Job(**given)
    n, i, address = job.num_processes, job.process_id, job.coordinator_address
    if n is not None and n < 1:
        raise MultihostError(f"num_processes={n} must be >= 1")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        raise MultihostError(f"process_id={i} must be in [0, num_processes={n})")
    if address is not None and not re.fullmatch(r".+:\d+", address):
        raise MultihostError(f"coordinator address {address!r} must be host:port")
    if not cluster_env(env):  # nothing else can fill in the missing fields
        missing = [f for f, v in dataclasses.asdict(job).items() if v is None]
        if missing and len(missing) < 3:
            names = ", ".join(f"--{f} (or ${_ENV[f]})" for f in missing)
            raise MultihostError(f"a multi-process job ({job.describe()}) also needs {names}")
    return job


def wanted(multihost: bool | None, job: Job, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to join a job: `multihost` if given, else when `job` names a coordinator
    or a scheduler describes a multi-process job."""
    if multihost is not None:
        return multihost
    return job.coordinator_address is not None or cluster_env(environ)


def initialize(job: Job, *, heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S) -> None:
    """`jax.distributed.initialize` for `job`; must run before anything touches a device.

    A process that loses a peer is aborted by the runtime after `heartbeat_timeout_s`
    (see the module docstring; `supervise` turns that into one line).
    """
    import jax

    if heartbeat_timeout_s < 1:
        raise MultihostError(f"heartbeat timeout {heartbeat_timeout_s} s must be >= 1")
    _die_with_supervisor()
    try:
        jax.distributed.initialize(
            job.coordinator_address,
            job.num_processes,
            job.process_id,
            heartbeat_timeout_seconds=int(heartbeat_timeout_s),
        )
    except (ValueError, TypeError) as error:  # JAX found no complete job description
        raise MultihostError(
            f"cannot join a multi-process job ({job.describe()}): {error} Give "
            "--coordinator_address, --num_processes and --process_id (or $JAX_*) on every "
            "process, or run under a scheduler JAX knows (Cloud TPU, SLURM, Open MPI)"
        ) from None
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices (heartbeat timeout %d s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        heartbeat_timeout_s,
    )


# --- the supervisor --------------------------------------------------------------------------


class LostPeer(SystemExit):
    """This process stopped because another process of the job was lost; exits
    LOST_PEER_STATUS after printing `message` (one line)."""

    def __init__(self, message: str):
        super().__init__(LOST_PEER_STATUS)
        self.message = message

    def __str__(self) -> str:
        return self.message


# In the trainer a `supervise` call started: the supervisor's pid (taken out of the
# environment, so that processes this one starts do not inherit it).
_SUPERVISOR_PID = os.environ.pop(SUPERVISOR_ENV, None)


def supervised() -> bool:
    """Whether this process is the trainer a `supervise` call started."""
    return _SUPERVISOR_PID is not None


def _die_with_supervisor() -> None:
    """In a supervised trainer: be killed when the supervisor dies (a killed launch.train
    must not leave its trainer in the job)."""
    if not supervised():
        return
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            logging.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != int(_SUPERVISOR_PID):  # it died before prctl took effect
        os._exit(LOST_PEER_STATUS)


# What the runtime prints when it aborts a process over a lost peer (jaxlib's client.h).
_FATAL_MARKER = b"Terminating process because the JAX distributed service detected fatal errors"
# Lines held back until it is clear whether that abort follows: the coordination
# service's own log lines and the traceback of a collective that failed at the same time.
_HOLD_START = re.compile(
    rb"^[EWF]\d{4} .*coordination_service|^Traceback \(most recent call last\)"
)


class _StderrFilter:
    """Passes the child's stderr through, minus the runtime's lost-peer abort."""

    def __init__(self, out: Callable[[bytes], None], hold_s: float):
        self.out, self.hold_s = out, hold_s
        self.partial = b""
        self.held: list[bytes] = []
        self.held_since: float | None = None
        self.fatal: list[bytes] | None = None  # the abort's text, once it started
        self.dropped: list[bytes] = []  # held lines the abort made moot

    def feed(self, data: bytes, now: float) -> None:
        lines = re.split(rb"(?<=[\r\n])", self.partial + data)  # tqdm redraws end in \r
        self.partial = lines.pop()
        for line in lines:
            if self.fatal is not None:
                self.fatal.append(line)
            elif _FATAL_MARKER in line:
                self.fatal, self.dropped, self.held_since = [line], self.held, None
            elif self.held_since is not None or _HOLD_START.search(line):
                self.held_since = now if self.held_since is None else self.held_since
                self.held.append(line)
            else:
                self.out(line)
        self.tick(now)

    def tick(self, now: float) -> None:
        """Releases held lines once no abort followed them within hold_s."""
        if self.held_since is not None and now - self.held_since > self.hold_s:
            self._release()

    def close(self) -> None:
        if self.fatal is None:
            self.held.append(self.partial)
            self._release()
        else:
            self.fatal.append(self.partial)

    def _release(self) -> None:
        for line in self.held:
            self.out(line)
        self.held, self.held_since = [], None


def abort_reason(report: str, job: Job, heartbeat_timeout_s: int) -> str:
    """What happened, from the text of the runtime's abort: which process was lost and
    how, or that the job never came together."""
    job_name = f"the {job.num_processes}-process job" if job.num_processes else "the job"
    if "RegisterTask" in report:  # connecting timed out: a process never came up
        at = f" at {job.coordinator_address}" if job.coordinator_address else ""
        return (
            f"{job_name} did not come together: not every process reached the "
            f"coordinator{at} within JAX's join timeout"
        )
    ids: list[str] = []
    beats = re.search(r"stopped sending heartbeats\):(.*?)(?:The tasks|$)", report, re.S)
    if beats:  # the service's list: one task id a line (or /job:.../task:<id>)
        listed = beats.group(1)
        ids = re.findall(r"task:(\d+)", listed) or re.findall(r"^\s*(\d+)\s*$", listed, re.M)
    ids = ids or re.findall(r"Task (\d+) heartbeat timeout", report)
    if beats or ids:
        who = f"process {', '.join(sorted(set(ids), key=int))}" if ids else "a process"
        return f"lost {who} of {job_name} (no heartbeat for {heartbeat_timeout_s} s)"
    if "coordination service" in report and "leader" in report:
        return f"lost process 0 of {job_name} (the coordinator stopped answering)"
    status = re.search(r"absl::Status: ([^\n]*)", report)
    why = status.group(1).strip()[:300] if status else "the runtime aborted"
    return f"lost a process of {job_name} ({why})"


def supervise(
    argv: list[str],
    *,
    job: Job,
    what: str = "training",
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
    after_loss: Callable[[], str] = lambda: "restart every process with the same command",
    report_path: str | None = None,
) -> int:
    """Runs `argv` (this job's trainer) as a child; returns its exit status, or raises
    `LostPeer` with one line when the runtime aborted it because a peer was lost.

    `after_loss()` says what to do next (e.g. which checkpoint a restart resumes from).
    What the one line replaces (the runtime's report, a traceback) is written to
    `report_path`, if given, and the line names that file.
    """
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    child = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, start_new_session=True)
    forwarded: dict[int, object] = {}

    def forward(signum: int, frame) -> None:
        del frame
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        forwarded[sig] = signal.signal(sig, forward)
    err = sys.stderr.buffer
    filt = _StderrFilter(lambda line: (err.write(line), err.flush()), heartbeat_timeout_s + 10)
    try:
        fd = child.stderr.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                filt.feed(data, time.monotonic())
            else:
                filt.tick(time.monotonic())
        filt.close()
        status = child.wait()
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)
        if child.poll() is None:  # only if this process itself is failing
            child.kill()
            child.wait()
    if filt.fatal is not None:
        report = b"".join(filt.dropped + filt.fatal).decode(errors="replace")
        me = "this process" if job.process_id is None else f"process {job.process_id}"
        event = abort_reason(report, job, heartbeat_timeout_s)
        message = f"{what}: {event}; {me} stopped; {after_loss()}"
        if report_path:
            with open(report_path, "w") as f:
                f.write(report)
            message += f" (the runtime's report: {report_path})"
        print(message, file=sys.stderr, flush=True)
        raise LostPeer(message)
    return status if status >= 0 else 128 - status
