"""Training end to end on the synthetic motion set: train, checkpoint, resume exactly, DDP, evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iresvid.config import ConfigError, ScheduleConfig, load_config
from iresvid.engine.metrics import MetricsLogger
from iresvid.engine.optim import build_optimizer, lr_factor
from iresvid.engine.testing import run_test
from iresvid.engine.trainer import Trainer, TrainingInterrupted
from iresvid.models.weights import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo_synthetic.yaml"
# The demo data's layout: a checkpoint's config gives its model and clip, never where the data is.
DEMO_LAYOUT = ["data.format=ucf101", "data.val_dir=videos", "data.annotation_dir=annotations"]


def tiny(demo_root: Path, output: Path, *extra: str) -> list[str]:
    """Overrides that shrink the shipped demo config to seconds of CPU."""
    return [
        f"data.root={demo_root}",
        f"train.output_dir={output}",
        "model.name=iresnet3d18",
        "model.width_scale=0.125",
        "data.num_frames=4",
        "data.decode_short_side=32",
        "data.crop_size=28",
        "data.jitter_sizes=[28,32]",
        "data.test_size=32",
        "data.test_crop_size=28",
        "data.num_clips=2",
        "data.batch_size=8",
        "data.num_workers=0",
        "optim.base_batch_size=8",
        "schedule.epochs=2",
        "schedule.warmup_epochs=0.5",
        "train.eval_every=1",
        "train.progress=false",
        *extra,
    ]


def train(overrides: list[str]) -> tuple[Trainer, dict]:
    trainer = Trainer(load_config(DEMO_CONFIG, overrides))
    return trainer, trainer.fit()


class Interrupted(Exception):
    """Stands in for a killed process."""


def interrupt_after(monkeypatch, steps: int) -> None:
    real_step, calls = Trainer._optimizer_step, {"n": 0}

    def step(self):
        real_step(self)
        calls["n"] += 1
        if calls["n"] == steps:
            raise Interrupted

    monkeypatch.setattr(Trainer, "_optimizer_step", step)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_train_checkpoint_resume_and_evaluate(demo_root, tmp_path):
    out = tmp_path / "run"
    trainer, metrics = train(tiny(demo_root, out))
    assert metrics["epoch"] == 2 and 0 <= metrics["val_video_top1"] <= 100
    for name in (
        "last.pth",
        "best.pth",
        "metrics.jsonl",
        "metrics.csv",
        "curves.png",
        "per_class.csv",
        "confusion_matrix.png",
    ):
        assert (out / name).is_file(), name
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch/epoch"] for e in epochs if "epoch/epoch" in e] == [1, 2]

    # a longer schedule resumes from the last checkpoint and runs only what is left
    resumed, metrics = train(tiny(demo_root, out, "schedule.epochs=3", "train.resume=auto"))
    assert metrics["epoch"] == 3 and len(resumed.history) == 3

    result, cfg, reports = run_test(
        out / "last.pth", overrides=[f"data.root={demo_root}", *DEMO_LAYOUT, "train.progress=false"]
    )
    assert result.num_videos == 8
    assert result.clip.num_samples == 8 * cfg.data.num_clips * cfg.data.num_crops
    assert result.video.num_samples == 8
    saved = json.loads((reports / "test_metrics.json").read_text())
    assert saved["video_top1"] == result.video.compute()["top1"]
    assert (reports / "per_class.csv").read_text().count("\n") == 9  # header + 8 classes


def test_reader_rereads_are_totalled_per_epoch_and_per_evaluation(demo_root, tmp_path, monkeypatch, caplog):
    import iresvid.data.datasets as datasets

    real_open = datasets.open_video

    def opened(*args, **kwargs):  # every reader reports exactly one redone read
        reader = real_open(*args, **kwargs)
        real_get = reader.get_frames

        def get_frames(indices):
            frames = real_get(indices)
            reader.rereads = 1
            return frames

        reader.get_frames = get_frames
        return reader

    monkeypatch.setattr(datasets, "open_video", opened)
    trainer, metrics = train(tiny(demo_root, tmp_path / "run", "schedule.epochs=1"))
    epoch = trainer.history[0]
    assert epoch["train_reread_reads"] == trainer.steps_per_epoch * trainer.micro_batch  # one per clip read
    # Evaluation reads each of the 8 test videos once for both of its clips: one reader, one count.
    assert metrics["val_reread_reads"] == epoch["val_reread_reads"] == 8
    assert "frame reads were redone" in caplog.text


@pytest.mark.parametrize("interrupt_at,extra", [(3, []), (4, ["train.save_every_steps=1"])])
def test_an_interrupted_run_resumes_to_the_same_weights(
    demo_root, tmp_path, monkeypatch, interrupt_at, extra
):
    """3 steps an epoch: stop at the end of epoch 1, or inside epoch 2 with step checkpoints."""
    reference, _ = train(tiny(demo_root, tmp_path / "whole", *extra))
    with monkeypatch.context() as patch:
        interrupt_after(patch, interrupt_at)
        with pytest.raises(Interrupted):
            train(tiny(demo_root, tmp_path / "cut", *extra))
    resumed, metrics = train(tiny(demo_root, tmp_path / "cut", "train.resume=auto", *extra))
    assert resumed.step == reference.step == 6 and metrics["epoch"] == 2
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())
    assert_same_weights(
        resumed.optimizer.state_dict()["state"][0], reference.optimizer.state_dict()["state"][0]
    )


@pytest.fixture(scope="module")
def uninterrupted(demo_root, tmp_path_factory) -> Trainer:
    """The tiny 2-epoch run (3 steps an epoch), start to end."""
    return train(tiny(demo_root, tmp_path_factory.mktemp("whole")))[0]


@pytest.mark.parametrize(
    "stop_at, extra, where",
    [
        (2, [], "step 2 of epoch 1"),
        (3, [], "epoch 1"),  # the epoch's last step: its epoch-end checkpoint is the one
        (2, ["train.save_every_steps=2"], "step 2 of epoch 1"),  # that step's save serves both
    ],
)
def test_a_stop_request_saves_once_and_resumes_to_the_same_weights(
    demo_root, tmp_path, monkeypatch, uninterrupted, stop_at, extra, where
):
    """`Trainer.request_stop` (what a preempted job's signal handler calls) during step ``stop_at``."""
    out = tmp_path / "cut"
    real_step, real_save, real_close = Trainer._optimizer_step, Trainer._save, MetricsLogger.close
    saved_at, closed = [], []

    def step(self):
        real_step(self)
        if self.step == stop_at:
            self.request_stop()

    def save(self, **kwargs):
        saved_at.append(self.step)
        real_save(self, **kwargs)

    def close(self):
        closed.append(self)
        real_close(self)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_optimizer_step", step)
        patch.setattr(Trainer, "_save", save)
        patch.setattr(MetricsLogger, "close", close)
        stopped = Trainer(load_config(DEMO_CONFIG, tiny(demo_root, out, *extra)))
        expected = (
            f"training stopped on request after {where} (step {stop_at}); train.resume=auto continues it "
            f"from {out / 'last.pth'}"
        )
        with pytest.raises(TrainingInterrupted) as raised:
            stopped.fit()
    assert str(raised.value) == expected
    assert saved_at == [stop_at] and closed == [stopped.logger]
    assert read_checkpoint(out / "last.pth")["step"] == stop_at
    assert (out / "epoch_0001.pth").is_file() == (where == "epoch 1")

    resumed, metrics = train(tiny(demo_root, out, "train.resume=auto", *extra))
    assert resumed.step == uninterrupted.step == 6 and metrics["epoch"] == 2
    assert_same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict())
    assert_same_weights(
        resumed.optimizer.state_dict()["state"][0], uninterrupted.optimizer.state_dict()["state"][0]
    )


@pytest.mark.slow
def test_two_torchrun_processes_match_one_process(demo_root, tmp_path):
    """gloo on the CPU: 2 processes × 4 clips give the weights of 1 process × 8 clips (same global batch).
    BN statistics are frozen (norm_eval): per-process batch statistics would differ by design.  SGD, because
    Adam's m/√v turns the last-bit differences of an all-reduce on near-zero gradients into full steps."""
    common = [
        "model.norm_eval=true",
        "schedule.epochs=1",
        "train.max_steps_per_epoch=3",
        "optim.name=sgd",
        "optim.lr=0.1",
    ]
    outputs = {}
    for procs in (1, 2):
        out = tmp_path / f"procs{procs}"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={procs}",
            "--standalone",
            str(REPO / "tools" / "train.py"),
            "--config",
            str(DEMO_CONFIG),
            *tiny(demo_root, out, *common),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[procs] = torch.load(out / "last.pth", weights_only=True)
    assert outputs[1]["step"] == outputs[2]["step"] == 3
    for key, value in outputs[1]["model"].items():
        torch.testing.assert_close(outputs[2]["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_config_mistakes_are_named_by_the_tool(demo_root, tmp_path):
    def run(*overrides):
        cmd = [sys.executable, str(REPO / "tools" / "train.py"), "--config", str(DEMO_CONFIG), *overrides]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    typo = run(f"data.root={demo_root}", "data.num_frame=8")
    assert typo.returncode == 2
    assert "unknown config key 'data.num_frame'; did you mean 'data.num_frames'?" in typo.stderr
    missing = run("data.root=/no/such/dataset", f"train.output_dir={tmp_path}")
    assert missing.returncode == 2 and "/no/such/dataset" in missing.stderr


def test_batch_size_must_split_over_processes_and_accumulation(demo_root, tmp_path):
    with pytest.raises(
        ConfigError, match="'data.batch_size' \\(8\\) must split evenly .*accum_steps \\(3\\)"
    ):
        Trainer(load_config(DEMO_CONFIG, tiny(demo_root, tmp_path, "train.accum_steps=3")))
    with pytest.raises(ConfigError, match="sync_bn"):
        Trainer(load_config(DEMO_CONFIG, tiny(demo_root, tmp_path, "model.sync_bn=true")))


def test_schedules_and_no_decay_groups():
    cosine = ScheduleConfig(name="cosine", epochs=10, warmup_epochs=2, warmup_start_factor=0.1)
    assert lr_factor(0, cosine, 10) == pytest.approx(0.1)
    assert lr_factor(10, cosine, 10) == pytest.approx(0.55)
    assert lr_factor(20, cosine, 10) == pytest.approx(1.0)
    assert lr_factor(60, cosine, 10) == pytest.approx(0.5)
    assert lr_factor(100, cosine, 10) == pytest.approx(0.0)
    steps = ScheduleConfig(name="multistep", epochs=90, warmup_epochs=0, milestones=[30, 60, 80], gamma=0.1)
    assert [lr_factor(e * 100, steps, 100) for e in (0, 29, 30, 60, 85)] == pytest.approx(
        [1, 1, 0.1, 0.01, 0.001]
    )
    cfg = load_config(None, ["data.root=/tmp", "optim.lr=0.1", "optim.base_batch_size=64"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, cfg.optim, batch_size=128)
    decay, no_decay = optimizer.param_groups
    assert [p.ndim for p in decay["params"]] == [4] and decay["weight_decay"] == 1e-4
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0
    assert decay["lr"] == pytest.approx(0.2)  # linear scaling with the batch
