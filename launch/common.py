"""Flags and helpers shared by the launch/ entry points (each flag defined once, here).

Every entry point ends with `common.run(main)`: a user error (a bad flag, config key or
type, path, input file, corpus, a missing work dir or checkpoint, a checkpoint whose
shapes differ from the config: any `gpa_jax.errors.UserError`, missing-file OSError or
absl usage error; a full disk, whichever write met it) is printed as one line,
`<command>: error: <what and where>`, and the command exits with status 2 without a
traceback; `--verbose` prints the traceback too.
Anything else is a bug and keeps its traceback (status 1).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from absl import app, flags

from gpa_jax import config_utils, paths
from gpa_jax.errors import UserError, is_disk_full

_WORKDIR = flags.DEFINE_string(
    "workdir", None, f"Work directory (default: ${paths.WORKDIR_ENV} or {paths.DEFAULT_WORKDIR})."
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "On a user error, print the traceback too.")

USER_ERROR_STATUS = 2
# Builtin errors that, reaching a main, mean a path the user gave (or a stage they have
# not run yet) is missing or unusable.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class WorkdirError(UserError, FileNotFoundError):
    """The work dir is missing (for a command that reads one) or cannot be written."""


def workdir() -> str:
    """The --workdir flag, else the documented default; created if missing.

    For commands that write into the work dir: it is made (and checked writable) here,
    before any work starts, so a bad path fails at once rather than at the first save.
    """
    path = _WORKDIR.value or paths.default_workdir()
    if "://" in path:  # gs:// and friends: created by the writers themselves.
        return path
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"cannot create work dir {path!r}: {error.strerror}") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"work dir {path!r} is not writable")
    return path


def existing_workdir() -> str:
    """The work dir of a command that only reads one (it must exist)."""
    path = _WORKDIR.value or paths.default_workdir()
    if "://" not in path and not os.path.isdir(path):
        where = "--workdir" if _WORKDIR.value else f"${paths.WORKDIR_ENV} or the default"
        raise WorkdirError(
            f"work dir {path!r} (from {where}) does not exist; pass the --workdir of a run "
            "that trained the models (python -m launch.demo makes one)"
        )
    return path


def output_file(path: str) -> str:
    """Makes the folder of an output file and checks it is writable, before any work.

    A URL (gs://...) is handed on as is: object stores have no folders to make, and its
    writer (gpa_jax.paths) reports a failure naming it."""
    if paths.is_remote(path):
        return path
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the folder of {path!r}: {error.strerror}") from error
    if os.path.isdir(path):
        raise UserError(f"output {path!r} is a directory; give a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path!r}: folder {folder!r} is not writable")
    return path


def _is_user_error(error: BaseException) -> bool:
    # A full disk is the user's to fix wherever it struck (a checkpoint, TensorBoard's
    # event file, a token shard): the libraries turn the writes they own into
    # DiskFullError, and any other write that hits it is reported the same way here.
    return isinstance(error, (UserError, app.UsageError, flags.Error, *_PATH_ERRORS)) or (
        is_disk_full(error)
    )


def _message(error: BaseException) -> str:
    if isinstance(error, UserError) or not is_disk_full(error):
        return str(error)
    # Another library's error (TensorFlow, tensorstore): its first line names the file.
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"no space left on device: {first[:500]}" if first else "no space left on device"


def _command_name() -> str:
    """"launch.sample" for python -m launch.sample (how the README names commands)."""
    path = sys.argv[0] if sys.argv and sys.argv[0] else "launch"
    stem = os.path.splitext(os.path.basename(path))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return f"launch.{stem}" if parent == "launch" else stem


def _fail(error: BaseException, verbose: bool) -> None:
    prog = _command_name()
    if verbose:
        traceback.print_exception(error)
    print(f"{prog}: error: {_message(error)}", file=sys.stderr)
    if isinstance(error, (app.UsageError, flags.Error)):
        print(f"{prog}: see --helpshort for the flags", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(USER_ERROR_STATUS)


def _parse_flags(argv: list[str]) -> Any:
    """absl's flag parsing (with `--config.*` overrides where the command has --config);
    a bad flag is a user error like any other."""
    try:
        if config_utils.CONFIG_FLAG in flags.FLAGS:
            return config_utils.flags_parser(argv)
        return flags.FLAGS(argv)
    except (flags.Error, UserError) as error:
        _fail(error, verbose=any(a in ("--verbose", "--verbose=true") for a in argv))


def run(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)` for every launch/ entry point (see the module docstring)."""

    def guarded(argv: list[str]) -> Any:
        try:
            return main(argv)
        except BaseException as error:  # noqa: BLE001 - re-raised unless a user error
            if not _is_user_error(error):
                raise
            _fail(error, verbose=_VERBOSE.value)

    app.run(guarded, flags_parser=_parse_flags)


# Streaming TTS/VC (launch.sample --stream, launch.bench_sample): gpa_jax.sampling.streaming.
_CHUNK_FRAMES = flags.DEFINE_integer("chunk_frames", 25, "Streaming: RVQ-1 frames of the first chunk (50 Hz).")
_CHUNK_GROWTH = flags.DEFINE_float("chunk_growth", 2.0, "Streaming: each later chunk is this times the last.")
_MAX_CHUNK = flags.DEFINE_integer("max_chunk_frames", 100, "Streaming: the largest chunk (frames).")


def stream_options() -> dict[str, float | int]:
    """The streaming flags as `stream_audio` keyword arguments."""
    return dict(chunk_frames=_CHUNK_FRAMES.value, chunk_growth=_CHUNK_GROWTH.value,
                max_chunk_frames=_MAX_CHUNK.value)  # fmt: skip


def codec_judge(kind: str = "whisper"):
    """(judge, judge_report) for scoring codec resynthesis: Whisper tiny.en by default.

    The codec layer takes both as arguments (`gpa_jax.codec.evaluate`), so it imports
    nothing from the evaluation layer above it.
    """
    from gpa_jax.evaluation import asr_metrics
    from gpa_jax.evaluation.judge import make_judge

    return make_judge(kind), asr_metrics.judge_wer_report
