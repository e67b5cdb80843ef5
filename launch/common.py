"""Flags and helpers shared by the launch/ entry points (each flag defined once, here)."""

from __future__ import annotations

from absl import flags

from gpa_jax import paths

_WORKDIR = flags.DEFINE_string(
    "workdir", None, f"Work directory (default: ${paths.WORKDIR_ENV} or {paths.DEFAULT_WORKDIR})."
)


def workdir() -> str:
    """The --workdir flag, else the documented default."""
    return _WORKDIR.value or paths.default_workdir()
