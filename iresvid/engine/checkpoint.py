"""Training checkpoints that are never lost or half-written, and a resume that never picks a broken one.

Every file is written atomically by `iresvid.checkpoint_io` (a temporary file beside the target, fsynced,
then renamed over it): a crash, ``kill -9`` or full disk at any moment leaves either the old file or the
new one, never a truncated mix.  This module decides which files there are and which one to resume from.

`CheckpointManager` owns one run directory:

- ``last.pth``: every save (epoch ends and mid-epoch saves); resuming starts here.
- ``best.pth``: the saves marked ``is_best``.
- ``epoch_{epoch:04d}.pth``: epoch-end saves only, kept for good every ``keep_every_epochs`` epochs, plus
  the ``keep_last`` newest epoch ends (rolling; older ones are deleted once the new one is on disk).  The
  rolling copy is the fallback should ``last.pth`` be damaged anyway (copied elsewhere and truncated, a
  disk error), and it is never overwritten by a mid-epoch save.

Pruning deletes only epoch files this run wrote: each checkpoint records them (``checkpoint_files``), and a
resumed run adopts that record (`CheckpointManager.adopt`), so an ``epoch_*.pth`` another run left in the
folder — or one copied there by hand — is never deleted for its name.

Checkpoints are read back with `read_checkpoint` (``torch.load(weights_only=True)``), so everything saved
must be tensors and plain Python values; `capture_rng_state` converts the RNG states accordingly.  The
manager reads back its first save before putting it in place, so a state that cannot be loaded (an
``argparse.Namespace``, a numpy scalar…) fails at the first save instead of at the resume days later.

Only one process (rank 0) may save into a directory: rank 0 of a DDP job, and one job per directory (the
trainer holds `iresvid.files.RunLock` on it for the whole run).
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

import iresvid
from iresvid.checkpoint_io import (
    CheckpointError,
    atomic_copy,
    atomic_save,
    read_checkpoint,
    remove_stale_temps,
)

log = logging.getLogger(__name__)

_EPOCH_NAME = re.compile(r"^epoch_(\d+)\.pth$")


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
    Retention applies to this run's own epoch files only (see the module docstring).
    ``clean``: delete the temporary files of interrupted writes — only where no other process may be
    writing into the directory (the process holding the run's lock).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep_every_epochs: int = 0,
        keep_last: int = 1,
        clean: bool = True,
    ):
        if keep_every_epochs < 0 or keep_last < 0:
            raise ValueError(
                f"keep_every_epochs and keep_last must be >= 0, got {keep_every_epochs}, {keep_last}"
            )
        self.directory = Path(directory)
        self.keep_every_epochs = keep_every_epochs
        self.keep_last = keep_last
        self.directory.mkdir(parents=True, exist_ok=True)
        self._verified = False
        self._epochs: set[int] = set()  # the epoch files this run wrote here: the only ones pruning deletes
        if clean:  # a manager being built is not saving: every temp there is stale
            remove_stale_temps(self.directory)

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
        keep_epoch = epoch_end and (self._is_permanent(epoch) or self.keep_last > 0)
        epochs = self._epochs | {epoch} if keep_epoch else self._epochs
        # Listed before they are pruned: a crash between the two leaves a file this run still knows is its.
        files = {"directory": str(self.directory.resolve()), "epochs": sorted(epochs)}
        full = {
            **state,
            "epoch": epoch,
            "step": step,
            "iresvid_version": iresvid.__version__,
            "checkpoint_files": files,
        }
        verify = None if self._verified else self._verify_loadable
        atomic_save(full, self.last_path, verify=verify)
        self._verified = True
        # The other files are byte copies of last.pth: no second serialisation, no tensors copied off a GPU.
        if is_best:
            atomic_copy(self.last_path, self.best_path)
        if keep_epoch:
            atomic_copy(self.last_path, self.epoch_path(epoch))
            self._epochs = epochs
            self._prune_epochs()
        return self.last_path

    def adopt(self, state: dict) -> None:
        """Count as this run's own the epoch files that the run of ``state`` (the checkpoint being resumed)
        wrote into this directory, so that pruning goes on with them.  A checkpoint of another directory,
        or one from before this record existed, adopts nothing: its files are kept rather than guessed."""
        files = state.get("checkpoint_files")
        if isinstance(files, dict) and files.get("directory") == str(self.directory.resolve()):
            self._epochs |= {int(e) for e in files.get("epochs", ())}

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

    def _is_permanent(self, epoch: int) -> bool:
        return self.keep_every_epochs > 0 and epoch % self.keep_every_epochs == 0

    def _epoch_files(self) -> list[tuple[int, Path]]:
        return [
            (int(m.group(1)), path)
            for path in self.directory.iterdir()
            if (m := _EPOCH_NAME.match(path.name)) and path.is_file()
        ]

    def _prune_epochs(self) -> None:
        rolling = sorted(e for e in self._epochs if not self._is_permanent(e))
        for epoch in rolling[: max(len(rolling) - self.keep_last, 0)]:
            self.epoch_path(epoch).unlink(missing_ok=True)
            self._epochs.discard(epoch)
