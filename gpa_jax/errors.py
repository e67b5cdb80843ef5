"""The one exception base for problems a user fixes, not bugs.

A `UserError` (a bad flag, config key or type, path, input file, corpus, or a checkpoint
that does not match the config) is reported by the `launch/` entry points as one line
and exit status 2, without a traceback (`launch.common.run`). Library modules raise
subclasses that are also the builtin they refine (e.g. `ConfigError(UserError,
ValueError)`), so existing `except ValueError` handlers keep working.

A full disk is reported the same way (`DiskFullError`): the user frees space and reruns.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A problem with what the user gave (flags, config, paths, data), stated in full."""


class DiskFullError(UserError, OSError):
    """No space left on the device (or the quota is used up) where a file was being
    written; the message names the path and what was kept."""


# errno values of a full device and of a used-up quota.
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How those read in the text of errors that carry no errno: tensorstore (Orbax's array
# writer) raises ValueError("RESOURCE_EXHAUSTED: ... No space left on device ...").
_NO_SPACE_TEXTS = tuple(os.strerror(e) for e in _NO_SPACE_ERRNOS)


def is_disk_full(error: BaseException | str | None) -> bool:
    """True if `error`, an error it was raised from, or one it groups, is a full disk
    (or, for a str, if the text says so)."""
    if isinstance(error, str):
        return any(text in error for text in _NO_SPACE_TEXTS)
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE_ERRNOS:
            return True
        if any(text in str(e) for text in _NO_SPACE_TEXTS):
            return True
        stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return False
