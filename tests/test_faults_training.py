"""Training under faults: kill -9 at any moment, a full disk, hostile or mismatched checkpoints at resume,
and a failing rank in a torchrun job.  Each ends in a clear error or an exact resume, never a hang or a
silently wrong model."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from test_engine import DEMO_CONFIG, REPO, assert_same_weights, tiny, train

from iresvid import cli, files
from iresvid.config import load_config
from iresvid.data.synthetic import make_demo_data
from iresvid.engine import dist
from iresvid.engine.checkpoint import CheckpointManager
from iresvid.engine.trainer import Trainer
from iresvid.models.weights import read_checkpoint

TRAIN_TOOL = REPO / "tools" / "train.py"
# One thread: runs in different processes are then bitwise reproducible (the reduction order is fixed).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "ucf101"
    make_demo_data(root, layout="ucf101", videos_per_class=4, num_frames=16, size=(32, 32))
    return root


@pytest.fixture
def train_cli(monkeypatch, capsys) -> Callable[..., tuple[int, list[str]]]:
    """``iresvid train`` in this process → (exit code, stderr lines).  Its logging setup is skipped: it
    reconfigures the root logger for good.  So stderr holds exactly what the CLI itself prints."""
    monkeypatch.setattr(cli, "setup_logging", lambda output_dir: None)

    def run(*args: str) -> tuple[int, list[str]]:
        code = cli.main(["train", "--config", str(DEMO_CONFIG), *args])
        return code, capsys.readouterr().err.splitlines()

    return run


def temps(directory: Path) -> list[str]:
    """Temporary files of unfinished writes of last.pth."""
    return [p.name for p in directory.iterdir() if p.name.startswith(".last.pth.tmp-")]


# ----------------------------------------------------------------------------------------- kill -9

# 8 epochs × 3 steps, a checkpoint after every step, evaluation only at the end.
KILL_RUN = ("schedule.epochs=8", "train.eval_every=0", "train.save_every_steps=1", "train.resume=auto")


def _inode(path: Path) -> int | None:
    """Changes at every save: `atomic_save` renames a new file over the old."""
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _wait_until(condition: Callable[[], object], proc: subprocess.Popen, poll_s: float) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run made no progress in 60 s"
        time.sleep(poll_s)


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_kill_9_at_random_moments_and_mid_save_then_resume_gives_the_uninterrupted_weights(
    demo_root, tmp_path
):
    """``tools/train.py`` killed 4 times: twice at a random moment, twice the instant a save's temporary file
    appears.  A kill verifiably landed inside a save when the temporary file outlives the process (a save
    that completes renames it, one that fails deletes it).  A save of this model lasts ~20 ms and the file is
    polled every 0.2 ms: 12 of 12 such kills landed inside a save, 6 of them with both cores busy."""
    rng = random.Random(0)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference = subprocess.run(
        [sys.executable, str(TRAIN_TOOL), "--config", str(DEMO_CONFIG), *tiny(demo_root, whole, *KILL_RUN)],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]
    cmd = [sys.executable, str(TRAIN_TOOL), "--config", str(DEMO_CONFIG), *tiny(demo_root, cut, *KILL_RUN)]
    last, step, killed_mid_save = cut / "last.pth", 0, 0
    for moment in ("random", "mid-save", "random", "mid-save"):
        before = _inode(last)
        with open(tmp_path / "killed.log", "a") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=ENV)
        try:
            _wait_until(lambda before=before: _inode(last) not in (None, before), proc, 0.005)  # it saved
            if moment == "random":
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                _wait_until(lambda: temps(cut), proc, 0.0002)
        finally:
            proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up, as with the OOM killer
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
        killed_mid_save += bool(temps(cut))  # looked at before the manager deletes the dead writer's file
        latest = CheckpointManager(cut).latest()
        assert latest == last and temps(cut) == []
        state = read_checkpoint(latest)
        assert state["step"] > step, "every run saved before it was killed"
        step = state["step"]
    assert killed_mid_save >= 1

    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {last}" in done.stderr
    expected, resumed = read_checkpoint(whole / "last.pth"), read_checkpoint(last)
    assert resumed["step"] == expected["step"] == 24
    assert_same_weights(resumed["model"], expected["model"])
    assert_same_weights(resumed["optimizer"]["state"][0], expected["optimizer"]["state"][0])


# --------------------------------------------------------------------------------------- full disk


class _FullDisk(io.FileIO):
    """A file on a full disk: its first write stores what fits (half) and fails with ENOSPC."""

    def write(self, data) -> int:
        super().write(bytes(memoryview(data)[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class DiskFillingUp:
    """The file writer's ``_open_new`` (`iresvid.files`) on a disk that is full from the
    ``saves + 1``-th write of last.pth on.

    The failure is at the system-call level, as on a real disk: ``torch.save`` turns it into a RuntimeError,
    so this also checks that the checkpoint writer digs the ENOSPC out.  A real small tmpfs would need root
    to mount; this runs anywhere, and `test_checkpoint` covers ENOSPC raised by fsync and torch.save too.
    """

    def __init__(self, saves: int):
        self.saves, self.last_writes = saves, 0

    def __call__(self, file):
        self.last_writes += Path(file).name.startswith(".last.pth.tmp-")
        return _FullDisk(file, "xb") if self.last_writes > self.saves else builtins.open(file, "xb")


def test_a_full_disk_stops_training_with_one_line_and_the_last_good_checkpoint_resumes(
    demo_root, tmp_path, monkeypatch, train_cli
):
    every_step = "train.save_every_steps=1"
    reference, _ = train(tiny(demo_root, tmp_path / "whole", every_step))
    out = tmp_path / "cut"
    last = out / "last.pth"
    with monkeypatch.context() as patch:
        # Saves after steps 1, 2 and at the end of epoch 1 (step 3, with best.pth and epoch_0001.pth) go
        # through; the one after step 4 finds the disk full.
        patch.setattr(files, "_open_new", DiskFillingUp(saves=3))
        code, err = train_cli(*tiny(demo_root, out, every_step))
    assert code == 2
    assert err == [
        f"error: cannot write checkpoint {last}: disk full (OSError: [Errno {errno.ENOSPC}] "
        f"{os.strerror(errno.ENOSPC)}); the previous file there, if any, is unchanged"
    ]
    assert temps(out) == []  # the half-written file is gone
    assert CheckpointManager(out).latest() == last
    assert read_checkpoint(last)["step"] == 3

    resumed, metrics = train(tiny(demo_root, out, every_step, "train.resume=auto"))
    assert resumed.step == reference.step == 6 and metrics["epoch"] == 2
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())


# ------------------------------------------------------------------------- hostile / wrong checkpoints


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory) -> Path:
    """last.pth of a one-step run of the tiny model on the 8 demo classes."""
    out = tmp_path_factory.mktemp("trained")
    cfg = load_config(DEMO_CONFIG, tiny(demo_root, out, "schedule.epochs=1", "train.max_steps_per_epoch=1"))
    Trainer(cfg).fit()
    return out / "last.pth"


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: any code could run in its place."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_resume_from_a_pickle_that_would_run_code_is_refused(demo_root, tmp_path, trained, train_cli):
    state = torch.load(trained, weights_only=True)
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    torch.save({**state, "history": _RunsCode(marker)}, evil)
    code, err = train_cli("--resume", str(evil), *tiny(demo_root, tmp_path / "run"))
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: refusing to load {evil}: it holds Python objects")
    assert not marker.exists()
    # The file is really hostile: a plain unpickle runs its code.
    torch.load(evil, weights_only=False)["history"].close()
    assert marker.exists()


def _other_classes(state: dict) -> dict:
    """The checkpoint a run on a 4-class dataset would have written."""
    model = {
        **state["model"],
        "fc.weight": state["model"]["fc.weight"][:4],
        "fc.bias": state["model"]["fc.bias"][:4],
    }
    return {**state, "model": model, "classes": state["classes"][:4]}


WRONG_CHECKPOINTS = {
    # (how the checkpoint is made, overrides of the resuming run, what the error must say)
    "another architecture": (
        lambda state: state,
        ["model.name=resnet3d18"],
        ["does not fit model resnet3d18", "missing keys: layer2.0.downsample.0.weight",
         "unexpected keys: layer2.0.downsample.2.weight",
         "resume with the model it was trained with; model.name='iresnet3d18' there, 'resnet3d18' here"],
    ),
    "another width": (
        lambda state: state,
        ["model.width_scale=0.25"],
        ["shape mismatches: conv1.weight: checkpoint (8, 3, 3, 7, 7) vs model (16, 3, 3, 7, 7)",
         "model.width_scale=0.125 there, 0.25 here"],
    ),
    "another number of classes": (
        _other_classes,
        [],
        ["shape mismatches: fc.weight: checkpoint (4, 64) vs model (8, 64), fc.bias: checkpoint (4,) vs",
         "to fine-tune its weights on these classes instead, start a new run with model.pretrained={path} "
         "model.reset_classifier=true"],
    ),
    "other classes, as many": (
        lambda state: {**state, "classes": state["classes"][::-1]},
        [],
        ["it was trained on other classes than", "(8 vs 8 classes",
         "start a new run with model.pretrained={path} model.reset_classifier=true"],
    ),
    "weights only": (
        lambda state: state["model"],
        [],
        ["{path} is not an iresvid training checkpoint (no model, optimizer,", "set model.pretrained={path}"],
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    "make, overrides, expected", WRONG_CHECKPOINTS.values(), ids=WRONG_CHECKPOINTS.keys()
)
def test_resume_refuses_a_checkpoint_it_cannot_continue_naming_what_differs(
    demo_root, tmp_path, trained, train_cli, make, overrides, expected
):
    path = tmp_path / "other.pth"
    torch.save(make(torch.load(trained, weights_only=True)), path)
    code, err = train_cli("--resume", str(path), *tiny(demo_root, tmp_path / "run", *overrides))
    message = "\n".join(err)
    assert code == 2 and message.startswith("error: ")
    for fragment in expected:
        assert fragment.format(path=path) in message
    assert not (tmp_path / "run" / "last.pth").exists()


def test_the_fine_tuning_the_refusal_suggests_works(demo_root, tmp_path, trained):
    four = tmp_path / "four_classes.pth"
    torch.save(_other_classes(torch.load(trained, weights_only=True)), four)
    cfg = load_config(
        DEMO_CONFIG,
        tiny(demo_root, tmp_path / "run", f"model.pretrained={four}", "model.reset_classifier=true"),
    )
    model = Trainer(cfg).model
    assert model.fc.out_features == 8
    assert torch.equal(model.conv1.weight, read_checkpoint(four)["model"]["conv1.weight"])


# -------------------------------------------------------------------------------------------- DDP

# Frozen BN statistics and SGD, as in test_engine's DDP test (lr 0.02: with frozen BN this tiny model
# diverges to NaN at 0.1 within 6 steps); a checkpoint after every step; evaluation only at the end.
DDP_RUN = (
    "model.norm_eval=true",
    "optim.name=sgd",
    "optim.lr=0.02",
    "schedule.epochs=2",
    "train.max_steps_per_epoch=3",
    "train.eval_every=0",
    "train.save_every_steps=1",
    "train.resume=auto",
)

# `iresvid train` whose optimizer step raises where CONDITION holds: a fault injected from outside.
_FAULTY_TRAIN = """
import os
import sys

from iresvid.cli import main
from iresvid.engine.trainer import Trainer

optimizer_step = Trainer._optimizer_step


def faulty_step(self):
    if CONDITION:
        raise RuntimeError(f"injected fault on rank {self.dist.rank} at step {self.step}")
    optimizer_step(self)


Trainer._optimizer_step = faulty_step
sys.exit(main(["train", *sys.argv[1:]]))
"""


def torchrun(script: Path, out: Path, demo_root: Path, *launcher: str, **env: str) -> tuple[int, str]:
    """A 2-process gloo job of ``script``; (exit code, output).  A job still running after 120 s fails the
    test, and is killed with its workers (torchrun starts each in a session of its own)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *launcher,
        str(script), "--config", str(DEMO_CONFIG), *tiny(demo_root, out, *DDP_RUN),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**ENV, **env}
    )
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        job = psutil.Process(proc.pid)
        for process in [*job.children(recursive=True), job]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        output, _ = proc.communicate()
        pytest.fail(f"the job hung: killed after 120 s\n{output[-3000:]}")
    return proc.returncode, output


def faulty_train(tmp_path: Path, condition: str) -> Path:
    script = tmp_path / "faulty_train.py"
    script.write_text(_FAULTY_TRAIN.replace("CONDITION", condition))
    return script


@pytest.mark.slow
def test_a_rank_that_fails_mid_epoch_ends_the_whole_job_with_its_error(demo_root, tmp_path):
    """Rank 0 is then waiting in an all-reduce for rank 1: gloo sees the closed connection, torchrun stops the
    job and names rank 1 as the root cause."""
    script = faulty_train(tmp_path, "self.dist.rank == 1 and self.step == 2")
    code, output = torchrun(script, tmp_path / "run", demo_root)
    assert code != 0
    assert "RuntimeError: injected fault on rank 1 at step 2" in output
    assert "injected fault on rank 0" not in output


@pytest.mark.slow
def test_torchrun_restarts_a_failed_job_which_resumes_to_the_uninterrupted_weights(demo_root, tmp_path):
    """Rank 1 fails at step 4 of the first attempt (a checkpoint after every step: last.pth is step 4's);
    ``--max-restarts=1`` starts both ranks again, and ``train.resume=auto`` takes them to the weights of
    an uninterrupted 2-process run, bitwise: a 2-process all-reduce adds the same two numbers in either run,
    and every rank's RNG state comes back from the checkpoint.  Each round gets a TCP store of its own, as
    rank 0 advises (see the next test)."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    code, output = torchrun(TRAIN_TOOL, whole, demo_root)
    assert code == 0, output[-3000:]
    first_attempt = 'os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"'
    restart_once = f"{first_attempt} and self.dist.rank == 1 and self.step == 4"
    own_stores = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    code, output = torchrun(
        faulty_train(tmp_path, restart_once), cut, demo_root, "--max-restarts=1", **own_stores
    )
    assert code == 0, output[-3000:]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in output
    assert "RuntimeError: injected fault on rank 1 at step 4" in output
    assert f"no checkpoint in {cut} yet: starting from scratch" in output
    assert f"resumed from {cut / 'last.pth'} (step 1 of epoch 2)" in output
    expected, resumed = read_checkpoint(whole / "last.pth"), read_checkpoint(cut / "last.pth")
    assert resumed["step"] == expected["step"] == 6
    assert_same_weights(resumed["model"], expected["model"])


@pytest.mark.parametrize(
    "max_restarts, shared_store, warned", [(1, "True", True), (1, "False", False), (0, "True", False)]
)
def test_rank_0_warns_when_torchrun_restarts_would_share_a_store(
    monkeypatch, caplog, max_restarts, shared_store, warned
):
    """With torch's shared store, 5 of 8 restarts of the job above failed (4 reading the previous round's
    address: "Gloo connectFullMesh failed ... Connection refused", 1 hanging); 6 of 6 passed without it."""
    joined = []
    monkeypatch.setattr(dist.dist, "init_process_group", lambda *args, **kwargs: joined.append(args))
    env = {"WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
           "TORCHELASTIC_USE_AGENT_STORE": shared_store}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level(logging.WARNING, logger="iresvid.engine.dist"):
        dist.init_distributed("gloo", "cpu")
    assert joined == [("gloo",)]
    assert ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in caplog.text) == warned
