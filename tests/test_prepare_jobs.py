"""`iresvid prepare --shards N --launcher ...`: the shards as one submitit job array, run here by submitit's
LocalExecutor (the same tasks, pickles and signal handling as on SLURM, without a cluster).

The source is a handful of tiny Kinetics-style videos (`make_demo_data`), one of them corrupt and one never
downloaded.  Whatever happens to the array's tasks — interrupted and requeued, failed and re-run here — the
merged manifest must be byte for byte the one a plain single-process `prepare` writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import psutil
import pytest
from submitit.helpers import DelayedSubmission

from iresvid.cli import main
from iresvid.data.manifest import MANIFEST_NAME
from iresvid.data.prepare import (
    JOBS_DIR,
    STATE_DIR,
    SUMMARY_NAME,
    JobOptions,
    PrepareError,
    _worker_init,
    list_videos,
    merge_shards,
    prepare,
    shard_of,
    submit_shards,
    wait_for_shards,
)
from iresvid.data.synthetic import make_demo_data

OPTIONS = {
    "short_side": 32,
    "train_annotations": "annotations/train.csv",
    "val_annotations": "annotations/val.csv",
    "train_dir": "videos/train",
    "val_dir": "videos/val",
}
FLAGS = [
    "--format", "kinetics", "--short-side", "32", "--train-annotations", "annotations/train.csv",
    "--val-annotations", "annotations/val.csv", "--train-dir", "videos/train", "--val-dir", "videos/val",
]  # fmt: skip
# One CPU a task: it encodes in its own process (two tasks share this machine's two cores).
LOCAL = JobOptions("local", cpus=1, time_min=None)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jobs") / "kinetics"
    make_demo_data(root, layout="kinetics", videos_per_class=2, num_frames=16, size=(32, 32))
    videos = sorted((root / "videos").rglob("*.mp4"))
    videos[0].write_bytes(b"not a video")  # corrupt
    videos[1].unlink()  # listed, never downloaded
    return root


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    """The set one plain `prepare` in this process makes: what every job array must end with."""
    dst = tmp_path_factory.mktemp("reference") / "prepared"
    report = prepare(source, dst, "kinetics", workers=0, progress=False, **OPTIONS)
    assert report.counts == {"ok": 14, "corrupt": 1, "missing": 1}
    return dst


def prepared_files(root: Path) -> dict[str, str]:
    """Every prepared file's sha256: videos, manifest, annotations, options (not the job logs, nor the
    summary, which holds the run's timing)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != SUMMARY_NAME and STATE_DIR not in p.relative_to(root).parts
    }


def assert_same_set(dst: Path, reference: Path) -> None:
    assert (dst / MANIFEST_NAME).read_bytes() == (reference / MANIFEST_NAME).read_bytes()
    assert prepared_files(dst) == prepared_files(reference)


def signal_task(job, number: int) -> None:
    """Send ``number`` to every process of a local task, as SLURM signals every process of a job.  A local
    job's id is its controller's pid; the task and its encoding processes are the controller's children."""
    for process in psutil.Process(int(job.job_id)).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # one that ended meanwhile
            process.send_signal(number)


def prepare_command(source: Path, dst: Path, *flags: str) -> int:
    """``iresvid prepare SOURCE DST`` with the set's flags, in this process; its exit status."""
    return main(["prepare", str(source), str(dst), *FLAGS, *flags])


def test_a_local_job_array_makes_the_set_one_process_makes(source, reference, tmp_path, capsys):
    dst = tmp_path / "prepared"
    status = prepare_command(source, dst, "--shards", "2", "--launcher", "local", "--workers", "1")
    assert status == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "submitted 2 shards" in out and f"manifest: {dst / MANIFEST_NAME}" in out
    assert "status: ok 14, missing 1, corrupt 1, too short 0" in out
    assert_same_set(dst, reference)
    logs = sorted(p.name for p in (dst / STATE_DIR / JOBS_DIR).glob("*_log.out"))
    assert len(logs) == 2  # the job logs outlive the merge; the journals and markers do not
    assert sorted(p.name for p in (dst / STATE_DIR).iterdir()) == [JOBS_DIR]
    # The options the tasks recorded are the ones a run on this machine asks for: it checks, keeps, agrees.
    again = prepare(source, dst, "kinetics", workers=0, progress=False, **OPTIONS)
    assert (again.encoded, again.kept) == (0, 14)
    assert_same_set(dst, reference)


def test_a_task_at_its_time_limit_is_requeued_and_resumes_from_its_journal(source, reference, tmp_path):
    dst = tmp_path / "prepared"
    videos = list_videos(source, "kinetics", **{k: v for k, v in OPTIONS.items() if k != "short_side"}).videos
    counts = [sum(shard_of(v, 2) == i for v in videos) for i in range(2)]
    target = counts.index(max(counts))  # the longer shard: most of it is left when its first video is done
    # A time limit of one minute: submitit takes any requeue signal then as the limit's (not a preemption).
    jobs = submit_shards(
        source, dst, "kinetics", shards=2, jobs=JobOptions("local", cpus=1, time_min=1), **OPTIONS
    )
    journal = dst / STATE_DIR / f"shard-{target:04d}-of-0002.jsonl"
    deadline = time.monotonic() + 120
    while not (journal.is_file() and b'"status":"ok"' in journal.read_bytes()):  # a video prepared
        assert not jobs[target].done(), jobs[target].stderr()
        assert time.monotonic() < deadline, "the task prepared no video in 120 s"
        time.sleep(0.002)
    # What SLURM sends ahead of a time limit (submitit's --signal=USR2@90); a local task would get it only
    # 30 s before its minute is up.
    signal_task(jobs[target], signal.SIGUSR2)
    merged = wait_for_shards(dst, jobs)
    assert merged.counts == {"ok": 14, "corrupt": 1, "missing": 1}
    assert_same_set(dst, reference)
    log = jobs[target].stdout()
    assert "this job is timed-out" in log and "Requeued job" in log, log
    assert "interrupted; requeued, it resumes from its journal" in log
    resumed = jobs[target].result()  # the report of the task's last run
    assert resumed.kept >= 1 and resumed.encoded >= 1, resumed.summary  # what the journal had, and the rest
    assert resumed.kept + resumed.encoded == resumed.counts["ok"]


def test_a_failed_shard_is_named_with_its_log_and_a_rerun_here_completes_the_set(source, reference, tmp_path):
    dst = tmp_path / "prepared"
    blocker = dst / STATE_DIR / "shard-0001-of-0002.jsonl"
    blocker.mkdir(parents=True)  # shard 1 cannot open its journal
    jobs = submit_shards(source, dst, "kinetics", shards=2, jobs=LOCAL, **OPTIONS)
    with pytest.raises(PrepareError) as failure:
        wait_for_shards(dst, jobs)
    message = str(failure.value)
    assert "1 of 2 shards failed" in message and "shard 0/2" not in message
    line = next(line for line in message.splitlines() if "shard 1/2" in line)
    assert "IsADirectoryError" in line and str(blocker) in line
    log = Path(re.search(r"\(log: (.+)\)$", line).group(1))
    assert log.parent == dst / STATE_DIR / JOBS_DIR and "IsADirectoryError" in log.read_text()
    assert not (dst / MANIFEST_NAME).exists()
    # Shard 0 is done; shard 1, prepared on this machine with the same options, completes the set.
    blocker.rmdir()
    prepare(source, dst, "kinetics", shard=(1, 2), workers=0, progress=False, **OPTIONS)
    merge_shards(dst, quiet=True)
    assert_same_set(dst, reference)


def test_a_slurm_submission_is_one_array_of_shard_tasks(source, tmp_path, monkeypatch, capsys):
    """Through a stand-in ``sbatch`` (submitit runs it and reads the job id it prints): the script's
    directives, and the task each array element runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # what submitit looks for to know it is on SLURM
    script = tmp_path / "script.sh"  # where the stand-in keeps what it was given
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {script}\necho "Submitted batch job 4242"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    dst = tmp_path / "prepared"
    slurm = [
        "--launcher", "slurm", "--slurm-partition", "P", "--slurm-time", "240", "--slurm-cpus", "16",
        "--slurm-account", "A", "--slurm-qos", "Q", "--slurm-array-parallelism", "2", "--no-wait",
    ]  # fmt: skip
    assert prepare_command(source, dst, "--shards", "3", *slurm) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "submitted 3 shards (job 4242)" in out and f"run: iresvid prepare --merge {dst}" in out
    text = script.read_text()
    for directive in (
        "--array=0-2%2", "--partition=P", "--time=240", "--cpus-per-task=16", "--account=A", "--qos=Q",
        "--signal=USR2@90", "--requeue", f"--output={dst / STATE_DIR / JOBS_DIR}/%A_%a_0_log.out",
    ):  # fmt: skip
        assert f"#SBATCH {directive}\n" in text, (directive, text)
    jobs = dst / STATE_DIR / JOBS_DIR
    tasks = [DelayedSubmission.load(jobs / f"4242_{i}_submitted.pkl").function for i in range(3)]
    assert [(task.shard, task.cpus, task.dst) for task in tasks] == [((i, 3), 16, dst) for i in range(3)]
    defaults = {"gop": 16, "crf": 23, "preset": "veryfast", "keep_audio": False, "min_frames": 8}
    assert tasks[0].options == {**OPTIONS, **defaults, "verify": "sample"}
    # The options are recorded before any task runs: every task, and any later run, is held to them.
    assert json.loads((dst / "prepare.json").read_text())["short_side"] == 32


TWO = ["--shards", "2", "--launcher"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shards", "2"], "need --launcher slurm or local"),
        (["--launcher", "local"], "give --shards N"),
        ([*TWO, "local", "--shard", "0/2"], "drop --shard and --merge"),
        (["--shards", "0", "--launcher", "local"], "--shards: N must be at least 1"),
        ([*TWO, "local", "--slurm-partition", "P"], "--slurm-partition: for --launcher slurm"),
        ([*TWO, "slurm", "--workers", "2"], "--workers: a SLURM task runs --slurm-cpus"),
        ([*TWO, "slurm", "--slurm-time", "0"], "time_min must be at least 1"),
        ([*TWO, "slurm"], "no SLURM here"),
    ],
)
def test_the_command_names_a_job_array_mistake(source, tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    dst = tmp_path / "prepared"
    assert prepare_command(source, dst, *flags) == 2
    assert message in capsys.readouterr().err
    assert not (dst / STATE_DIR / JOBS_DIR).exists()  # nothing submitted


def test_encoding_workers_leave_the_clusters_signals_to_their_task():
    """SLURM signals every process of a job (SIGTERM to preempt it, USR2 ahead of its time limit): a worker
    that died of one would fail its task instead of letting it requeue."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        worker = pool.submit(os.getpid).result(timeout=60)
        for number in (signal.SIGTERM, signal.SIGUSR2):
            os.kill(worker, number)
        assert pool.submit(os.getpid).result(timeout=60) == worker  # the same worker, still working
