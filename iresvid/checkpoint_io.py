"""Checkpoint files on disk: the one way the project reads them and the one way it writes them.

Reading is `read_checkpoint`: every checkpoint the library reads (pretrained weights, training resume,
evaluation, prediction, export) goes through it.  It uses ``torch.load(weights_only=True)``, so a file
that needs arbitrary code to unpickle is refused, and every failure is an error naming the file.  What is
saved must therefore be tensors and plain Python values (dicts, lists, tuples, numbers, strings, None).

Writing is `atomic_save` (and `atomic_copy` for byte copies of a checkpoint): into a temporary file in the
same directory, flushed and fsynced, then renamed over the target, and the directory fsynced.  A crash,
``kill -9`` or full disk at any moment leaves either the old file or the complete new one, never a torn
mix; a failed write removes its temporary file and raises `CheckpointWriteError`.  The temporary files of
writers killed mid-write are removed by `remove_stale_temps`.

What a checkpoint means (a state dict to convert, a training state to resume) is not this module's
business: see `iresvid.models.weights` and `iresvid.engine.checkpoint`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from iresvid.errors import UserError
from iresvid.files import WriteError, atomic_write, remove_stale_temps

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "atomic_copy",
    "atomic_save",
    "read_checkpoint",
    "remove_stale_temps",
]

log = logging.getLogger(__name__)

# In torch's weights_only errors: the class a file needs ("Unsupported class" before torch 2.4), else the
# unpickler's own reason.
_UNSAFE_GLOBAL = re.compile(r"Unsupported (?:global: GLOBAL|class) (\S+)")
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or cannot be used for this model; the message names the file (and
    the keys that do not fit)."""


class CheckpointWriteError(WriteError):
    """A checkpoint could not be written; the previous file at ``path`` (if any) is unchanged."""

    @staticmethod
    def describe(path: Path, reason: str) -> str:
        return f"cannot write checkpoint {path}: {reason}; the previous file there, if any, is unchanged"


# ------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The object saved in ``path``, on the CPU, unpickled with ``torch.load(weights_only=True)``.

    Raises `FileNotFoundError` for a missing file and `CheckpointError` for one that would run code when
    unpickled or that is not a (complete) PyTorch file; both name ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps the unpickler's reason in many lines of advice (some of it: how to allow the class).
        if found := _UNSAFE_GLOBAL.search(str(e)):
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects that only a full unpickle could build "
                f"({found.group(1)}), and unpickling can run arbitrary code. Only tensors and plain "
                f"containers are accepted (torch.load weights_only=True)"
            ) from e
        reason = _UNPICKLER_REASON.search(str(e))
        raise CheckpointError(
            f"refusing to load {path}: the safe unpickler (torch.load weights_only=True) cannot read it "
            f"({reason.group(1) if reason else _first_line(e)}); it is damaged, not a PyTorch file, or a "
            f"pickle that only a full unpickle, which can run arbitrary code, could read"
        ) from e
    except Exception as e:
        # A damaged file makes torch.load raise almost anything; seen on truncated, bit-flipped, random and
        # text files: RuntimeError, EOFError, UnicodeDecodeError, KeyError, IndexError, ValueError,
        # AssertionError, struct.error.
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or not a PyTorch file?): {_first_line(e)}"
        ) from e


def _first_line(error: Exception) -> str:
    """``Type: message`` on one line: the command line prints an error as one line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# ------------------------------------------------------------------------------------------- writing


def atomic_save(obj: Any, path: str | os.PathLike, *, verify: Callable[[Path], Any] | None = None) -> Path:
    """``torch.save(obj, path)`` that leaves either the old file or the complete new one, never a torn one
    (`iresvid.files.atomic_write`: a new file, never opened through a link, renamed into place).

    ``verify(temp)`` runs on the complete temporary file before the rename; a `CheckpointError` it raises
    vetoes the write and passes through unchanged (e.g. "this state could not be resumed from").

    Raises `CheckpointWriteError` (an `OSError`; ``errno`` set when the cause had one) naming ``path`` and the
    reason, e.g. "disk full"; the temporary file is removed and the previous ``path`` is untouched.
    """
    return atomic_write(path, lambda f: torch.save(obj, f), verify=verify, error=CheckpointWriteError)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy the bytes of ``source`` to ``path`` as atomically as `atomic_save` writes, with its errors."""
    with Path(source).open("rb") as src:
        return atomic_write(path, lambda f: shutil.copyfileobj(src, f, 16 << 20), error=CheckpointWriteError)
