"""Checkpoint files on disk: the one way the project reads them and the one way it writes them.

Reading is `read_checkpoint`: every checkpoint the library reads (pretrained weights, training resume,
evaluation, prediction, export) goes through it.  It uses ``torch.load(weights_only=True)``, so a file
that needs arbitrary code to unpickle is refused, and every failure is an error naming the file.  What is
saved must therefore be tensors and plain Python values (dicts, lists, tuples, numbers, strings, None).

A file is also bounded before torch reads it, because ``torch.load`` allocates what the file declares: its
pickle is read without being executed (`pickletools`) for the tensor storages it declares, and a file whose
storages add up to more bytes than it holds is refused.  torch's format is a zip archive; torch writes every
record stored, so a compressed record (a 6 MB file can inflate to gigabytes) is refused, and so is a storage
record other than the size its declaration gives.  Legacy (pre-1.6, non-zip) files hold their pickles and
storages back to back: they are read when their declared storages fit in the file, which bounds what
torch allocates for them.

Writing is `atomic_save` (and `atomic_copy` for byte copies of a checkpoint): into a temporary file in the
same directory, flushed and fsynced, then renamed over the target, and the directory fsynced.  A crash,
``kill -9`` or full disk at any moment leaves either the old file or the complete new one, never a torn
mix; a failed write removes its temporary file and raises `CheckpointWriteError`.  The temporary files of
writers killed mid-write are removed by `remove_stale_temps`.

What a checkpoint means (a state dict to convert, a training state to resume) is not this module's
business: see `iresvid.models.weights` and `iresvid.engine.checkpoint`.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import pickletools
import re
import shutil
import zipfile
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
    check_bounded(path)
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


# --------------------------------------------------------------------------------- bounding a file

# A pickle this long is not a state dict's (a ResNet-152's is well under 1 MiB); reading it is bounded too.
MAX_PICKLE_BYTES = 64 << 20
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def check_bounded(path: Path) -> None:
    """Refuse ``path`` before ``torch.load`` when what it would make torch allocate is not bounded by the
    file itself: compressed zip records, storages declared larger than their records, or declared storages
    that add up to more than the file's size.  Reads only the zip's directory and the pickle."""
    size = path.stat().st_size
    try:
        if zipfile.is_zipfile(path):
            _check_zip(path, size)
        else:
            _check_legacy(path, size)
    except CheckpointError:  # the refusal itself (a ValueError too): already one clear line
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or not a PyTorch file?): {_first_line(e)}"
        ) from e


def _check_zip(path: Path, size: int) -> None:
    with zipfile.ZipFile(path) as archive:
        records = archive.infolist()
        for record in records:
            if record.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(
                    f"refusing to load {path}: record {record.filename!r} is compressed ({record.file_size} "
                    f"bytes from {record.compress_size}); torch writes every record uncompressed, and "
                    f"inflating it is not bounded by the file"
                )
        total = sum(r.file_size for r in records)
        if total > size:
            raise CheckpointError(
                f"refusing to load {path}: its records add up to {total} bytes, more than the file's {size}"
            )
        pickles = [r for r in records if r.filename.endswith("/data.pkl") or r.filename == "data.pkl"]
        if not pickles:
            return  # not torch.save's layout (TorchScript and others): torch.load says what it is
        prefix = pickles[0].filename[: -len("data.pkl")]
        declared = _declared_storages(archive.read(pickles[0]), path)
        sizes = {r.filename: r.file_size for r in records}
        for key, nbytes in declared.items():
            found = sizes.get(f"{prefix}data/{key}")
            if found is not None and found != nbytes:
                raise CheckpointError(
                    f"refusing to load {path}: storage record data/{key} holds {found} bytes but the file "
                    f"declares {nbytes} for it"
                )


def _check_legacy(path: Path, size: int) -> None:
    """A legacy file: magic number, protocol, system info and the object's pickle, then the storages."""
    with path.open("rb") as f:
        try:
            magic = _only_int(_read_pickle(f, path))
        except (EOFError, ValueError):
            magic = None
        if magic != _LEGACY_MAGIC:
            return  # not a torch file: torch.load refuses it (safely, with the reason), allocating nothing
        _read_pickle(f, path), _read_pickle(f, path)  # protocol version, system info
        declared = _declared_storages(_read_pickle(f, path), path)
    total = sum(declared.values())
    if total > size:
        raise CheckpointError(
            f"refusing to load {path}: it declares {total} bytes of tensors but holds {size} bytes "
            f"(truncated, or crafted to make the reader allocate more than the file)"
        )


def _read_pickle(f: io.BufferedReader, path: Path) -> bytes:
    """The bytes of the next pickle in ``f``, scanned to its STOP without executing it."""
    start = f.tell()
    stop = None
    for opcode, _, pos in pickletools.genops(f):
        if pos - start > MAX_PICKLE_BYTES:
            raise CheckpointError(f"refusing to load {path}: its pickle is over {MAX_PICKLE_BYTES} bytes")
        if opcode.name == "STOP":
            stop = f.tell()
    f.seek(start)
    return f.read(stop - start)


def _only_int(pickled: bytes) -> int | None:
    ints = [arg for op, arg, _ in pickletools.genops(pickled) if isinstance(arg, int) and op.name != "PROTO"]
    return ints[0] if len(ints) == 1 else None


def _declared_storages(pickled: bytes, path: Path) -> dict[str, int]:
    """Storage key → bytes, from the persistent ids ``('storage', <torch XStorage>, key, location, numel,
    ...)`` of a torch pickle, by simulating its stack with `pickletools` (nothing is executed)."""
    if len(pickled) > MAX_PICKLE_BYTES:
        raise CheckpointError(f"refusing to load {path}: its pickle is over {MAX_PICKLE_BYTES} bytes")
    itemsizes = _storage_itemsizes()
    stack: list = []
    marks: list[int] = []
    memo: dict = {}
    declared: dict[str, int] = {}
    for opcode, arg, _ in pickletools.genops(pickled):
        name = opcode.name
        if name == "MARK":
            marks.append(len(stack))
            continue
        if name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = stack[-1]
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
            continue
        if name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo.get(arg))
            continue
        if name == "GLOBAL":
            stack.append(("global", *arg.split(" ", 1)))
            continue
        if name == "STACK_GLOBAL":
            module, qualname = stack.pop(-2), stack.pop()
            stack.append(("global", module, qualname))
            continue
        if name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
            count = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0}.get(name)
            start = marks.pop() if count is None else len(stack) - count
            items = tuple(stack[start:])
            del stack[start:]
            stack.append(items)
            continue
        if name in ("BINPERSID", "PERSID"):
            pid = stack.pop() if name == "BINPERSID" else tuple(str(arg).split())
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
                kind, key, numel = pid[1], str(pid[2]), pid[4]
                kind = kind[2] if isinstance(kind, tuple) else str(kind)
                if not isinstance(numel, int) or numel < 0 or kind not in itemsizes:
                    raise CheckpointError(f"refusing to load {path}: storage {key!r} is declared as {pid!r}")
                declared[key] = numel * itemsizes[kind]
            stack.append(None)
            continue
        # Any other opcode: its effect on the stack's depth, from its description (values not needed).
        before, after = opcode.stack_before, opcode.stack_after
        if pickletools.markobject in before:
            del stack[marks.pop() :]
            before = before[: before.index(pickletools.markobject)]
        if before:
            del stack[len(stack) - len(before) :]
        stack.extend([arg] * len(after))
    return declared


def _storage_itemsizes() -> dict[str, int]:
    from torch.storage import _dtype_to_storage_type_map

    sizes = {name: dtype.itemsize for dtype, name in _dtype_to_storage_type_map().items()}
    sizes["UntypedStorage"] = 1
    return sizes


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
