"""Run safety: no run is lost or overwritten, two runs never share a folder, nothing is written through a
symlink, a diverged run stops without saving its NaN state, and every numeric config key is bounded."""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine import DEMO_CONFIG, tiny, train

from iresvid import cli
from iresvid.config import ConfigError, load_config
from iresvid.engine import launch
from iresvid.engine.checkpoint import CheckpointManager
from iresvid.engine.parts import RunFolderError
from iresvid.engine.trainer import Trainer, TrainingDiverged
from iresvid.errors import UserError
from iresvid.files import LOCK_NAME, WriteError
from iresvid.models.weights import read_checkpoint


@pytest.fixture
def train_cli(monkeypatch, capsys):
    """``iresvid train`` in this process → (exit code, stderr lines); its logging setup is skipped (it
    reconfigures the root logger for good)."""
    monkeypatch.setattr(cli, "setup_logging", lambda output_dir: None)

    def run(*args: str) -> tuple[int, list[str]]:
        code = cli.main(["train", "--config", str(DEMO_CONFIG), *args])
        return code, capsys.readouterr().err.splitlines()

    return run


def contents(folder: Path) -> dict[str, bytes]:
    """The run's files (the lock file names its latest holder, so it is left out)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture
def earlier_run(demo_root, tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A finished run in ``runs/x`` with the epoch files of a longer one: (folder, its files' bytes)."""
    out = tmp_path / "runs" / "x"
    train(tiny(demo_root, out, "schedule.epochs=1"))
    for epoch in (10, 20, 30):
        shutil.copy(out / "last.pth", out / f"epoch_{epoch:04d}.pth")
    return out, contents(out)


# ------------------------------------------------------------------------------ 1. no run overwritten


def test_a_new_run_refuses_a_folder_holding_another_runs_files(demo_root, earlier_run, train_cli):
    out, before = earlier_run
    code, err = train_cli(*tiny(demo_root, out, "schedule.epochs=1"))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {out} holds another run's files (last.pth, best.pth, epoch_0001.pth, ")
    assert "train.resume=auto (--resume auto)" in err[0] and "train.overwrite=true" in err[0]
    assert contents(out) == before  # not a byte of the earlier run changed, its checkpoints all there
    with pytest.raises(RunFolderError):  # the library refuses as the tool does
        Trainer(load_config(DEMO_CONFIG, tiny(demo_root, out, "schedule.epochs=1")))
    assert contents(out) == before


def test_overwrite_deletes_the_earlier_runs_files_then_starts_over(demo_root, earlier_run):
    out, before = earlier_run
    train(tiny(demo_root, out, "schedule.epochs=1", "train.seed=7", "train.overwrite=true"))
    names = {p.name for p in out.iterdir()}
    assert not {"epoch_0010.pth", "epoch_0020.pth", "epoch_0030.pth"} & names
    for name in ("last.pth", "best.pth", "epoch_0001.pth"):  # the new run's, not the old ones
        assert read_checkpoint(out / name)["config"]["train"]["seed"] == 7, name
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == before["metrics.jsonl"].decode().count("\n")  # begun afresh, not appended to
    assert len([p for p in names if p.startswith("events.out.tfevents")]) == 1


def test_overwrite_and_resume_together_are_refused(demo_root, tmp_path):
    with pytest.raises(ConfigError, match="'train.overwrite' starts the run over and 'train.resume'"):
        load_config(DEMO_CONFIG, tiny(demo_root, tmp_path, "train.overwrite=true", "train.resume=auto"))


def test_pruning_deletes_only_the_epoch_files_this_run_wrote(tmp_path):
    foreign = tmp_path / "epoch_0030.pth"  # another run's, or one copied in by hand
    torch.save({"w": torch.ones(1)}, foreign)
    manager = CheckpointManager(tmp_path, keep_last=1)
    for epoch in (1, 2):
        manager.save({"w": torch.zeros(1)}, epoch=epoch, step=epoch)
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_0002.pth", "epoch_0030.pth"]

    resumed = CheckpointManager(tmp_path, keep_last=1)  # a later process continuing the run
    resumed.adopt(read_checkpoint(resumed.last_path))
    resumed.save({"w": torch.zeros(1)}, epoch=3, step=3)
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_0003.pth", "epoch_0030.pth"]

    elsewhere = CheckpointManager(tmp_path / "other", keep_last=1)  # a checkpoint of another folder
    torch.save({"w": torch.ones(1)}, tmp_path / "other" / "epoch_0003.pth")
    elsewhere.adopt(read_checkpoint(resumed.last_path))
    elsewhere.save({"w": torch.zeros(1)}, epoch=4, step=4)
    assert (tmp_path / "other" / "epoch_0003.pth").is_file()


def test_a_resumed_run_prunes_its_own_earlier_epoch_file(demo_root, tmp_path):
    out = tmp_path / "run"
    train(tiny(demo_root, out, "train.save_every=0"))
    assert sorted(p.name for p in out.glob("epoch_*")) == ["epoch_0002.pth"]
    train(tiny(demo_root, out, "train.save_every=0", "schedule.epochs=3", "train.resume=auto"))
    assert sorted(p.name for p in out.glob("epoch_*")) == ["epoch_0003.pth"]


# ------------------------------------------------------------------------------- 2. one run per folder

_HOLD_LOCK = """
import sys
from iresvid.files import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_process_on_a_run_folder_in_use_fails_at_once_naming_the_holder(
    demo_root, tmp_path, train_cli
):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = train_cli(*tiny(demo_root, out))
        assert code == 2 and len(err) == 1, err
        assert f"{out} is in use by another run (pid {holder.pid} on " in err[0]
        with pytest.raises(UserError, match=f"pid {holder.pid} "):
            Trainer(load_config(DEMO_CONFIG, tiny(demo_root, out, "train.resume=auto")))
        # nothing of the second run (Hydra's own .hydra/ record aside)
        assert sorted(p.name for p in out.iterdir() if p.is_file()) == [".iresvid.lock"]
    finally:
        holder.communicate("")
    # Once the first run has ended, the folder is free: the lock does not outlive its holder.
    train(tiny(demo_root, out, "schedule.epochs=1"))
    assert (out / "last.pth").is_file()


# --------------------------------------------------------------------------- 3. no symlink followed


def test_a_symlinked_output_folder_is_refused_before_any_work(demo_root, tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "run").symlink_to(real)
    monkeypatch.setattr("iresvid.engine.trainer.build_train_data", pytest.fail)  # no work started
    with pytest.raises(WriteError, match=f"{tmp_path / 'run'}: it is a symbolic link"):
        Trainer(load_config(DEMO_CONFIG, tiny(demo_root, tmp_path / "run")))
    assert list(real.iterdir()) == []


def test_log_txt_is_never_written_through_a_symlink(tmp_path):  # root logging: restored by conftest
    victim = tmp_path / "bashrc"
    victim.write_text("export PATH=/usr/bin\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").symlink_to(victim)
    with pytest.raises(WriteError, match="log.txt: it is a symbolic link"):
        cli.setup_logging(out)
    assert victim.read_text() == "export PATH=/usr/bin\n"

    (out / "log.txt").unlink()
    cli.setup_logging(out)  # a log of our own is appended to
    logging.getLogger("iresvid.train").info("hello")
    logging.getLogger().handlers[-1].flush()
    assert (out / "log.txt").read_text().endswith("iresvid.train: hello\n")


def test_config_yaml_planted_as_a_symlink_is_replaced_not_followed(demo_root, tmp_path):
    victim = tmp_path / "victim.yaml"
    victim.write_text("mine: true\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").symlink_to(victim)
    Trainer(load_config(DEMO_CONFIG, tiny(demo_root, out, "train.resume=auto")))
    assert victim.read_text() == "mine: true\n"
    assert not (out / "config.yaml").is_symlink() and "output_dir" in (out / "config.yaml").read_text()


def test_failed_videos_rows_cannot_be_forged_nor_written_through_a_link(demo_root, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(load_config(DEMO_CONFIG, tiny(demo_root, out)))
    trainer.failures = [(1, "clip\tforged.mp4", "bad\n2\tevil.mp4\tforged row")]
    assert trainer._write_failures() == 1
    rows = list(csv.reader((out / "failed_videos.tsv").open(), delimiter="\t"))
    assert rows == [["1", "clip\\tforged.mp4", "bad\\n2\\tevil.mp4\\tforged row"]]

    (out / "failed_videos.tsv").unlink()
    victim = tmp_path / "victim"
    victim.write_text("x")
    (out / "failed_videos.tsv").symlink_to(victim)
    trainer.failures = [(1, "a.mp4", "unreadable")]
    with pytest.raises(WriteError, match="failed_videos.tsv: it is a symbolic link"):
        trainer._write_failures()
    assert victim.read_text() == "x"


def test_a_sweeps_records_are_written_safely_and_its_table_holds_text(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("x")
    sweep = tmp_path / "sweep"
    for job, name in ((0, "plain"), (1, '=HYPERLINK("http://evil")')):
        folder = sweep / str(job)
        folder.mkdir(parents=True)
        (folder / launch.RESULT_FILE).symlink_to(victim)
        launch._write_result(folder, [f"name={name}"], "ok", {"epoch": 1, "val_video_top1": 50.0})
        assert not (folder / launch.RESULT_FILE).is_symlink()
    (sweep / "summary.csv").symlink_to(victim)
    launch.summarize_sweep(sweep)
    assert victim.read_text() == "x" and not (sweep / "summary.csv").is_symlink()
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["name"] for r in rows] == ["plain", '\'=HYPERLINK("http://evil")']


# ---------------------------------------------------------------------------------- 4. divergence


def test_a_run_that_blows_up_stops_naming_the_step_and_saves_nothing(demo_root, tmp_path, train_cli):
    out = tmp_path / "run"
    code, err = train_cli(*tiny(demo_root, out, "optim.lr=1e30"))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: training diverged: the training loss was not finite (NaN or inf) at ")
    assert "no checkpoint was saved before it" in err[0]
    assert not list(out.glob("*.pth"))  # neither last.pth nor best.pth holds the NaN state


def _poison_after(monkeypatch, steps: int) -> None:
    """The weights become NaN in the update of optimizer step ``steps`` (as an overflowing update does)."""
    real_step = Trainer._optimizer_step

    def step(self):
        real_step(self)
        if self.step == steps:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Trainer, "_optimizer_step", step)


def test_divergence_mid_run_stops_and_keeps_the_last_good_checkpoint(demo_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _poison_after(monkeypatch, 4)  # 3 steps an epoch: the first step of epoch 2
    with pytest.raises(TrainingDiverged) as info:
        train(tiny(demo_root, out, "schedule.epochs=3", "train.save_every=1"))
    message = str(info.value)
    assert "the training loss was not finite (NaN or inf) at optimizer step 5 (epoch 2)" in message
    assert f"the last good checkpoint is {out / 'last.pth'} (epoch 1)" in message
    assert "\n" not in message
    for name in ("last.pth", "best.pth"):
        state = read_checkpoint(out / name)
        assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values()), name
    assert sorted(p.name for p in out.glob("epoch_*")) == ["epoch_0001.pth"]


def test_weights_that_turn_nan_on_the_last_step_before_a_save_are_not_saved(demo_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _poison_after(monkeypatch, 3)  # the loss never saw it: the epoch-end checks read the weights
    with pytest.raises(TrainingDiverged, match="the weights were not finite .* at optimizer step 3 "):
        train(tiny(demo_root, out))
    assert not list(out.glob("*.pth"))


def test_a_non_finite_gradient_norm_stops_a_clipped_run(demo_root, tmp_path, monkeypatch):
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip(parameters, max_norm):
        calls["n"] += 1
        norm = real_clip(parameters, max_norm)
        return norm * float("inf") if calls["n"] == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    with pytest.raises(TrainingDiverged, match="the gradient norm was not finite .* at optimizer step 2 "):
        train(tiny(demo_root, tmp_path / "run", "train.clip_grad_norm=1.0", "train.log_every=2"))
    assert not list((tmp_path / "run").glob("*.pth"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device syncs exist on CUDA only")
def test_watching_for_divergence_adds_no_device_sync(demo_root, tmp_path):
    trainer = Trainer(load_config(DEMO_CONFIG, tiny(demo_root, tmp_path / "run", "train.device=cuda")))
    loss = torch.tensor(float("nan"), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer._watch(0, loss)
        trainer._watch(1, loss * 2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer._first_bad.tolist()[:2] == [1, 1]


# ------------------------------------------------------------------------------------ 5. config bounds

BOUNDS = {
    "optim.lr=nan": "'optim.lr' must be a finite number, got nan",
    "optim.lr=inf": "'optim.lr' must be a finite number, got inf",
    "optim.lr=0": "'optim.lr' must be > 0, got 0.0",
    "optim.momentum=1": "'optim.momentum' must be in [0, 1), got 1.0",
    "optim.betas=[0.9,1.5]": "'optim.betas' must not contain 1.5: each value must be in [0, 1)",
    "optim.betas=[0.9]": "'optim.betas' needs two values",
    "optim.weight_decay=-inf": "'optim.weight_decay' must be a finite number",
    "optim.weight_decay=-0.1": "'optim.weight_decay' must be >= 0, got -0.1",
    "train.label_smoothing=5": "'train.label_smoothing' must be in [0, 1), got 5.0",
    "train.label_smoothing=nan": "'train.label_smoothing' must be a finite number, got nan",
    "train.ema_decay=2": "'train.ema_decay' must be in (0, 1), got 2.0",
    "train.ema_decay=0": "'train.ema_decay' must be in (0, 1), got 0.0",
    "train.mixup_alpha=-1": "'train.mixup_alpha' must be >= 0, got -1.0",
    "train.cutmix_alpha=nan": "'train.cutmix_alpha' must be a finite number",
    "train.clip_grad_norm=0": "'train.clip_grad_norm' must be > 0, got 0.0",
    "train.seed=-1": "'train.seed' must be in [0, ",
    "data.flip_prob=1.5": "'data.flip_prob' must be in [0, 1], got 1.5",
    "data.area_scale=[0,1]": "'data.area_scale' must not contain 0.0: each value must be in (0, 1]",
    "data.area_scale=[0.9,0.1]": "'data.area_scale' needs two fractions [min, max], min <= max",
    "data.std=[0.2,0,0.2]": "'data.std' must not contain 0.0: each value must be > 0",
    "data.mean=[0.4,nan,0.4]": "'data.mean' must be a finite number",
    "model.drop_rate=1": "'model.drop_rate' must be in [0, 1), got 1.0",
    "model.width_scale=inf": "'model.width_scale' must be a finite number",
    "model.layers=[2,0,2,2]": "'model.layers' must not contain 0: each value must be >= 1",
    "schedule.warmup_epochs=nan": "'schedule.warmup_epochs' must be a finite number",
    "schedule.warmup_start_factor=2": "'schedule.warmup_start_factor' must be in [0, 1], got 2.0",
    "schedule.gamma=0": "'schedule.gamma' must be in (0, 1], got 0.0",
    "schedule.min_lr_factor=1.5": "'schedule.min_lr_factor' must be in [0, 1], got 1.5",
}


@pytest.mark.parametrize("override, message", BOUNDS.items(), ids=BOUNDS.keys())
def test_every_numeric_key_is_bounded_and_nan_is_refused(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.root=/data", override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_bound_refused_by_the_tool_is_one_line(demo_root, tmp_path, train_cli):
    code, err = train_cli(*tiny(demo_root, tmp_path), "train.label_smoothing=5")
    assert (code, err) == (2, ["error: 'train.label_smoothing' must be in [0, 1), got 5.0"])
