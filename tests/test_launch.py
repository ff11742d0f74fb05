"""``tools/train.py`` through Hydra: one run, a multirun sweep with its table, and a submitit job that is
stopped at its time limit, requeued, and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from test_engine import DEMO_CONFIG, REPO, tiny

from iresvid.config import ConfigError, load_config
from iresvid.data.synthetic import make_demo_data
from iresvid.engine import launch
from iresvid.engine.dist import adopt_slurm_tasks


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "ucf101"
    make_demo_data(root, layout="ucf101", videos_per_class=4, num_frames=16, size=(32, 32))
    return root


def train_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "train.py"), "--config", str(DEMO_CONFIG), *args]


def run_train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(train_command(*args), capture_output=True, text=True, env=env, timeout=timeout)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_one_run_goes_through_hydra_into_its_output_folder(demo_root, tmp_path):
    out = tmp_path / "run"
    proc = run_train(
        *tiny(demo_root, out, "schedule.epochs=1", "train.max_steps_per_epoch=2", "optim.lr=0.003")
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epoch"] == 1
    # Hydra's record of the run, and the fully resolved config the run used, beside its checkpoints
    overrides = (out / ".hydra" / "overrides.yaml").read_text()
    assert "optim.lr=0.003" in overrides
    given = tiny(demo_root, out, "schedule.epochs=1", "train.max_steps_per_epoch=2", "optim.lr=0.003")
    assert load_config(out / "config.yaml") == load_config(DEMO_CONFIG, given)
    assert torch.load(out / "last.pth", weights_only=True)["config"]["optim"]["lr"] == 0.003


def test_a_sweep_runs_each_combination_in_its_folder_and_ends_with_one_table(demo_root, tmp_path):
    base = tmp_path / "sweep"
    proc = run_train(
        *tiny(demo_root, base, "schedule.epochs=1", "train.max_steps_per_epoch=1", "train.eval_every=0"),
        "-m",
        "optim.lr=0.001,0.004",
    )
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (base / "multirun").iterdir()
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [
        ("0", "0.001", "ok"),
        ("1", "0.004", "ok"),
    ]
    for row in rows:  # each job trained with its own value, in its own folder, and reports its own metric
        job = sweep / row["job"]
        state = torch.load(job / "last.pth", weights_only=True)
        assert state["config"]["optim"]["lr"] == float(row["optim.lr"])
        assert state["config"]["train"]["output_dir"] == str(job)
        assert float(row["val_video_top1"]) == state["history"][-1]["val_video_top1"]
    table = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("job"))
    assert table[header].split()[:3] == ["job", "optim.lr", "status"]
    assert [line.split()[:3] for line in table[header + 1 : header + 3]] == [
        ["0", "0.001", "ok"],
        ["1", "0.004", "ok"],
    ]
    assert not weights(sweep / "0" / "last.pth")["fc.weight"].equal(
        weights(sweep / "1" / "last.pth")["fc.weight"]
    )


def test_a_failed_job_of_a_sweep_is_reported_in_the_table(demo_root, tmp_path):
    base = tmp_path / "sweep"
    # 17 frames at stride 1 outspan the 16-frame videos: refused by the trainer, in that job only
    proc = run_train(
        *tiny(demo_root, base, "schedule.epochs=1", "train.max_steps_per_epoch=1", "data.frame_stride=1"),
        "-m",
        "data.num_frames=4,17",
    )
    assert proc.returncode == 1, proc.stderr
    rows = list(csv.DictReader(next((base / "multirun").iterdir()).joinpath("summary.csv").open()))
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"].startswith("failed: 'data.num_frames' × 'data.frame_stride' (17 × 1) spans 17")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["-m", "optim.lr=0.1,0.2", "optim.lrr=1"],
            "unknown config key 'optim.lrr'; did you mean 'optim.lr'?",
        ),
        (["-m", "optim.lr=0.1,fast"], "bad value for 'optim.lr'"),
        (["-m", "data.batch_size=8,0"], "'data.batch_size' must be >= 1, got 0"),
        (["model.depht=18"], "unknown config key 'model.depht'; did you mean 'model.depth'?"),
        (["+model.depht=18"], "command-line overrides: unknown config key 'model.depht'"),
    ],
)
def test_every_combination_of_a_sweep_is_checked_before_any_job(demo_root, tmp_path, args, message):
    proc = run_train(*tiny(demo_root, tmp_path / "x"), *args, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_command_line_translation():
    assert launch._split_arguments(["--config", "a.yaml", "x=1", "--resume=auto", "-m"]) == (
        "a.yaml",
        "auto",
        ["x=1", "-m"],
    )
    with pytest.raises(ConfigError, match="--config FILE is required"):
        launch._split_arguments(["x=1"])


TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _environment(monkeypatch, **variables: str) -> None:
    """This process's environment without SLURM's, submitit's or torchrun's variables, plus ``variables``."""
    ours = ("SLURM_", "SUBMITIT_", *TORCHRUN_VARIABLES)
    monkeypatch.setattr(
        os, "environ", {k: v for k, v in os.environ.items() if not k.startswith(ours)} | variables
    )


def test_slurm_tasks_become_torchrun_variables(monkeypatch):
    job = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    _environment(
        monkeypatch, **job, SLURM_NTASKS="16", SLURM_PROCID="11", SLURM_LOCALID="3", SLURM_NODEID="1"
    )
    assert adopt_slurm_tasks()
    env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")}
    assert env == {
        "RANK": "11",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "3",
        "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu07",
    }
    port = os.environ["MASTER_PORT"]
    assert 20000 <= int(port) <= 60000 and "SUBMITIT_EXECUTOR" not in os.environ
    # torchrun's variables, once set, are left alone; every task of the job derives the same port
    assert not adopt_slurm_tasks()
    del os.environ["WORLD_SIZE"], os.environ["MASTER_PORT"]
    os.environ["SLURM_PROCID"] = "0"
    assert adopt_slurm_tasks() and os.environ["MASTER_PORT"] == port and os.environ["RANK"] == "0"


def test_one_slurm_task_is_not_distributed(monkeypatch):
    _environment(monkeypatch, SLURM_JOB_ID="4242", SLURM_NTASKS="1", SLURM_PROCID="0")
    assert not adopt_slurm_tasks() and "WORLD_SIZE" not in os.environ


def _job_tasks(sweep_root: Path, timeout: float) -> list[psutil.Process]:
    """The training processes of the local submitit job under ``sweep_root``: the job id is the pid of the
    process submitit started (the controller, or the shell running its ``setup`` first), and the tasks are
    the processes below it that run submitit's task entry point."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in sweep_root.glob("multirun/*/.submitit/[0-9]*"):
            try:
                below = psutil.Process(int(folder.name)).children(recursive=True)
                tasks = [p for p in below if "submitit.core._submit" in " ".join(p.cmdline())]
            except psutil.NoSuchProcess:
                continue
            if tasks:
                return tasks
        time.sleep(0.1)
    raise AssertionError(f"no submitit job started under {sweep_root}")


def _logs(root: Path) -> str:
    """The ends of submitit's logs under ``root``: a failed job's reason is there, not in the launcher's
    output."""
    return "".join(f"\n--- {p}:\n{p.read_text()[-4000:]}" for p in sorted(root.rglob("*_log.*")))


class _JobEnded(AssertionError):
    """The launcher ended before what a test waited for appeared."""


def _wait_for(path_glob: str, root: Path, proc: subprocess.Popen, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        if proc.poll() is not None:
            out, err = proc.communicate()
            ended = f"the job ended (exit {proc.returncode}) before {path_glob}"
            raise _JobEnded(f"{ended}:\n{err[-3000:]}{_logs(root)}")
        time.sleep(0.05)
    raise AssertionError(f"{path_glob} did not appear under {root}")


# submitit 1.5's local controller opens its job's log before the submitting process has made the job's
# folder (it is named after the controller's pid, known only once it runs); on a loaded machine the
# controller sometimes wins and dies with this in its traceback, at the first start or at the requeue.
_SUBMITIT_START_RACE = "in start_tasks"


def _stop_a_job_at_its_time_limit(
    command: list[str], root: Path, tasks: int, env: dict
) -> tuple[int, str, Path | None]:
    """Launch ``command`` (a submitit_local sweep of one job), signal its tasks as SLURM does before a time
    limit once its first epoch is saved, and wait for it to end: (exit status, stderr with submitit's logs,
    the job's folder)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    job_dir = None
    try:
        job_dir = _wait_for("multirun/*/0/epoch_0001.pth", root, proc, timeout=240).parent
        running = _job_tasks(root, timeout=10)
        assert len(running) == tasks
        for task in running:
            task.send_signal(signal.SIGUSR2)  # SLURM signals every task of the job
        _, err = proc.communicate(timeout=300)
    except _JobEnded as ended:
        return 1, str(ended), None
    finally:  # the launcher and the job it started: submitit's controller outlives a killed launcher
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        proc.kill()
        proc.wait()
    return proc.returncode, err + _logs(root), job_dir


@pytest.mark.slow
@pytest.mark.parametrize("tasks", [1, 2], ids=["one task", "two tasks"])
def test_a_submitit_job_stopped_at_its_time_limit_requeues_and_ends_bitwise(demo_root, tmp_path, tasks):
    """submitit's local executor stands in for SLURM: the signal SLURM sends before a time limit (SIGUSR2,
    which the local controller sends too) arrives while the job trains; the job saves a checkpoint at the
    next step, requeues itself, and the requeued job resumes and ends with the weights of a run never stopped.
    With two tasks, each joins the process group from the task variables alone (no torchrun), and both stop
    at the same step; the reference is then torchrun's two processes."""
    extra = ["schedule.epochs=5", "train.max_steps_per_epoch=6", "train.eval_every=0", "train.save_every=1"]
    if tasks == 2:  # as in test_engine's DDP test: frozen BN statistics, SGD; agree on a stop every step
        extra += ["model.norm_eval=true", "optim.name=sgd", "optim.lr=0.02", "train.log_every=1"]
    settings = tiny(demo_root, tmp_path / "job", *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    # The controller's start is put off a little (submitit runs `setup` in a shell before it), so that the
    # submitting process has made the job's folder first: see _SUBMITIT_START_RACE.
    launcher += [f"hydra.launcher.tasks_per_node={tasks}", "++hydra.launcher.setup=['sleep 1']"]
    for attempt in (1, 2):
        returncode, err, job_dir = _stop_a_job_at_its_time_limit(
            train_command(*settings, "-m", *launcher), tmp_path / "job", tasks, env
        )
        if not (_SUBMITIT_START_RACE in err and attempt == 1):
            break
        shutil.rmtree(tmp_path / "job")  # submitit's own race, not ours: once more, from scratch
    assert returncode == 0, err[-3000:] + _logs(tmp_path / "job")
    log = (job_dir / "log.txt").read_text()
    assert "preempted or at the time limit: requeueing the job" in log
    assert "resumed from" in log.split("requeueing the job", 1)[1]
    assert f"{tasks} processes × {8 // tasks} clips" in log
    submitit_log = "".join(p.read_text() for p in job_dir.parent.glob(".submitit/*/*_0_log.err"))
    assert "Requeued job" in submitit_log
    assert list(csv.DictReader((job_dir.parent / "summary.csv").open()))[0]["status"] == "ok"

    reference = tmp_path / "reference"  # in processes like the job's (one thread: the same sums)
    command = train_command(*tiny(demo_root, reference, *extra))
    if tasks == 2:
        command[1:1] = ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = weights(job_dir / "last.pth"), weights(reference / "last.pth")
    if tasks == 1:
        assert_same_weights(ours, theirs)
    else:  # two processes: within test_engine's DDP tolerance (bitwise across a 2-task requeue: open)
        for key, value in theirs.items():
            torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-6, msg=key)
