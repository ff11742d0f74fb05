"""Every file iresvid writes goes through here: checkpoints, reports, plots, logs, exports, demo data.

A run folder may have been prepared by someone else: a ``test -> ~`` link, a ``log.txt`` pointing at
``~/.bashrc``, a class name holding shell text.  So a file is never opened through a name that already
exists.  `atomic_write` (and `atomic_open` for a writer that streams) creates a new file under a random name,
opened exclusively and without following symlinks, fsyncs it and renames it over the target — a planted
link is replaced, never followed, and a crash leaves the old file or the complete new one.  `open_append`
appends only to a regular file of ours, or creates it.  `output_dir` refuses a folder that is a symlink
or another user's, and proves it writable before any work starts.  `RunLock` holds an advisory lock for a
whole run.  `csv_cell` and `plot_text` make names data, never formulas or markup.

Every failure is a `WriteError` (a `UserError` and an `OSError`) whose one line names the path.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from iresvid.errors import UserError

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")  # what `_temp_path` makes; group 1: the writer's pid
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
LOCK_NAME = ".iresvid.lock"


class WriteError(UserError, OSError):
    """A file or folder could not be written; the message names it.  ``errno`` is set when the cause had
    one."""

    def __init__(self, path: str | os.PathLike, reason: str, err: int | None = None):
        super().__init__(self.describe(Path(path), reason))
        # Set after construction: OSError(errno, msg) would prefix the message with "[Errno N]".
        self.errno = err
        self.path = Path(path)

    @staticmethod
    def describe(path: Path, reason: str) -> str:
        return f"cannot write {path}: {reason}"


def _reason(e: BaseException) -> tuple[str, int | None]:
    err = e.errno if isinstance(e, OSError) else None
    detail = f"{type(e).__name__}: {e}"
    return (f"disk full ({detail})" if err in _DISK_FULL else detail), err


# ------------------------------------------------------------------------------------------- writing


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

    # A muxer (PyAV's MP4 and AVI) goes back to fill in sizes once the streams are written.
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def _temp_path(path: Path) -> Path:
    """A fresh name beside ``path``: hidden, and carrying our pid so `remove_stale_temps` can tell whose."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _open_new(path: Path) -> BinaryIO:
    """A new file at ``path``, opened exclusively and without following a symlink there."""
    return os.fdopen(os.open(path, _NEW_FILE, 0o666), "wb")


def open_new(path: str | os.PathLike) -> BinaryIO:
    """``path`` created for writing, exclusively (an existing name, a dangling link included, raises
    `FileExistsError`) and never through a symlink: for a temporary file a writer renames into place
    itself (a video checked before it is renamed)."""
    return _open_new(Path(path))


def folder_in(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``root/relative`` as a folder to write into, created folder by folder below ``root`` (a folder
    already checked, e.g. by `output_dir`); a part that is a symlink or not a folder is refused with a
    `WriteError` naming it, so nothing is written through a link planted inside ``root``."""
    folder = Path(root)
    for part in Path(relative).parts:
        if part in ("..", "/") or os.path.isabs(part):
            raise WriteError(Path(root) / relative, f"{part!r} would leave {root}")
        folder = folder / part
        try:
            info = folder.lstat()
        except FileNotFoundError:
            try:
                folder.mkdir()
            except FileExistsError:  # made meanwhile by another writer (a worker, a shard): checked below
                pass
            except OSError as e:
                raise WriteError(folder, _reason(e)[0], e.errno) from e
            info = folder.lstat()
        except OSError as e:
            raise WriteError(folder, _reason(e)[0], e.errno) from e
        _refuse_unless_folder(folder, info, "not followed")
    return folder


def _refuse_unless_folder(path: Path, info: os.stat_result, link_advice: str) -> None:
    """A `WriteError` naming ``path`` unless its ``lstat`` ``info`` is a real folder (not a symlink)."""
    if stat.S_ISLNK(info.st_mode):
        raise WriteError(path, f"it is a symbolic link (to {os.readlink(path)}); {link_advice}")
    if not stat.S_ISDIR(info.st_mode):
        raise WriteError(path, "it is not a folder")


def atomic_write(
    path: str | os.PathLike,
    content: bytes | str | Callable[[BinaryIO], Any],
    *,
    replace: bool = True,
    verify: Callable[[Path], Any] | None = None,
    error: type[WriteError] = WriteError,
) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function writing to a binary file) to ``path``.

    Through a new, randomly named file beside ``path``, opened exclusively and without following symlinks,
    flushed and fsynced, then renamed over ``path`` (a symlink there is replaced, not followed) and the
    directory fsynced.  With ``replace=False`` an existing ``path`` (file or link) is left alone and the
    write refused.  ``verify(temp)`` runs on the complete file before the rename; what it raises vetoes the
    write and passes through unchanged.  Any other failure removes the temporary file and raises ``error``.
    """
    path = Path(path)
    if isinstance(content, str):
        content = content.encode("utf-8")
    write = content if callable(content) else (lambda f, data=content: f.write(data))
    tmp = _temp_path(path)
    writer = None
    try:
        with _open_new(tmp) as f:
            writer = _RecordingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, FileExistsError) and not replace:
            raise error(path, "it exists already and was not replaced", errno.EEXIST) from e
        if not isinstance(e, Exception) or isinstance(e, UserError):
            raise  # KeyboardInterrupt & co., and the verifier's own, already clear, error
        reason, err = _reason(writer.error if writer is not None and writer.error is not None else e)
        raise error(path, reason, err) from e
    fsync_directory(path.parent)
    return path


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nothing has that name (a hard link fails on any existing
    entry, a dangling symlink included), then drop the temporary name."""
    try:
        os.link(tmp, path)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EOPNOTSUPP):
            raise
        # A file system without hard links: check, then rename (racy only against a concurrent writer).
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from e
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, replace: bool = True, newline: str | None = None
) -> Iterator[IO]:
    """A file to write ``path`` through, as `atomic_write` writes: ``with atomic_open(p) as f: ...``; the
    file appears at ``path`` complete when the block ends, and not at all if it raises."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes new files only (mode 'w' or 'wb'), not {mode!r}")
    buffer = io.BytesIO()
    text = io.TextIOWrapper(buffer, encoding="utf-8", newline=newline, write_through=True)
    yield text if mode == "w" else buffer
    text.flush()
    atomic_write(path, buffer.getvalue(), replace=replace)


def open_append(path: str | os.PathLike, *, newline: str | None = None) -> IO[str]:
    """``path`` opened for appending text: created new (exclusively, not through a link) when absent, else
    only if it is a regular file of this user's; never through a symlink."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            fd = os.open(path, flags)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or _foreign(info):
            os.close(fd)
            raise WriteError(path, "not a regular file of this user's; refusing to append to it")
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        reason = "it is a symbolic link" if e.errno == errno.ELOOP else _reason(e)[0]
        raise WriteError(path, reason, e.errno) from e
    return os.fdopen(fd, "a", encoding="utf-8", newline=newline)


def _foreign(info: os.stat_result) -> bool:
    return hasattr(os, "geteuid") and info.st_uid != os.geteuid()


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable: without it a power cut can forget the rename."""
    if os.name != "posix":  # Windows cannot open a directory; os.replace is all it offers
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (certain network mounts) refuse fsync on a directory.  The rename itself has
        # happened, so the new file is in place; only its durability against a power cut is unknown.
        log.debug("fsync of directory %s failed (%s); the file was written", directory, e)
    finally:
        os.close(fd)


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
        log.info("removing %s, left by an interrupted write", path)
        path.unlink(missing_ok=True)


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


# ------------------------------------------------------------------------------------------- folders


def output_dir(path: str | os.PathLike, *, create: bool = True) -> Path:
    """``path`` as a folder to write into, checked before any work: created if absent (``create``), and
    refused — one `WriteError` naming it — when it is a symlink, not a folder, another user's, or not
    writable (proven by creating and removing a file there)."""
    path = Path(path)
    try:
        if create and not os.path.lexists(path):
            path.mkdir(parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as e:
        raise WriteError(path, _reason(e)[0], e.errno) from e
    _refuse_unless_folder(path, info, "name the real folder")
    if _foreign(info):
        raise WriteError(path, f"the folder belongs to another user (uid {info.st_uid})")
    probe = _temp_path(path / "probe")
    try:
        os.close(os.open(probe, _NEW_FILE, 0o600))
        probe.unlink()
    except OSError as e:
        raise WriteError(path, _reason(e)[0], e.errno) from e
    return path


class RunLock:
    """An advisory lock (``flock``) on ``directory`` held for a whole run: a second process that tries to
    take it fails at once with one line naming the holder (pid, host, start time).

    The lock file holds that description; it is left in place (removing it would race a new holder).
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            reason = "it is a symbolic link" if e.errno == errno.ELOOP else _reason(e)[0]
            raise WriteError(self.path, reason, e.errno) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise UserError(
                    f"{self.path.parent} is in use by another run ({holder}); wait for it to end, or "
                    f"choose another output folder"
                ) from None
            raise WriteError(self.path, _reason(e)[0], e.errno) from e
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------------------- names


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\x00")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def csv_cell(value: Any) -> Any:
    """A value for a CSV/TSV cell that a spreadsheet shows as text: control characters (tab, newline —
    which would forge cells or rows in TSV) become ``\\t``-style escapes, and a text starting like a formula
    (``=``, ``+``, ``-``, ``@``) gets a leading ``'``.  Numbers pass unchanged."""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_START) and not _is_number(value):
        value = "'" + value
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def plot_text(text: str) -> str:
    """``text`` for a matplotlib label, shown as written: ``$`` would start mathtext (a ``$…$`` in a class
    name fails the whole plot)."""
    return str(text).replace("$", r"\$")
