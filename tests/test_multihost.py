"""gpa_jax.multihost without a job: the job description, the runtime's abort texts, and the
supervisor on stand-in children (tests/training/test_multiprocess.py runs the real job)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gpa_jax import multihost
from gpa_jax.multihost import Job, MultihostError, abort_reason, resolve_job, wanted

# What jaxlib 0.10's runtime printed in the real runs (trimmed): the service lists the
# tasks without heartbeats; a survivor already at its shutdown barrier names one task; a
# process whose coordinator died; processes that never all connected.
HEARTBEATS = """\
F1206 03:11:35.862325   26196 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. This most likely indicates that another task died; see the \
other task logs for more details. absl::Status: UNAVAILABLE: The following tasks are \
unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events \
(e.g. preemption, eviction) to debug further.
"""
AT_SHUTDOWN = """\
F1206 03:13:08.718806   27340 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. absl::Status: INTERNAL: Failed to disconnect from \
coordination service with status: INTERNAL: Shutdown barrier has failed.
Barrier result: 'INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 \
heartbeat timeout. This indicates that the remote task has failed, got preempted, or crashed.
"""
LEADER = """\
F1206 03:14:14.841283   28234 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination \
service. Either the leader task was preempted/died/restarted unexpectedly or this task is \
experiencing network issues.
"""
NEVER_JOINED = """\
F1206 03:16:28.440988   29780 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. absl::Status: DEADLINE_EXCEEDED: Deadline Exceeded

RPC: /xla.coordination.CoordinationService/RegisterTask
"""
JOB = Job("localhost:1234", 2, 0)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the job description ---------------------------------------------------------------------


def test_flags_win_over_the_environment_and_jax_vars_fill_the_rest():
    env = {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3",
    }
    assert resolve_job(environ=env) == Job("10.0.0.1:8476", 4, 3)
    assert resolve_job(process_id=1, environ=env) == Job("10.0.0.1:8476", 4, 1)
    assert resolve_job(environ={}) == Job()  # nothing given: JAX's own detection, if asked
    assert wanted(None, resolve_job(environ=env), environ={})
    assert not wanted(None, Job(), environ={})
    assert wanted(None, Job(), environ={"SLURM_NTASKS": "8"})  # JAX detects SLURM jobs
    assert not wanted(False, Job("h:1", 2, 0), environ={})


@pytest.mark.parametrize(
    "args, env, message",
    [
        (dict(coordinator_address="h:1", num_processes=2), {}, r"job \(coordinator_address=h:1, num_processes=2\) also needs --process_id \(or \$JAX_PROCESS_ID\)$"),
        (dict(num_processes=2, process_id=0), {}, "--coordinator_address"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, r"process_id=2 must be in \[0, num_processes=2\)"),
        (dict(coordinator_address="h", num_processes=2, process_id=0), {}, "must be host:port"),
        (dict(coordinator_address="h:1", num_processes=0, process_id=0), {}, "num_processes=0 must be >= 1"),
        ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES='two' is not an integer"),
    ],
)  # fmt: skip
def test_an_incomplete_or_impossible_job_is_a_user_error(args, env, message):
    with pytest.raises(MultihostError, match=message):
        resolve_job(**args, environ=env)


def test_a_scheduler_may_fill_in_what_the_flags_leave_out():
    assert resolve_job(coordinator_address="h:1", environ={"OMPI_COMM_WORLD_SIZE": "2"}) == Job(
        "h:1"
    )


# --- what the runtime's abort says ------------------------------------------------------------


def test_the_abort_text_names_the_lost_process():
    assert (
        abort_reason(HEARTBEATS, JOB, 30)
        == "lost process 1 of the 2-process job (no heartbeat for 30 s)"
    )
    assert (
        abort_reason(AT_SHUTDOWN, JOB, 30)
        == "lost process 1 of the 2-process job (no heartbeat for 30 s)"
    )
    assert abort_reason(LEADER, Job("h:1", 2, 1), 30) == (
        "lost process 0 of the 2-process job (the coordinator stopped answering)"
    )
    assert abort_reason(NEVER_JOINED, JOB, 30) == (
        "the 2-process job did not come together: not every process reached the coordinator "
        "at localhost:1234 within JAX's join timeout"
    )
    other = (
        "F0 client.h:80] Terminating process because ... absl::Status: INTERNAL: something new\n"
    )
    assert abort_reason(other, Job(), 30) == "lost a process of the job (INTERNAL: something new)"
    # Newer runtimes name tasks by their full path.
    listed = "stopped sending heartbeats):\n/job:jax_worker/replica:0/task:3\n/job:jax_worker/replica:0/task:2\n"
    assert abort_reason(listed, Job("h:1", 4, 0), 30).startswith("lost process 2, 3 of the 4-process job")  # fmt: skip


def test_the_filter_passes_lines_through_and_holds_back_only_the_abort():
    out = []
    f = multihost._StderrFilter(out.append, hold_s=5)
    f.feed(b"I1206 step 3/8: loss 5.5\ntrain:  40%|####  |\r", now=0)
    assert out == [b"I1206 step 3/8: loss 5.5\n", b"train:  40%|####  |\r"]  # progress redraws too
    f.feed(b'Traceback (most recent call last):\n  File "x"\nValueError: boom\n', now=1)
    assert len(out) == 2  # held: a lost peer's abort may follow
    f.feed(b"I1206 later\n", now=7)  # 6 s later and no abort: it was an ordinary error
    assert out[2:] == [b"Traceback (most recent call last):\n", b'  File "x"\n', b"ValueError: boom\n", b"I1206 later\n"]  # fmt: skip
    f.feed(
        b"E1206 03:11:35 1 coordination_service.cc:1549] error polling\nTraceback (most rec", now=8
    )
    f.feed(
        b"ent call last):\n" + HEARTBEATS.encode() + b"*** Check failure stack trace: ***\n", now=8
    )
    f.close()
    assert len(out) == 6 and b"".join(f.dropped).startswith(b"E1206") and f.fatal


# --- the supervisor ---------------------------------------------------------------------------


def _child(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_a_lost_peer_abort_becomes_one_line_and_status_75(tmp_path, capfd):
    script = f"""
        import os, sys
        sys.stderr.write("I1206 step 4/8: loss 5.5\\n")
        sys.stderr.write("Traceback (most recent call last):\\nJaxRuntimeError: Gloo AllGather failed\\n")
        sys.stderr.write({HEARTBEATS!r} + "*** Check failure stack trace: ***\\n    @ 0x1 f()\\n")
        sys.stderr.flush()
        os.abort()
    """
    report = tmp_path / "report.log"
    with pytest.raises(multihost.LostPeer) as stopped:
        multihost.supervise(_child(script), job=JOB, heartbeat_timeout_s=30,
                            after_loss=lambda: "restart both", report_path=str(report))  # fmt: skip
    assert stopped.value.code == multihost.LOST_PEER_STATUS == 75
    line = (
        "training: lost process 1 of the 2-process job (no heartbeat for 30 s); process 0 "
        f"stopped; restart both (the runtime's report: {report})"
    )
    assert str(stopped.value) == line
    assert capfd.readouterr().err == f"I1206 step 4/8: loss 5.5\n{line}\n"
    assert "Gloo AllGather failed" in report.read_text() and "Check failure" in report.read_text()


def test_exit_statuses_and_output_pass_through(capfd):
    assert multihost.supervise(_child("import sys; print('out'); sys.exit(3)"), job=JOB) == 3
    assert capfd.readouterr().out == "out\n"
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert multihost.supervise(_child(script), job=JOB) == 128 + signal.SIGKILL


def test_sigterm_reaches_the_trainer_once(tmp_path):
    """A supervisor process (as launch.train runs one) gets SIGTERM: its trainer gets it
    exactly once, and the supervisor exits with the trainer's status."""
    ready = tmp_path / "ready"
    trainer = f"""
        import signal, sys, time
        got = []
        signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
        open({str(ready)!r}, "w").close()
        deadline = time.time() + 60
        while not got and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a second copy of the signal would land here
        sys.stderr.write(f"trainer got {{len(got)}} SIGTERM\\n")
        sys.exit(143)
    """
    supervisor = f"""
        import sys
        from gpa_jax import multihost
        sys.exit(multihost.supervise({_child(trainer)!r}, job=multihost.Job()))
    """
    proc = subprocess.Popen(_child(supervisor), cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err == "trainer got 1 SIGTERM\n"
