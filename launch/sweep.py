"""Runs a sweep: python -m launch.sweep --sweep=configs/sweeps/lm_size.py --workdir=W

    --mode=run     run every grid point here, one after another (default); finished runs
                   are skipped on a rerun, then the comparison table is printed
    --mode=print   print one pod launch command per grid point (launch/tpu_pod.sh), run nothing
    --mode=gather  only gather the runs' metrics into the table

The table is written to <workdir>/sweeps/<name>/results.{md,json}. The sweep file format
is in gpa_jax/sweep.py.
"""

from __future__ import annotations

from absl import app, flags

from gpa_jax import preemption
from gpa_jax import sweep as sweep_lib
from launch import common

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, e.g. configs/sweeps/lm_size.py.", required=True)
_MODE = flags.DEFINE_enum("mode", "run", ["run", "print", "gather"], "What to do (see module docstring).")


@preemption.job("sweep", note="rerun the same command to resume")
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sweep = sweep_lib.load_sweep(_SWEEP.value)
    workdir = common.workdir()
    if _MODE.value == "print":
        print("\n".join(sweep_lib.pod_commands(sweep, workdir)))
        return
    if _MODE.value == "run":
        rows = sweep_lib.run_sweep(sweep, workdir)
    else:
        rows = sweep_lib.gather(sweep, workdir)
    print(sweep_lib.write_table(sweep, workdir, rows))
    print(f"table: {sweep_lib.sweep_dir(workdir, sweep)}/results.md")


if __name__ == "__main__":
    common.run(main)
