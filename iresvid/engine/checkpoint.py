"""Training checkpoints that are never lost or half-written, and a resume that never picks a broken one.

Every file is written by `atomic_save`: into a temporary file in the same directory, flushed and fsynced,
then renamed over the target.  A crash, ``kill -9`` or full disk at any moment leaves either the old file
or the new one, never a truncated mix, and a failed write removes its temporary file.

`CheckpointManager` owns one run directory:

- ``last.pth``: every save (epoch ends and mid-epoch saves); resuming starts here.
- ``best.pth``: the saves marked ``is_best``.
- ``epoch_{epoch:04d}.pth``: epoch-end saves only, kept for good every ``keep_every_epochs`` epochs, plus
  the ``keep_last`` newest epoch ends (rolling; older ones are deleted once the new one is on disk).  The
  rolling copy is the fallback should ``last.pth`` be damaged anyway (copied elsewhere and truncated, a
  disk error), and it is never overwritten by a mid-epoch save.

Checkpoints are read back with `read_checkpoint` (``torch.load(weights_only=True)``), so everything saved
must be tensors and plain Python values; `capture_rng_state` converts the RNG states accordingly.  The
manager reads back its first save before putting it in place, so a state that cannot be loaded (an
``argparse.Namespace``, a numpy scalar…) fails at the first save instead of at the resume days later.

Only one process (rank 0) may save into a directory: rank 0 of a DDP job, and one job per directory.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

import iresvid
from iresvid.errors import UserError
from iresvid.models.weights import CheckpointError, read_checkpoint

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
_EPOCH_NAME = re.compile(r"^epoch_(\d+)\.pth$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written; the previous file at ``path`` (if any) is unchanged."""

    def __init__(self, path: Path, reason: str, err: int | None = None):
        super().__init__(
            f"cannot write checkpoint {path}: {reason}; the previous file there, if any, is unchanged"
        )
        # Set after construction: OSError(errno, msg) would prefix the message with "[Errno N]".
        self.errno = err
        self.path = path


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


def _atomic_write(
    path: Path, write: Callable[[BinaryIO], Any], verify: Callable[[Path], Any] | None = None
) -> None:
    """Write ``path`` via a temporary file beside it; ``verify(temp)`` may veto it before the rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
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


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that leaves either the old file or the complete new one, never a torn one.

    Raises `CheckpointWriteError` (an `OSError`; ``errno`` set when the cause had one) naming ``path`` and the
    reason, e.g. "disk full"; the temporary file is removed and the previous ``path`` is untouched.
    """
    path = Path(path)
    _atomic_write(path, lambda f: torch.save(obj, f))
    return path


# ------------------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy, torch (CPU) and every CUDA device, as `weights_only` types.

    numpy's state is a uint32 array, which ``torch.load(weights_only=True)`` refuses; it is stored as an
    int64 tensor.  Python's state is a tuple of ints and already loadable.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `capture_rng_state`; the parts a checkpoint lacks (e.g. CUDA from a CPU run) are left alone."""
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["bit_generator"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        saved, present = len(state["cuda"]), torch.cuda.device_count()
        if saved != present:
            log.warning(
                "checkpoint has RNG states of %d CUDA devices, %d present: restoring the first %d",
                saved,
                present,
                min(saved, present),
            )
        for device, device_state in enumerate(state["cuda"][:present]):
            torch.cuda.set_rng_state(device_state, device)


# -------------------------------------------------------------------------------------------- manager


class CheckpointManager:
    """Saves, retains and finds the checkpoints of one run directory (see the module docstring).

    ``keep_every_epochs``: keep ``epoch_{E:04d}.pth`` for good when E is a multiple of it (0: never).
    ``keep_last``: also keep the newest ``keep_last`` epoch-end checkpoints as ``epoch_*.pth`` (0: none).
    Retention goes by file name: epoch files of an earlier run in the same directory follow today's rules.
    """

    def __init__(self, directory: str | os.PathLike, *, keep_every_epochs: int = 0, keep_last: int = 1):
        if keep_every_epochs < 0 or keep_last < 0:
            raise ValueError(
                f"keep_every_epochs and keep_last must be >= 0, got {keep_every_epochs}, {keep_last}"
            )
        self.directory = Path(directory)
        self.keep_every_epochs = keep_every_epochs
        self.keep_last = keep_last
        self.directory.mkdir(parents=True, exist_ok=True)
        self._verified = False
        self._remove_stale_temps()

    @property
    def last_path(self) -> Path:
        return self.directory / "last.pth"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pth"

    def epoch_path(self, epoch: int) -> Path:
        return self.directory / f"epoch_{epoch:04d}.pth"

    def save(
        self, state: dict, *, epoch: int, step: int, is_best: bool = False, epoch_end: bool = True
    ) -> Path:
        """Write ``state`` (plus ``epoch``, ``step``, ``iresvid_version``) as ``last.pth``; return its path.

        ``epoch_end=False`` marks a mid-epoch save: it updates ``last.pth`` (and ``best.pth``) only, so an
        ``epoch_*.pth`` always holds the state at the end of its epoch.  ``state`` itself is not modified.
        """
        full = {**state, "epoch": epoch, "step": step, "iresvid_version": iresvid.__version__}
        verify = None if self._verified else self._verify_loadable
        _atomic_write(self.last_path, lambda f: torch.save(full, f), verify)
        self._verified = True
        # The other files are byte copies of last.pth: no second serialisation, no tensors copied off a GPU.
        if is_best:
            self._copy_last_to(self.best_path)
        if epoch_end and (self._is_permanent(epoch) or self.keep_last > 0):
            self._copy_last_to(self.epoch_path(epoch))
            self._prune_epochs()
        return self.last_path

    def latest(self) -> Path | None:
        """The newest checkpoint that loads: ``last.pth``, else the newest loadable ``epoch_*.pth``.

        None when the directory holds no checkpoint (a fresh run).  If checkpoints exist but none loads,
        raises `CheckpointError` rather than letting a resumed run silently start over.
        """
        candidates = [self.last_path] if self.last_path.is_file() else []
        candidates += [path for _, path in sorted(self._epoch_files(), reverse=True)]
        for path in candidates:
            try:
                read_checkpoint(path)
            except (CheckpointError, FileNotFoundError) as e:
                log.warning("skipping checkpoint %s: it does not load (%s)", path, e)
                continue
            return path
        if candidates:
            raise CheckpointError(
                f"no loadable checkpoint in {self.directory}: {', '.join(p.name for p in candidates)} "
                f"all fail to load (the warnings above say why)"
            )
        return None

    def load(self, path: str | os.PathLike) -> dict:
        return read_checkpoint(path)

    def resolve(self, resume: str | None) -> Path | None:
        """``None``/``""``: no resume; ``"auto"``: `latest` (None on a fresh run); otherwise that file."""
        if not resume:
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
        return path

    # ---------------------------------------------------------------------------------------- internals

    def _verify_loadable(self, path: Path) -> None:
        try:
            read_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(
                f"not saving {self.last_path}: the state could not be resumed from, because {e}"
            ) from e

    def _copy_last_to(self, target: Path) -> None:
        with self.last_path.open("rb") as src:
            _atomic_write(target, lambda f: shutil.copyfileobj(src, f, 16 << 20))

    def _is_permanent(self, epoch: int) -> bool:
        return self.keep_every_epochs > 0 and epoch % self.keep_every_epochs == 0

    def _epoch_files(self) -> list[tuple[int, Path]]:
        return [
            (int(m.group(1)), path)
            for path in self.directory.iterdir()
            if (m := _EPOCH_NAME.match(path.name)) and path.is_file()
        ]

    def _prune_epochs(self) -> None:
        rolling = sorted((e, p) for e, p in self._epoch_files() if not self._is_permanent(e))
        for _, path in rolling[: max(len(rolling) - self.keep_last, 0)]:
            path.unlink(missing_ok=True)

    def _remove_stale_temps(self) -> None:
        """Delete temporary files left by writers that died mid-save (``kill -9``, preemption, power cut).

        A file is stale when its process is gone, or is this process: a manager being built is not saving.
        """
        for path in self.directory.iterdir():
            m = _TEMP_NAME.match(path.name)
            if m is None:
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and _process_alive(pid):
                continue
            log.info("removing %s, left by an interrupted checkpoint write", path)
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
