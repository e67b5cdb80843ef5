"""The one exception base for problems a user fixes, not bugs.

A `UserError` (a bad flag, config key or type, path, input file, corpus, or a checkpoint
that does not match the config) is reported by the `launch/` entry points as one line
and exit status 2, without a traceback (`launch.common.run`). Library modules raise
subclasses that are also the builtin they refine (e.g. `ConfigError(UserError,
ValueError)`), so existing `except ValueError` handlers keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (flags, config, paths, data), stated in full."""
