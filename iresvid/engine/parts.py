"""The parts a `Trainer` is assembled from, each made by one small builder that can be tested alone.

The trainer calls them in one order, each from what the earlier ones gave: the run folder (claimed before
any work), the training data (which fixes the class index), the model (and what needs its normalisation:
the device-side augmentation and the validation inputs), the optimisation, the checkpoints, the logger.
Nothing is patched afterwards.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from iresvid.config import Config, ConfigError, DataConfig, TrainConfig
from iresvid.data.build import build_dataset
from iresvid.data.datasets import ClipDataset
from iresvid.data.loader import build_loader
from iresvid.data.transforms import CropFlipSampler, GpuAugment, MixupCutmix
from iresvid.data.video_io import open_video
from iresvid.engine.build import EvalInputs, build_eval_inputs, build_model, norm_stats
from iresvid.engine.checkpoint import CheckpointManager
from iresvid.engine.device import AMP_DTYPES
from iresvid.engine.dist import DistInfo
from iresvid.engine.ema import ModelEma
from iresvid.engine.metrics import MetricsLogger
from iresvid.engine.optim import build_optimizer, build_scheduler
from iresvid.errors import UserError
from iresvid.files import RunLock, WriteError, output_dir

log = logging.getLogger("iresvid.train")

# What a run writes at the top of its folder (trainer, checkpoints, logs, reports, a sweep job's record):
# a folder holding any of them is another run's.  Hydra's `.hydra/` is rewritten by every launch, and
# `multirun/` holds sweeps, each job in a folder of its own: neither is a run's file here.
RUN_FILES = (
    "last.pth", "best.pth", "epoch_*.pth", "config.yaml", "log.txt", "metrics.jsonl", "metrics.csv",
    "events.out.tfevents.*", "per_class.csv", "confusion_matrix.png", "curves.png", "failed_videos.tsv",
    "result.json",
)  # fmt: skip


# -------------------------------------------------------------------------------------------- run folder


class RunFolderError(UserError):
    """``train.output_dir`` holds another run's files and this run was not told what to do with them."""


class RunFolder:
    """``train.output_dir`` as one run holds it: checked, and on the main process locked (`RunLock`) until
    `release` — a second run on the same folder fails at once, naming this one."""

    def __init__(self, path: Path, lock: RunLock | None):
        self.path, self.lock = path, lock

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def earlier_run_files(directory: Path) -> list[str]:
    """The names in ``directory`` that a run wrote (`RUN_FILES`), checkpoints first; links among them
    included."""
    if not directory.is_dir():
        return []
    names = sorted(p.name for p in directory.iterdir())
    return [name for pattern in RUN_FILES for name in names if fnmatch.fnmatchcase(name, pattern)]


def claim_run_folder(cfg: TrainConfig, *, main: bool) -> RunFolder:
    """``cfg.output_dir`` for this run, claimed before any work.

    On the main process: refused (one line) when it is a symlink, another user's or not writable, locked
    for the whole run, and — for a new run (no ``resume``) — refused when it holds another run's files,
    unless ``overwrite`` asks to delete them first.  The other processes of a DDP job write nothing there
    themselves; they get the folder unchecked (the main process refuses before anyone joins the job).
    """
    path = Path(cfg.output_dir)
    if not main:
        return RunFolder(path, None)
    output_dir(path)
    lock = RunLock(path).acquire()
    try:
        earlier = [] if cfg.resume else earlier_run_files(path)
        if earlier and not cfg.overwrite:
            shown = ", ".join(earlier[:6]) + (", …" if len(earlier) > 6 else "")
            raise RunFolderError(
                f"{path} holds another run's files ({shown}): continue that run with train.resume=auto "
                f"(--resume auto), start over with train.overwrite=true (deletes them), or choose another "
                f"train.output_dir"
            )
        if earlier:
            log.warning(
                "train.overwrite: deleting the earlier run's files in %s: %s", path, ", ".join(earlier)
            )
            for name in earlier:
                try:
                    (path / name).unlink(missing_ok=True)
                except OSError as e:  # e.g. a folder of that name: not ours to delete
                    raise WriteError(
                        path / name, f"train.overwrite could not delete it ({e})", e.errno
                    ) from e
    except BaseException:
        lock.release()
        raise
    return RunFolder(path, lock)


# -------------------------------------------------------------------------------------------------- data


def micro_batch_size(cfg: Config, world_size: int) -> int:
    """Clips per process per forward pass: ``data.batch_size`` split over ``world_size`` processes and
    ``train.accum_steps``.  It needs only the world size, so the trainer checks it before joining the
    process group: no collective is ever entered with a batch that does not split."""
    per_step, accum_steps = cfg.data.batch_size, cfg.train.accum_steps
    if per_step % (world_size * accum_steps):
        raise ConfigError(
            f"'data.batch_size' ({per_step}) must split evenly over {world_size} processes × "
            f"train.accum_steps ({accum_steps})"
        )
    return per_step // (world_size * accum_steps)


class TrainData(NamedTuple):
    dataset: ClipDataset  # its ``crop_sampler`` draws each sample's crop and flip
    loader: DataLoader  # this process's shard of every epoch, ``micro_batch`` clips a batch
    classes: list[str]  # the class index of the run: validation and checkpoints must agree with it
    steps_per_epoch: int  # optimizer steps (of ``accum_steps`` batches each)


def build_crop_sampler(cfg: DataConfig) -> CropFlipSampler:
    """The training crops and flips ``cfg`` describes."""
    return CropFlipSampler(
        cfg.crop_size,
        mode=cfg.crop_mode,
        jitter_sizes=tuple(cfg.jitter_sizes),
        area_scale=tuple(cfg.area_scale),
        flip_prob=cfg.flip_prob,
    )


def build_train_data(cfg: Config, micro_batch: int, dist: DistInfo) -> TrainData:
    """The training set and this process's loader of it; refuses a clip longer than every video and a
    batch larger than the set."""
    d, t = cfg.data, cfg.train
    dataset = build_dataset(d, "train", mode="train", crop_sampler=build_crop_sampler(d), seed=t.seed)
    check_clip_fits(dataset, d)
    loader = build_loader(
        dataset,
        batch_size=micro_batch,
        shuffle=True,
        seed=t.seed,
        drop_last=True,
        num_workers=d.num_workers,
        num_replicas=dist.world_size,
        rank=dist.rank,
        pin_memory=dist.device.type == "cuda",
        prefetch_factor=d.prefetch_factor,
        start_method=d.start_method,
    )
    steps_per_epoch = len(loader) // t.accum_steps
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"'data.batch_size' ({d.batch_size}) is larger than the training set ({len(dataset)} videos): "
            f"no full step per epoch"
        )
    return TrainData(dataset, loader, list(dataset.classes), steps_per_epoch)


def check_clip_fits(dataset: ClipDataset, cfg: DataConfig, probes: int = 8) -> None:
    """Refuse a clip longer than every video: each clip would be padded with repeats of the last frame.

    Short videos are padded by design (`iresvid.data.sampling`), but when the clip outspans even the longest
    of ``probes`` evenly spaced training videos, the setting is a mistake (e.g. a stride meant for 25 fps
    on 5 fps videos), and training would quietly learn from frozen frames.  TSN segments spread over the
    whole video and images have no time axis, so neither is checked.
    """
    if cfg.format == "imagefolder" or cfg.sampling != "clip":
        return
    span = (cfg.num_frames - 1) * cfg.frame_stride + 1
    records = dataset.records
    count = min(probes, len(records))
    picks = sorted({i * (len(records) - 1) // max(count - 1, 1) for i in range(count)})
    lengths = []
    if dataset.manifest is not None:  # a prepared set: every video's length is known without opening it
        lengths = [n for n in map(dataset.manifest.frames, (r.path for r in records)) if n is not None]
        picks = picks if not lengths else []
    for i in picks:
        try:
            with open_video(records[i].path, cfg.backend) as reader:
                lengths.append(reader.num_frames)
        except Exception:  # noqa: BLE001 — an unreadable video is the dataset's to skip and report
            continue
    if lengths and span > max(lengths):
        raise ConfigError(
            f"'data.num_frames' × 'data.frame_stride' ({cfg.num_frames} × {cfg.frame_stride}) spans {span} "
            f"frames, more than any of the {len(lengths)} training videos probed has (the longest: "
            f"{max(lengths)} frames): every clip would end in repeats of the last frame; lower "
            f"data.num_frames or data.frame_stride"
        )


# ------------------------------------------------------------------------------------------------- model


class ModelParts(NamedTuple):
    model: nn.Module  # the weights: what is optimised, saved, resumed and evaluated
    train_model: nn.Module  # what a training step calls: ``model`` in DDP and torch.compile as asked
    ema: ModelEma | None  # the exponential moving average of ``model`` (train.ema_decay), or None


def build_model_parts(cfg: Config, num_classes: int, dist: DistInfo) -> ModelParts:
    """The model on this process's device in its memory format, SyncBN, EMA, DDP and compile as asked."""
    m = cfg.model
    if m.sync_bn and dist.device.type == "cpu":
        raise ConfigError(
            "'model.sync_bn' needs CUDA devices: PyTorch's SyncBatchNorm does not run on the CPU"
        )
    model = build_model(cfg, num_classes).to(dist.device)
    if m.channels_last:
        model = model.to(memory_format=torch.channels_last_3d if model.dims == 3 else torch.channels_last)
    if m.sync_bn and dist.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = ModelEma(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    train_model = model
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        # No buffer broadcast before every forward (a collective per step): the trainer makes the BN
        # statistics rank 0's where they are used, before evaluation and saving (`Trainer._sync_buffers`).
        # Gradients as views into DDP's buckets: no copy of every gradient per step.
        train_model = DistributedDataParallel(
            model, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True
        )
    if m.compile:
        train_model = torch.compile(train_model)
    return ModelParts(model, train_model, ema)


def build_augment(
    cfg: Config, sampler: CropFlipSampler, model: nn.Module, device: torch.device
) -> GpuAugment:
    """The device half of the training augmentation: the crops and flips ``sampler`` draws in the workers,
    normalised as ``model`` expects (`norm_stats`: the same mean/std as its evaluation views)."""
    mean, std = norm_stats(cfg, model)
    return GpuAugment(sampler, mean=mean, std=std, channels_last=cfg.model.channels_last).to(device)


def build_validation(
    cfg: Config, model: nn.Module, classes: list[str], micro_batch: int, dist: DistInfo
) -> EvalInputs:
    """This process's shard of the validation videos as ``val_num_clips × val_num_crops`` views, labelled
    by the training class index ``classes`` whatever the validation split lists.

    Views per forward pass: ``data.eval_batch_size``, else twice the training micro-batch — without
    gradients no activation is kept for a backward pass, so twice the clips fit where training's did."""
    d = cfg.data
    return build_eval_inputs(
        cfg,
        model,
        dist.device,
        classes=classes,
        num_clips=d.val_num_clips,
        num_crops=d.val_num_crops,
        views_per_pass=d.eval_batch_size or 2 * micro_batch,
        world_size=dist.world_size,
        rank=dist.rank,
    )


# ------------------------------------------------------------------------------------------ optimisation


class Optimization(NamedTuple):
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped after every optimizer step
    scaler: torch.amp.GradScaler  # loss scaling, enabled for fp16 only
    amp_dtype: torch.dtype | None  # the autocast dtype of train.amp (None: full precision)


def build_optimization(
    cfg: Config, model: nn.Module, steps_per_epoch: int, device: torch.device
) -> Optimization:
    """The optimizer at the linearly scaled learning rate, its per-step schedule and the mixed precision."""
    amp = cfg.train.amp
    if amp == "bf16" and device.type == "cpu":
        log.info("bf16 autocast on CPU: supported, but usually slower than fp32 on CPUs without AMX")
    optimizer = build_optimizer(model, cfg.optim, cfg.data.batch_size)
    return Optimization(
        optimizer,
        build_scheduler(optimizer, cfg.schedule, steps_per_epoch),
        torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
        AMP_DTYPES[amp],
    )


def build_mixup(cfg: TrainConfig, num_classes: int) -> MixupCutmix | None:
    """Mixup/CutMix of the normalised batches, or None when both alphas are 0."""
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return None
    return MixupCutmix(
        num_classes,
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
        label_smoothing=cfg.label_smoothing,
    )


# ---------------------------------------------------------------------------------- checkpoints, logging


class Checkpointing(NamedTuple):
    manager: CheckpointManager  # of train.output_dir
    resume_from: Path | None  # the checkpoint train.resume names (the latest for 'auto'), None: fresh


def build_checkpointing(cfg: TrainConfig, *, main: bool = True) -> Checkpointing:
    """The run directory's checkpoints, and the one to resume from.  Only the ``main`` process, which holds
    the run's lock, clears what interrupted writes left there (another host's writer looks dead here)."""
    manager = CheckpointManager(cfg.output_dir, keep_every_epochs=cfg.save_every, clean=main)
    resume_from = manager.resolve(cfg.resume)
    if resume_from is None and cfg.resume == "auto":
        log.info("no checkpoint in %s yet: starting from scratch", cfg.output_dir)
    return Checkpointing(manager, resume_from)


def build_logger(output_dir: Path, dist: DistInfo) -> MetricsLogger | None:
    """The metric logs of the run, written by the main process alone (None on the others)."""
    return MetricsLogger(output_dir) if dist.is_main else None
