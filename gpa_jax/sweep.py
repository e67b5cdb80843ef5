"""Sweeps: a grid of config overrides, run one by one here or emitted as pod commands.

A sweep file `configs/sweeps/<name>.py` defines `get_sweep() -> dict` with

    name       the sweep's name (its runs live in <workdir>/sweeps/<name>/<run>/)
    entry      the launch module every run executes, e.g. "launch.train"
    config     the config spec every run starts from, e.g. "configs/gpa_tiny.py"
    fixed      {dotted key: value} applied to every run; "{workdir}" in a string value is
               the sweep's work dir (e.g. the token shards the demo wrote there)
    grid       {dotted key: [values, ...]}: the runs are the Cartesian product, in order
    metrics    what the table shows per run: a TensorBoard tag (its last logged value),
               e.g. "eval/loss", or "<file>.json:<key>", the key (a "/" in it steps into
               nested dicts) of a JSON file the run dir holds, e.g. the evaluate step's
    args       optional extra flags for the entry point, e.g. ["--noprogress"]
    evaluate   optional [module, *flags], or a list of them (steps run in order): run
               after each run's entry exits 0, as `python -m <module> --config=<config>
               --workdir=<run dir> --config.<k>=<v> ... <flags>` ("{run_dir}" in a flag
               is the run dir, "{workdir}" the sweep's), e.g. launch.lm_report writing a
               JSON file the metrics read; the run is finished when all of them exit 0
               (`--mode=print` emits the training commands only, not these steps)

Each run is `python -m <entry> --config=<config> --workdir=<run dir> --config.<k>=<v> ...`.
Runs share the sweep work dir's data: when a config trains on the tasks (`data.source`
'tasks') and leaves the token shards (`tasks.token_dir`) or the SentencePiece model
(`tasks.vocab.spm_model`) to their defaults, they are pinned to the defaults under the
sweep's work dir (where the demo, `launch.tokenize` / `launch.train_spm` or
`tpu_pod.sh stage` put them), not under the run dir.
The work dir may be local or gs:// (`gpa_jax.paths`); with gs:// a run's log is written
locally while it runs and uploaded as `<run dir>/run.log` when it ends.
Every grid point's overrides are checked against the config before anything runs (an
unknown key or a wrongly typed value fails the whole sweep up front). A run that finished
writes `<run dir>/SWEEP_DONE` (after its status.json, both atomically); rerunning the
sweep skips finished runs and resumes the others (the trainer resumes from its
checkpoints). A failing run is recorded with its exit code and log path and the sweep goes
on with the next one. A preempted run (exit 143 / 130) stops the sweep with that status;
SIGTERM / SIGINT to the sweep itself go to the running child (which saves and exits) and
then stop the sweep the same way (`gpa_jax.preemption`); the rerun resumes at that run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from gpa_jax import config_utils, paths, preemption

DONE_MARKER = "SWEEP_DONE"
_REQUIRED = ("name", "entry", "config", "grid", "metrics")
_OPTIONAL = ("fixed", "args", "evaluate")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: dict[str, Any]  # fixed + this grid point's values

    def flags(self) -> list[str]:
        return [f"--config.{k}={_flag_value(v)}" for k, v in self.overrides.items()]


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def load_sweep(path: str) -> dict[str, Any]:
    """Reads and checks a sweep file (see module docstring)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sweep file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"sweep file {path}: defines no get_sweep()")
    sweep = dict(module.get_sweep())
    missing = [k for k in _REQUIRED if k not in sweep]
    unknown = sorted(set(sweep) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise ValueError(f"sweep file {path}: missing keys {missing}, unknown keys {unknown}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", sweep["name"]):
        raise ValueError(f"sweep file {path}: name {sweep['name']!r} must be [A-Za-z0-9_.-]+")
    for key, values in sweep["grid"].items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"sweep file {path}: grid[{key!r}] must be a non-empty list")
    sweep["evaluate"] = _evaluate_steps(sweep.get("evaluate") or [], f"file {path}")
    sweep.setdefault("fixed", {})
    sweep.setdefault("args", [])
    return sweep


def _evaluate_steps(evaluate: Any, where: str) -> list[list[str]]:
    """`evaluate` as a list of steps: one [module, *flags] list, or a list of them."""
    steps = [evaluate] if evaluate and all(isinstance(a, str) for a in evaluate) else evaluate
    if isinstance(evaluate, (str, bytes)) or not all(
        isinstance(step, (list, tuple)) and step and all(isinstance(a, str) for a in step)
        for step in steps
    ):
        raise ValueError(
            f"sweep {where}: evaluate must be a list [module, *flags] of strings, or a "
            "list of such lists (steps run in order)"
        )
    return [list(step) for step in steps]


def _run_name(point: Mapping[str, Any]) -> str:
    parts = []
    for key, value in point.items():
        text = re.sub(r"[^A-Za-z0-9.+-]+", "_", _flag_value(value)).strip("_")
        parts.append(f"{key.split('.')[-1]}={text}")
    return ",".join(parts) or "base"


def _fill(value: Any, workdir: str) -> Any:
    return value.format(workdir=workdir) if isinstance(value, str) else value


def _shared_data(config: Any, workdir: str) -> dict[str, str]:
    """Overrides pinning a run's default data paths to the sweep's work dir."""
    from gpa_jax.tasks import config as tasks_config

    tc = config.get("tasks")
    data = config.get("data")
    if tc is None or "token_dir" not in tc or data is None or data.get("source") != "tasks":
        return {}  # not trained on the token shards (e.g. synthetic batches)
    pinned = {}
    if not tc.token_dir:
        pinned["tasks.token_dir"] = tasks_config.default_token_dir(workdir, tc.corpus)
    if tc.vocab.text == "spm" and not tc.vocab.spm_model:
        pinned["tasks.vocab.spm_model"] = tasks_config.default_spm_model(
            workdir, tc.corpus, tc.vocab.spm_vocab_size
        )
    return pinned


def expand(sweep: Mapping[str, Any], workdir: str = ".") -> list[Run]:
    """The runs of a sweep: the grid's Cartesian product, each checked against the config."""
    keys = list(sweep["grid"])
    fixed = {k: _fill(v, workdir) for k, v in sweep["fixed"].items()}
    runs = []
    for values in itertools.product(*(sweep["grid"][k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        overrides = {**fixed, **point}
        # Fails here, before any run starts, on unknown keys or wrongly typed values.
        config = config_utils.load_config(
            sweep["config"], [f"{k}={_flag_value(v)}" for k, v in overrides.items()]
        )
        overrides.update(_shared_data(config, workdir))
        runs.append(Run(_run_name(point), overrides))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep {sweep['name']}: grid points map to the same run name: {names}")
    return runs


def check_token_inputs(sweep: Mapping[str, Any], runs: Sequence[Run]) -> None:
    """Before any run starts: every run whose LM reads per-frame audio features
    (model.audio_input continuous / hybrid) finds rows of its width in its token shards,
    and every run that trains speech enhancement (tasks.rates.se > 0) finds the noisy
    inputs, so that a sweep does not fail at its second run after an hour of the first.
    A token dir without a manifest is left to the run's own error."""
    from gpa_jax.tasks import token_shards
    from gpa_jax.tasks.config import task_rate
    from gpa_jax.training import data_iter

    for run in runs:
        config = config_utils.load_config(
            sweep["config"], [f"{k}={_flag_value(v)}" for k, v in run.overrides.items()]
        )
        tc = config.get("tasks")
        if tc is None or not tc.get("token_dir"):
            continue
        if not paths.exists(os.path.join(tc.token_dir, "manifest.json")):
            continue
        splits = (tc.train_split, tc.eval_split)
        try:
            if data_iter.uses_audio_features(config):
                data_iter.check_feature_rows(config, tc.token_dir, splits)
            if task_rate(tc, "se") <= 0:
                continue
            manifest = token_shards.read_manifest(tc.token_dir)
            lacking = [s for s in splits if token_shards.split_noisy(manifest, s) is None]
            if lacking:
                raise ValueError(
                    f"tasks.rates.se={task_rate(tc, 'se')} but split(s) {lacking} of {tc.token_dir} "
                    "have no noisy inputs: tokenize with launch.tokenize --noisy_inputs"
                )
        except ValueError as error:
            raise ValueError(f"sweep {sweep['name']}, run {run.name}: {error}") from None


def sweep_dir(workdir: str, sweep: Mapping[str, Any]) -> str:
    return os.path.join(workdir, "sweeps", sweep["name"])


def command(sweep: Mapping[str, Any], run: Run, run_dir: str, python: str = sys.executable) -> list[str]:
    return [
        python, "-m", sweep["entry"], f"--config={sweep['config']}", f"--workdir={run_dir}",
        *run.flags(), *sweep["args"],
    ]


def evaluate_commands(
    sweep: Mapping[str, Any], run: Run, workdir: str, python: str = sys.executable
) -> list[list[str]]:
    """The sweep's `evaluate` steps for one run, in order (none if the sweep has none)."""
    run_dir = os.path.join(sweep_dir(workdir, sweep), run.name)
    commands = []
    for module, *extra in _evaluate_steps(sweep.get("evaluate") or [], sweep["name"]):
        flags = (a.replace("{run_dir}", run_dir).replace("{workdir}", workdir) for a in extra)
        commands.append([python, "-m", module, f"--config={sweep['config']}",
                         f"--workdir={run_dir}", *run.flags(), *flags])  # fmt: skip
    return commands


PREEMPTED_CODES = {code: sig for sig, code in preemption.EXIT_CODES.items()}


def run_sweep(sweep: Mapping[str, Any], workdir: str, *, log=print) -> list[dict[str, Any]]:
    """Runs every unfinished run in order, then gathers the results (see `gather`).

    Raises `preemption.Preempted` when a run is preempted or the sweep gets SIGTERM/SIGINT.
    """
    root = sweep_dir(workdir, sweep)
    runs = expand(sweep, workdir)
    check_token_inputs(sweep, runs)
    child: list[subprocess.Popen] = []

    def forward(signum: int) -> None:
        # The child runs in its own session (a terminal's Ctrl-C reaches only the sweep),
        # so it gets each signal exactly once, from here, and saves before exiting.
        if child and child[0].poll() is None:
            child[0].send_signal(signum)

    with preemption.watch(f"sweep {sweep['name']}", on_signal=forward):
        for index, run in enumerate(runs, start=1):
            run_dir = os.path.join(root, run.name)
            if paths.exists(os.path.join(run_dir, DONE_MARKER)):
                log(f"[{index}/{len(runs)}] {run.name}: done earlier, skipped")
                continue
            if preemption.requested():
                preemption.stop(f"runs before {run.name} are finished")
            paths.makedirs(run_dir)
            cmds = [command(sweep, run, run_dir), *evaluate_commands(sweep, run, workdir)]
            start = time.time()
            rc = 0
            with _run_log(run_dir) as log_file, open(log_file, "ab") as out:
                for cmd in cmds:
                    if rc != 0:
                        continue
                    log(f"[{index}/{len(runs)}] {run.name}: {shlex.join(cmd[1:])}")
                    child[:] = [subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                 start_new_session=True)]  # fmt: skip
                    rc = child[0].wait()
                    child.clear()
            status = {"returncode": rc, "seconds": round(time.time() - start, 1)}
            paths.atomic_write_json(os.path.join(run_dir, "status.json"), status)
            if rc == 0:  # the marker a rerun trusts: written last, whole
                paths.atomic_write_text(os.path.join(run_dir, DONE_MARKER), "")
            log_path = os.path.join(run_dir, "run.log")
            log(f"[{index}/{len(runs)}] {run.name}: exit {rc} after {status['seconds']} s"
                + ("" if rc == 0 else f" (log: {log_path})"))  # fmt: skip
            if rc in PREEMPTED_CODES:
                raise preemption.Preempted(
                    PREEMPTED_CODES[rc],
                    _say(f"sweep {sweep['name']}: run {run.name} was stopped by "
                         f"{preemption.signal_name(PREEMPTED_CODES[rc])} (its checkpoint is in "
                         f"{run_dir}; log {log_path}); rerun the sweep to resume it"),
                )  # fmt: skip
    return gather(sweep, workdir)


@contextlib.contextmanager
def _run_log(run_dir: str) -> Iterator[str]:
    """A local file to append a run's output to; for a gs:// run dir it is uploaded (after
    the earlier attempts' log) when the run ends."""
    target = os.path.join(run_dir, "run.log")
    if not paths.is_remote(run_dir):
        yield target
        return
    with tempfile.TemporaryDirectory(prefix="gpa_jax-sweep-") as tmp:
        local = os.path.join(tmp, "run.log")
        with open(local, "wb") as f:
            if paths.exists(target):
                f.write(paths.read_bytes(target))
        try:
            yield local
        finally:
            paths.upload(local, target)


def _say(message: str) -> str:
    print(message, file=sys.stderr, flush=True)
    return message


def gather(sweep: Mapping[str, Any], workdir: str) -> list[dict[str, Any]]:
    """One row per run: its grid values, status and the last value of each metric tag."""
    from gpa_jax.training.metrics import read_scalars

    rows = []
    for run in expand(sweep, workdir):
        run_dir = os.path.join(sweep_dir(workdir, sweep), run.name)
        row: dict[str, Any] = {"run": run.name, **{k: run.overrides[k] for k in sweep["grid"]}}
        status_path = os.path.join(run_dir, "status.json")
        if paths.exists(os.path.join(run_dir, DONE_MARKER)):
            row["status"] = "done"
        elif paths.exists(status_path):
            rc = paths.read_json(status_path)["returncode"]
            row["status"] = f"{'preempted' if rc in PREEMPTED_CODES else 'failed'} (exit {rc})"
        else:
            row["status"] = "not run"
        scalars = read_scalars(os.path.join(run_dir, "tensorboard")) if paths.isdir(run_dir) else {}
        files: dict[str, Any] = {}
        for tag in sweep["metrics"]:
            if ".json:" in tag:
                row[tag] = _json_metric(run_dir, tag, files)
                continue
            series = scalars.get(tag)
            row[tag] = series[-1][1] if series else None
        rows.append(row)
    return rows


def _json_metric(run_dir: str, tag: str, files: dict[str, Any]) -> Any:
    """The value a "<file>.json:<key/...>" metric names in `run_dir` (None if absent)."""
    name, key = tag.split(":", 1)
    if name not in files:
        path = os.path.join(run_dir, name)
        files[name] = paths.read_json(path) if paths.exists(path) else {}
    value = files[name]
    for part in key.split("/"):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def write_table(sweep: Mapping[str, Any], workdir: str, rows: list[dict[str, Any]]) -> str:
    """results.md + results.json in the sweep directory; returns the Markdown table."""
    from gpa_jax.evaluation.results import markdown_table

    root = sweep_dir(workdir, sweep)
    paths.makedirs(root)
    table = markdown_table(rows, ["run", *sweep["grid"], "status", *sweep["metrics"]])
    paths.atomic_write_text(os.path.join(root, "results.md"), f"# Sweep {sweep['name']}\n\n{table}\n")
    paths.atomic_write_json(os.path.join(root, "results.json"), rows, indent=2, default=str)
    return table


def pod_commands(sweep: Mapping[str, Any], workdir: str) -> list[str]:
    """One `launch/tpu_pod.sh train ... && launch/tpu_pod.sh wait` line per run, for a pod
    (WORKDIR set per run; the data paths pinned to `workdir`, see the module docstring).

    `train` starts the run in the background on every worker and `wait` blocks until it
    ends, so the lines run as a script use the pod one run after another; a failed run
    stops such a script (rerun it: the runs resume from their checkpoints).
    """
    if sweep["entry"] != "launch.train":
        raise ValueError(
            f"sweep {sweep['name']}: --mode=print emits launch/tpu_pod.sh commands, which "
            f"run launch.train; this sweep's entry is {sweep['entry']}"
        )
    lines = []
    for run in expand(sweep, workdir):
        run_dir = os.path.join(sweep_dir(workdir, sweep), run.name)
        extra = " ".join(shlex.quote(a) for a in [*run.flags(), *sweep["args"]])
        env = (
            f"CONFIG={shlex.quote(sweep['config'])} WORKDIR={shlex.quote(run_dir)} "
            f"LOG={shlex.quote(_log_name(sweep, run))}"
        )
        lines.append(
            f"{env} bash launch/tpu_pod.sh train {extra} && {env} bash launch/tpu_pod.sh wait"
        )
    return lines


def _log_name(sweep: Mapping[str, Any], run: Run) -> str:
    # A file name on the worker: the run name without characters a shell or path minds.
    return f"sweep_{sweep['name']}_{re.sub(r'[^A-Za-z0-9.+-]+', '_', run.name)}.log"
