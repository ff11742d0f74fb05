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

import errno
import logging
import os
import pickle
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from iresvid.errors import UserError

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")  # what `_temp_path` makes; group 1: the writer's pid
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# In torch's weights_only errors: the class a file needs ("Unsupported class" before torch 2.4), else the
# unpickler's own reason.
_UNSAFE_GLOBAL = re.compile(r"Unsupported (?:global: GLOBAL|class) (\S+)")
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or cannot be used for this model; the message names the file (and
    the keys that do not fit)."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written; the previous file at ``path`` (if any) is unchanged."""

    def __init__(self, path: Path, reason: str, err: int | None = None):
        super().__init__(
            f"cannot write checkpoint {path}: {reason}; the previous file there, if any, is unchanged"
        )
        # Set after construction: OSError(errno, msg) would prefix the message with "[Errno N]".
        self.errno = err
        self.path = path


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
    """``torch.save(obj, path)`` that leaves either the old file or the complete new one, never a torn one.

    ``verify(temp)`` runs on the complete temporary file before the rename; a `CheckpointError` it raises
    vetoes the write and passes through unchanged (e.g. "this state could not be resumed from").

    Raises `CheckpointWriteError` (an `OSError`; ``errno`` set when the cause had one) naming ``path`` and the
    reason, e.g. "disk full"; the temporary file is removed and the previous ``path`` is untouched.
    """
    path = Path(path)
    _atomic_write(path, lambda f: torch.save(obj, f), verify)
    return path


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy the bytes of ``source`` to ``path`` as atomically as `atomic_save` writes, with its errors."""
    path = Path(path)
    with Path(source).open("rb") as src:
        _atomic_write(path, lambda f: shutil.copyfileobj(src, f, 16 << 20))
    return path


def remove_stale_temps(directory: str | os.PathLike) -> None:
    """Delete the temporary files that writers killed mid-write (``kill -9``, preemption, power cut) left in
    ``directory``.

    A temporary file is stale when the process that wrote it is gone, or is this process: call this only
    while this process is not writing into ``directory``.
    """
    for path in Path(directory).iterdir():
        m = _TEMP_NAME.match(path.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _process_alive(pid):
            continue
        log.info("removing %s, left by an interrupted checkpoint write", path)
        path.unlink(missing_ok=True)


class _RecordingWriter:
    """Passes writes through and remembers the `OSError` of a failed one.

    ``torch.save`` turns a failing ``write`` into ``RuntimeError("unexpected pos …")`` and drops the OSError,
    so without this a full disk could not be told apart from any other failure.
    """

    def __init__(self, file: BinaryIO):
        self._file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._file.flush()


def _temp_path(path: Path) -> Path:
    """A fresh name beside ``path``: hidden, and carrying our pid so `remove_stale_temps` can tell whose."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _atomic_write(
    path: Path, write: Callable[[BinaryIO], Any], verify: Callable[[Path], Any] | None = None
) -> None:
    """Write ``path`` via a temporary file beside it; ``verify(temp)`` may veto it before the rename."""
    tmp = _temp_path(path)
    writer = None
    try:
        with open(tmp, "xb") as f:
            writer = _RecordingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if not isinstance(e, Exception) or isinstance(e, CheckpointError):
            raise  # KeyboardInterrupt & co., and the verifier's own, already clear, error
        cause = writer.error if writer is not None and writer.error is not None else e
        err = cause.errno if isinstance(cause, OSError) else None
        detail = f"{type(cause).__name__}: {cause}"
        raise CheckpointWriteError(path, f"disk full ({detail})" if err in _DISK_FULL else detail, err) from e
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable: without it a power cut can forget the rename."""
    if os.name != "posix":  # Windows cannot open a directory; os.replace is all it offers
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (certain network mounts) refuse fsync on a directory.  The rename itself has
        # happened, so the new checkpoint is in place; only its durability against a power cut is unknown.
        log.debug("fsync of directory %s failed (%s); the checkpoint was written", directory, e)
    finally:
        os.close(fd)


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
