"""Checkpoint file I/O: a bitwise round trip, atomic writes that fail cleanly, reads that refuse clearly."""

import errno
import io
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from iresvid import checkpoint_io
from iresvid.checkpoint_io import (
    CheckpointError,
    CheckpointWriteError,
    atomic_copy,
    atomic_save,
    read_checkpoint,
    remove_stale_temps,
)
from iresvid.errors import UserError


def _nested_state() -> dict:
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(4, 3, generator=generator)
    weights[0, :2] = torch.tensor([float("nan"), -0.0])  # NaN and -0.0 compare badly with ==; bits do not
    return {
        "model": {"conv.weight": weights, "bn.num_batches_tracked": torch.tensor(7)},
        "half": torch.randn(5, generator=generator).to(torch.bfloat16),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(-3, 3, dtype=torch.int64),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
        "history": [{"epoch": 1, "top1": 0.25}, {"epoch": 2, "top1": 0.5}],
        "rng": (3, (1, 2, 2**40), None),
        "classes": ["abseiling", "zorbing", "ünïcode ☃"],
        "step": 2**62,
        "config": {"optim": {"name": "sgd", "lr": 0.1, "milestones": [30, 60]}, "note": ""},
    }


def _assert_bitwise_equal(actual, expected, where: str = "state") -> None:
    assert type(actual) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), where
        assert actual.stride() == expected.stride(), where
        as_bytes = [t.contiguous().reshape(-1).view(torch.uint8) for t in (actual, expected)]
        assert torch.equal(*as_bytes), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            _assert_bitwise_equal(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_bitwise_equal(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_nested_state_round_trips_bitwise(tmp_path):
    state = _nested_state()
    path = atomic_save(state, tmp_path / "last.pth")
    assert path == tmp_path / "last.pth"
    _assert_bitwise_equal(read_checkpoint(path), state)
    copy = atomic_copy(path, tmp_path / "best.pth")
    assert copy.read_bytes() == path.read_bytes()
    assert _files(tmp_path) == ["best.pth", "last.pth"]  # no temporary file left behind


def _fail_fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # delayed allocation reports ENOSPC at fsync


_torch_save = torch.save


def _save_half_then_fail(obj, f):
    buffer = io.BytesIO()
    _torch_save(obj, buffer)
    f.write(buffer.getvalue()[: buffer.tell() // 2])  # a partial file is on disk when the disk fills up
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failure", ["torch.save", "fsync"])
def test_a_failed_write_leaves_nothing_at_the_final_name_and_no_temp(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pth"
    if failure == "fsync":
        monkeypatch.setattr(checkpoint_io.os, "fsync", _fail_fsync)
    else:
        monkeypatch.setattr(torch, "save", _save_half_then_fail)
    with pytest.raises(CheckpointWriteError) as info:
        atomic_save(_nested_state(), path)
    monkeypatch.undo()
    error = info.value
    assert isinstance(error, UserError) and isinstance(error, OSError)
    assert error.errno == errno.ENOSPC and error.path == path
    assert str(error).startswith(
        f"cannot write checkpoint {path}: disk full (OSError: [Errno {errno.ENOSPC}]"
    )
    assert _files(tmp_path) == []


def test_a_verifier_vetoes_the_write_with_its_own_error(tmp_path):
    path = atomic_save({"version": 1}, tmp_path / "last.pth")

    def refuse(temp: Path):
        assert read_checkpoint(temp) == {"version": 2}  # the complete new file, not yet at its name
        raise CheckpointError("not this one")

    with pytest.raises(CheckpointError, match="^not this one$"):
        atomic_save({"version": 2}, path, verify=refuse)
    assert read_checkpoint(path) == {"version": 1}
    assert _files(tmp_path) == ["last.pth"]


def test_temps_of_dead_writers_are_removed_and_others_kept(tmp_path):
    dead = tmp_path / ".last.pth.tmp-999999999-0a1b2c3d"  # beyond any pid_max
    alive = tmp_path / f".last.pth.tmp-{os.getppid()}-0a1b2c3d"
    for path in (dead, alive, tmp_path / "last.pth"):
        path.write_bytes(b"x")
    remove_stale_temps(tmp_path)
    assert _files(tmp_path) == [alive.name, "last.pth"]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")


def _truncated_checkpoint(path: Path) -> None:
    atomic_save(_nested_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "make",
    [
        lambda path: path.write_bytes(os.urandom(4096)),
        lambda path: path.write_text("epoch: 3\nthis is a text file, not a checkpoint\n"),
        lambda path: path.write_bytes(b""),
        _truncated_checkpoint,
    ],
    ids=["random bytes", "text", "empty", "truncated"],
)
def test_a_file_that_is_not_a_checkpoint_gives_one_line_naming_it(tmp_path, make):
    path = tmp_path / "not_a_checkpoint.pth"
    make(path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message  # the command line prints it as one line
    assert isinstance(info.value, UserError)


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: any code could run in its place."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the plain pickle is not torch's
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, writer):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    state = {"model": {"w": torch.zeros(2)}, "history": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    with pytest.raises(CheckpointError, match=f"^refusing to load {re.escape(str(path))}: ") as info:
        read_checkpoint(path)
    assert not marker.exists()
    assert "\n" not in str(info.value)
    if writer == "torch.save":  # the unpickler saw the callable: the message names it
        assert re.search(
            r"it holds Python objects that only a full unpickle could build \(\S*open\)", str(info.value)
        )
        torch.load(path, weights_only=False)["history"].close()  # the file really is hostile
        assert marker.exists()
