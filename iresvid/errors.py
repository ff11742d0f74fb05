"""The one base class of every error that is the user's to fix.

A `UserError` says what is wrong with the input — a config key, a checkpoint, a dataset, a video folder —
and what to do about it, in its message. The command line prints such an error as one line and exits with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (a file, a setting, an argument); the message names it."""


class ConfigError(UserError, ValueError):
    """A configuration mistake; the message names the key (and the file it came from)."""
