"""Checkpoints: atomic writes under failures and kill -9, retention, fallback on damaged files, RNG state."""

import argparse
import errno
import io
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import iresvid
from iresvid import checkpoint_io, files
from iresvid.checkpoint_io import CheckpointError, CheckpointWriteError, atomic_save, read_checkpoint
from iresvid.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state

REPO = Path(__file__).resolve().parents[1]


def _temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_atomic_save_keeps_the_old_file_until_the_complete_new_one_replaces_it(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"version": 1, "w": torch.zeros(1000)}, path)
    real_replace = os.replace
    seen = []

    def replace(src, dst):
        # At the moment of the rename the target is still the old version and the temp file is complete.
        seen.append((read_checkpoint(dst)["version"], read_checkpoint(src)["version"], Path(src).name))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_io.os, "replace", replace)
    atomic_save({"version": 2, "w": torch.ones(1000)}, path)
    ((old, new, temp_name),) = seen
    assert (old, new) == (1, 2)
    assert temp_name.startswith(".last.pth.tmp-")
    assert read_checkpoint(path)["version"] == 2
    assert _temps(tmp_path) == []


class _FillingDisk(io.FileIO):
    """A file on a disk that is full after 64 kB: the write that crosses the limit fails half-way."""

    def write(self, data):
        room = 65536 - self.tell()
        if len(data) > room:
            super().write(bytes(memoryview(data)[: max(room, 0)]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _fail_fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # delayed allocation reports ENOSPC at fsync


def _fail_torch_save(obj, f):
    f.write(b"PK\x03\x04 partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    "failure, reason",
    [
        ("file write", "disk full"),
        ("fsync", "disk full"),
        ("torch.save", "disk full"),
        ("unpicklable", "lambda"),
    ],
)
def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch, failure, reason):
    path = tmp_path / "last.pth"
    atomic_save({"version": 1}, path)
    new = {"version": 2, "w": torch.randn(100_000)}  # 400 kB: larger than the "disk"
    if failure == "file write":
        monkeypatch.setattr(files, "_open_new", lambda file: _FillingDisk(file, "xb"))
    elif failure == "fsync":
        monkeypatch.setattr(checkpoint_io.os, "fsync", _fail_fsync)
    elif failure == "torch.save":
        monkeypatch.setattr(torch, "save", _fail_torch_save)
    else:
        new["hook"] = lambda: None
    with pytest.raises(CheckpointWriteError) as info:
        atomic_save(new, path)
    monkeypatch.undo()
    assert str(path) in str(info.value) and reason in str(info.value)
    assert isinstance(info.value, OSError)
    assert info.value.errno == (None if failure == "unpicklable" else errno.ENOSPC)
    assert _temps(tmp_path) == []
    assert read_checkpoint(path) == {"version": 1}


def test_manager_writes_last_best_and_epoch_files(tmp_path):
    manager = CheckpointManager(tmp_path, keep_every_epochs=2, keep_last=1)
    for epoch in range(1, 6):
        manager.save({"w": torch.full((3,), float(epoch))}, epoch=epoch, step=10 * epoch, is_best=epoch == 3)
    manager.save({"w": torch.full((3,), 5.5)}, epoch=5, step=55, epoch_end=False)
    # Every 2nd epoch for good, the newest epoch end rolling; the mid-epoch save only touches last.pth.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pth", "epoch_0002.pth", "epoch_0004.pth", "epoch_0005.pth", "last.pth"
    ]  # fmt: skip
    last = manager.load(manager.last_path)
    assert (last["epoch"], last["step"], last["w"][0].item()) == (5, 55, 5.5)
    assert last["iresvid_version"] == iresvid.__version__
    assert manager.load(tmp_path / "epoch_0005.pth")["w"][0].item() == 5.0
    assert manager.load(manager.best_path)["epoch"] == 3
    assert manager.latest() == manager.last_path


def test_keep_last_zero_writes_only_permanent_epochs(tmp_path):
    manager = CheckpointManager(tmp_path, keep_every_epochs=3, keep_last=0)
    for epoch in range(1, 8):
        manager.save({}, epoch=epoch, step=epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0003.pth", "epoch_0006.pth", "last.pth"]


def test_save_does_not_modify_the_callers_state(tmp_path):
    state = {"w": torch.zeros(2)}
    CheckpointManager(tmp_path).save(state, epoch=1, step=1)
    assert list(state) == ["w"]


def test_latest_skips_damaged_files_newest_first(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None  # fresh run
    for epoch in range(1, 4):
        manager.save({"w": torch.randn(1000)}, epoch=epoch, step=epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0002.pth", "epoch_0003.pth", "last.pth"]

    _truncate(manager.last_path)
    with caplog.at_level(logging.WARNING, logger="iresvid.engine.checkpoint"):
        assert manager.latest() == tmp_path / "epoch_0003.pth"
    assert str(manager.last_path) in caplog.text

    _truncate(tmp_path / "epoch_0003.pth")
    assert manager.latest() == tmp_path / "epoch_0002.pth"

    _truncate(tmp_path / "epoch_0002.pth")
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        manager.latest()


def test_resolve(tmp_path):
    manager = CheckpointManager(tmp_path / "run")
    assert manager.resolve(None) is None
    assert manager.resolve("") is None
    assert manager.resolve("auto") is None
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        manager.resolve(str(tmp_path / "missing.pth"))
    manager.save({}, epoch=1, step=1)
    assert manager.resolve("auto") == manager.last_path
    assert manager.resolve(str(manager.last_path)) == manager.last_path


@pytest.mark.parametrize("bad", [np.float64(0.5), argparse.Namespace(lr=0.1)])
def test_first_save_refuses_a_state_that_could_not_be_resumed(tmp_path, bad):
    CheckpointManager(tmp_path).save({"good": 1}, epoch=1, step=1)
    manager = CheckpointManager(tmp_path)  # e.g. the resumed run
    with pytest.raises(CheckpointError, match="could not be resumed"):
        manager.save({"best_top1": bad}, epoch=2, step=2)
    assert read_checkpoint(manager.last_path)["good"] == 1
    assert _temps(tmp_path) == []


def test_manager_removes_temps_of_dead_writers_only(tmp_path):
    dead = tmp_path / ".last.pth.tmp-999999999-0a1b2c3d"  # beyond any pid_max
    alive = tmp_path / f".last.pth.tmp-{os.getppid()}-0a1b2c3d"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    CheckpointManager(tmp_path)
    assert not dead.exists() and alive.exists()


def _draw() -> list:
    return [
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(3).tolist(),
    ]


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # both generators now hold a cached second gaussian, which is part of the state
    np.random.randn()
    atomic_save({"rng": capture_rng_state()}, tmp_path / "rng.pth")
    expected = _draw()
    assert _draw() != expected
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert _draw() == expected


_SAVE_FOREVER = """
import sys
import torch
from iresvid.engine.checkpoint import CheckpointManager

manager = CheckpointManager(sys.argv[1])
weights = torch.randn(4_000_000)  # 16 MB: a save lasts long enough that a random kill lands inside one
step = 0
while True:
    step += 1
    manager.save({"weights": weights}, epoch=0, step=step, epoch_end=False)
    if step == 1:
        print("saved", flush=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_kill_9_during_saves_never_leaves_an_unloadable_last(tmp_path):
    rng = random.Random(0)
    runs = [tmp_path / f"run{i}" for i in range(3)]
    # Started together so their imports overlap; each is killed at a random moment after its first save.
    procs = [
        subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(run)], stdout=subprocess.PIPE, cwd=REPO)
        for run in runs
    ]
    killed_mid_write = 0
    try:
        for proc, run in zip(procs, runs, strict=True):
            assert proc.stdout.readline() == b"saved\n", "the saving process failed to start"
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_mid_write += bool(_temps(run))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    for run in runs:
        last = read_checkpoint(run / "last.pth")
        assert last["step"] >= 1 and last["weights"].shape == (4_000_000,)
        manager = CheckpointManager(run)
        assert manager.latest() == run / "last.pth"
        assert _temps(run) == []  # the dead writer's temp file is cleaned up
    # A save is almost all writing, so a random kill lands in one; one such kill proves the point.
    assert killed_mid_write >= 1
