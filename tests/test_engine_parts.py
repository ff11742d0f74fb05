"""The parts a Trainer is assembled from (`iresvid.engine.parts`), each built alone; the device and mixed
precision (`iresvid.engine.device`); a stop request agreed on by the processes of a torchrun job."""

from __future__ import annotations

import contextlib
import logging
import pickle
from pathlib import Path

import pytest
import torch
from test_engine import DEMO_CONFIG, tiny
from test_faults_training import torchrun

from iresvid.config import ConfigError, load_config
from iresvid.data.transforms import CropFlipSampler, GpuAugment, MixupCutmix
from iresvid.engine.build import norm_stats
from iresvid.engine.checkpoint import CheckpointManager
from iresvid.engine.device import AMP_DTYPES, autocast, resolve_device
from iresvid.engine.dist import DistInfo
from iresvid.engine.metrics import MetricsLogger
from iresvid.engine.optim import lr_factor
from iresvid.engine.parts import (
    build_augment,
    build_checkpointing,
    build_logger,
    build_mixup,
    build_model_parts,
    build_optimization,
    build_train_data,
    build_validation,
    micro_batch_size,
)
from iresvid.models.weights import read_checkpoint

CPU = torch.device("cpu")
ONE_PROCESS = DistInfo(world_size=1, rank=0, local_rank=0, device=CPU)
TRAIN_VIDEOS, CLASSES = 24, 8  # the demo set: 3 training videos of each of 8 classes


def demo_config(demo_root: Path, output: Path, *extra: str):
    return load_config(DEMO_CONFIG, tiny(demo_root, output, *extra))


# ----------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    "world_size, accum_steps, micro", [(1, 1, 8), (2, 1, 4), (2, 2, 2), (1, 4, 2), (8, 1, 1)]
)
def test_the_micro_batch_is_the_batch_split_over_processes_and_accumulation(world_size, accum_steps, micro):
    cfg = load_config(None, ["data.root=/tmp", "data.batch_size=8", f"train.accum_steps={accum_steps}"])
    assert micro_batch_size(cfg, world_size) == micro


def test_a_batch_that_does_not_split_is_refused():
    cfg = load_config(None, ["data.root=/tmp", "data.batch_size=8", "train.accum_steps=2"])
    with pytest.raises(
        ConfigError, match=r"\(8\) must split evenly over 3 processes × train.accum_steps \(2\)"
    ):
        micro_batch_size(cfg, 3)


@pytest.mark.parametrize(
    "batch, accum, world_size, max_steps, steps",
    [
        (8, 1, 1, None, 3),  # 24 videos: 3 batches of 8
        (8, 2, 1, None, 3),  # 6 batches of 4, two a step
        (8, 1, 2, None, 3),  # each of 2 processes: 12 videos, 3 batches of 4
        (6, 1, 1, 2, 2),  # 4 batches, capped at 2 steps
        (16, 1, 1, None, 1),  # one full batch; the last 8 videos are dropped
    ],
)
def test_train_data_steps_per_epoch(demo_root, tmp_path, batch, accum, world_size, max_steps, steps):
    cap = [f"train.max_steps_per_epoch={max_steps}"] if max_steps else []
    cfg = demo_config(demo_root, tmp_path, f"data.batch_size={batch}", f"train.accum_steps={accum}", *cap)
    micro = micro_batch_size(cfg, world_size)
    dist = DistInfo(world_size=world_size, rank=world_size - 1, local_rank=0, device=CPU)
    data = build_train_data(cfg, micro, dist)
    assert data.steps_per_epoch == steps
    assert data.loader.batch_size == micro == batch // (world_size * accum)
    assert len(data.loader) == TRAIN_VIDEOS // world_size // micro
    assert len(data.dataset) == TRAIN_VIDEOS and data.classes == list(data.dataset.classes)
    assert len(data.classes) == CLASSES


def test_the_train_set_holds_the_configured_crop_sampler_and_no_tensors(demo_root, tmp_path):
    cfg = demo_config(demo_root, tmp_path, "data.crop_mode=random_resized_crop", "data.flip_prob=0.25")
    sampler = build_train_data(cfg, 8, ONE_PROCESS).dataset.crop_sampler
    assert sampler == CropFlipSampler(
        28, mode="random_resized_crop", jitter_sizes=(28, 32), area_scale=(0.08, 1.0), flip_prob=0.25
    )
    # What every data-loader worker receives: settings only, never a tensor (of any device).
    assert not any(isinstance(value, torch.Tensor) for value in vars(sampler).values())
    assert len(pickle.dumps(sampler)) < 400


def test_a_batch_larger_than_the_train_set_is_refused(demo_root, tmp_path):
    cfg = demo_config(demo_root, tmp_path, "data.batch_size=32")
    with pytest.raises(ConfigError, match=r"\(32\) is larger than the training set \(24 videos\)"):
        build_train_data(cfg, 32, ONE_PROCESS)


# ---------------------------------------------------------------------------------------------- model


def test_model_parts_plain_and_with_ema(demo_root, tmp_path):
    plain = build_model_parts(demo_config(demo_root, tmp_path), CLASSES, ONE_PROCESS)
    assert plain.train_model is plain.model and plain.ema is None
    assert plain.model.fc.out_features == CLASSES

    parts = build_model_parts(demo_config(demo_root, tmp_path, "train.ema_decay=0.9"), CLASSES, ONE_PROCESS)
    weight = parts.model.conv1.weight
    start = weight.detach().clone()
    assert torch.equal(parts.ema.module.conv1.weight, start)
    parts.ema.update_parameters(parts.model)  # the first update copies the weights
    with torch.no_grad():
        weight.add_(1.0)
    parts.ema.update_parameters(parts.model)
    torch.testing.assert_close(parts.ema.module.conv1.weight, start + 0.1)  # 0.9 old + 0.1 new


def test_model_parts_channels_last_and_sync_bn_on_the_cpu(demo_root, tmp_path):
    cfg = demo_config(demo_root, tmp_path, "model.channels_last=true")
    model = build_model_parts(cfg, CLASSES, ONE_PROCESS).model
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(ConfigError, match="'model.sync_bn' needs CUDA devices"):
        build_model_parts(demo_config(demo_root, tmp_path, "model.sync_bn=true"), CLASSES, ONE_PROCESS)


@pytest.mark.parametrize("normalisation", [[], ["data.mean=[0.5,0.4,0.3]", "data.std=[0.2,0.25,0.3]"]])
def test_the_augment_normalises_as_the_model_and_its_validation_views(demo_root, tmp_path, normalisation):
    cfg = demo_config(demo_root, tmp_path, *normalisation)
    data = build_train_data(cfg, 8, ONE_PROCESS)
    model = build_model_parts(cfg, CLASSES, ONE_PROCESS).model
    augment = build_augment(cfg, data.dataset.crop_sampler, model, CPU)
    mean, std = norm_stats(cfg, model)
    assert (augment.mean, augment.std) == (tuple(mean), tuple(std))
    assert augment.sampler is data.dataset.crop_sampler
    views = build_validation(cfg, model, data.classes, 8, ONE_PROCESS).views
    assert torch.equal(augment.normalize.scale, views.normalize.scale)
    assert torch.equal(augment.normalize.shift, views.normalize.shift)

    batch = next(iter(data.loader))
    out = augment.apply(batch["input"], batch["augment"])
    assert out.shape == (8, 3, 4, 28, 28)
    for i in range(len(out)):
        expected = augment.apply_reference(batch["input"][i], batch["augment"][i])
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)


def test_validation_is_labelled_by_the_training_classes_and_sized_by_the_micro_batch(demo_root, tmp_path):
    cfg = demo_config(demo_root, tmp_path, "data.val_num_clips=2", "data.val_num_crops=1")
    classes = build_train_data(cfg, 8, ONE_PROCESS).classes
    model = build_model_parts(cfg, CLASSES, ONE_PROCESS).model
    val = build_validation(cfg, model, classes, 4, ONE_PROCESS)
    assert val.dataset.classes == classes and val.dataset.num_videos == 8
    # twice the micro-batch: no activations are kept for a backward pass
    assert val.chunk == 8 and val.loader.batch_size == 4  # 4 videos × 2 clips = 8 views a batch
    assert val.views.num_crops == 1


# --------------------------------------------------------------------------------------- optimisation


def test_optimization_scales_the_lr_and_keeps_norms_and_biases_undecayed():
    cfg = load_config(
        None,
        ["data.root=/tmp", "data.batch_size=16", "optim.lr=0.1", "optim.base_batch_size=8",
         "optim.weight_decay=0.05", "schedule.warmup_epochs=1"],
    )  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.Linear(4, 2))
    optimizer, scheduler, scaler, amp_dtype = build_optimization(cfg, model, 10, CPU)
    decay, no_decay = optimizer.param_groups
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 3, 3, 3, 3), (2, 4)]
    assert [tuple(p.shape) for p in no_decay["params"]] == [(4,), (4,), (4,), (2,)]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert decay["initial_lr"] == pytest.approx(0.2)  # 0.1 × 16 / 8
    # Per-step warm-up from the start factor: step 0 of 10 per epoch.
    assert scheduler.get_last_lr() == pytest.approx([0.2 * lr_factor(0, cfg.schedule, 10)] * 2)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.2 * cfg.schedule.warmup_start_factor)
    assert not scaler.is_enabled() and amp_dtype is None


@pytest.mark.parametrize("amp, scaled", [("none", False), ("bf16", False), ("fp16", True)])
def test_optimization_precision(amp, scaled):
    cfg = load_config(None, ["data.root=/tmp", f"train.amp={amp}"])
    *_, scaler, amp_dtype = build_optimization(cfg, torch.nn.Linear(2, 2), 1, CPU)
    assert scaler.is_enabled() == scaled and amp_dtype is AMP_DTYPES[amp]


def test_mixup_only_when_an_alpha_is_set():
    cfg = load_config(None, ["data.root=/tmp"]).train
    assert build_mixup(cfg, 8) is None
    cfg.cutmix_alpha, cfg.label_smoothing = 1.0, 0.1
    mixup = build_mixup(cfg, 8)
    assert isinstance(mixup, MixupCutmix)
    assert (mixup.num_classes, mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing) == (8, 0, 1, 0.1)


# -------------------------------------------------------------------------------- checkpoints, logging


def test_checkpointing_finds_what_to_resume_from(tmp_path, caplog):
    cfg = load_config(None, ["data.root=/tmp", f"train.output_dir={tmp_path}", "train.resume=auto"]).train
    with caplog.at_level(logging.INFO, logger="iresvid.train"):
        manager, resume_from = build_checkpointing(cfg)
    assert resume_from is None and f"no checkpoint in {tmp_path} yet" in caplog.text
    assert manager.directory == tmp_path
    saved = manager.save({"weights": torch.ones(2)}, epoch=1, step=3)

    assert build_checkpointing(cfg).resume_from == saved == tmp_path / "last.pth"
    cfg.resume = None
    assert build_checkpointing(cfg).resume_from is None
    cfg.resume = str(tmp_path / "epoch_0001.pth")
    assert build_checkpointing(cfg).resume_from == tmp_path / "epoch_0001.pth"
    cfg.resume = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_checkpointing(cfg)


def test_checkpointing_keeps_epochs_as_configured(tmp_path):
    cfg = load_config(None, ["data.root=/tmp", f"train.output_dir={tmp_path}", "train.save_every=2"]).train
    manager = build_checkpointing(cfg).manager
    assert isinstance(manager, CheckpointManager) and manager.keep_every_epochs == 2


def test_only_the_main_process_logs(tmp_path):
    logger = build_logger(tmp_path, ONE_PROCESS)
    try:
        assert isinstance(logger, MetricsLogger) and logger.directory == tmp_path
    finally:
        logger.close()
    assert build_logger(tmp_path, DistInfo(world_size=2, rank=1, local_rank=1, device=CPU)) is None


# --------------------------------------------------------------------------------------------- device


def test_resolve_device():
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == CPU
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(
        ConfigError, match="--device=gpu: not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
    ):
        resolve_device("gpu", setting="--device")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
        with pytest.raises(ConfigError, match="there are only"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ConfigError, match="^train.device=cuda: no CUDA device is available$"):
            resolve_device("cuda", setting="train.device")


def test_autocast_in_the_amp_dtypes():
    assert set(AMP_DTYPES) == {"none", "bf16", "fp16"}
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(CPU, AMP_DTYPES["bf16"]):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, AMP_DTYPES["none"]):
        assert (a @ b).dtype == torch.float32
    assert isinstance(autocast(CPU, None), contextlib.nullcontext)


def test_the_augment_needs_no_model_but_takes_any_normalisation():
    sampler = CropFlipSampler(8, jitter_sizes=(8, 12))
    augment = GpuAugment(sampler, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    assert augment.crop_size == 8 and augment.mean == (0.1, 0.2, 0.3)
    x = torch.randint(0, 256, (3, 3, 2, 12, 16), dtype=torch.uint8)
    params = sampler.sample_params(3, 12, 16, torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        augment.apply(x, params),
        torch.stack([augment.apply_reference(x[i], params[i]) for i in range(3)]),
        atol=1e-4,
        rtol=0,
    )


# ---------------------------------------------------------------------------------- stop, torchrun

# Training in a torchrun job (test_faults_training's DDP settings, logging every 2 steps) where rank 1 alone
# asks to stop after step 1, as its signal handler would.
_STOP_ON_RANK_1 = """
import sys

from iresvid.config import load_config
from iresvid.engine.dist import cleanup
from iresvid.engine.trainer import Trainer, TrainingInterrupted

optimizer_step = Trainer._optimizer_step


def step_then_ask(self):
    optimizer_step(self)
    if self.dist.rank == 1 and self.step == 1:
        self.request_stop()


Trainer._optimizer_step = step_then_ask
trainer = Trainer(load_config(sys.argv[2], [*sys.argv[3:], "train.log_every=2"]))
try:
    trainer.fit()
except TrainingInterrupted as stopped:
    print(f"rank {trainer.dist.rank}: {stopped}", flush=True)
    sys.exit(3)
finally:
    cleanup()
"""


@pytest.mark.slow
def test_every_rank_stops_at_the_first_logging_step_after_one_asked(demo_root, tmp_path):
    """Rank 1 asks after step 1; with ``log_every=2`` the ranks compare flags after step 2 only, so both
    stop there, at the same step, and the checkpoint is step 2's."""
    script = tmp_path / "stop_on_rank_1.py"
    script.write_text(_STOP_ON_RANK_1)
    out = tmp_path / "run"
    code, output = torchrun(script, out, demo_root)
    assert code != 0, output[-3000:]
    last = out / "last.pth"
    for rank in (0, 1):
        expected = f"rank {rank}: training stopped on request after step 2 of epoch 1 (step 2); "
        assert expected + f"train.resume=auto continues it from {last}" in output, output[-3000:]
    assert read_checkpoint(last)["step"] == 2
