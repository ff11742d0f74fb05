"""The training loop: one process or many (torchrun), exact resume, AMP, EMA, precise BN, reports.

Reproducibility is by construction: a sample's clip, crop and flip depend only on (seed, epoch, index)
(`ClipDataset`), the order of an epoch only on (seed, epoch) (`ShardedSampler`), a batch's mixup only on
(seed, epoch, step), and everything else random (dropout) comes from the global RNG, saved in checkpoints.
So a run resumed from any checkpoint — at an epoch's end or mid-epoch — ends with the weights of the
uninterrupted run, and N processes over a global batch see exactly the samples one process would.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from iresvid.config import Config, ConfigError, DataConfig, to_dict
from iresvid.data.build import build_dataset
from iresvid.data.datasets import ClipDataset
from iresvid.data.loader import build_loader, to_device
from iresvid.data.transforms import CropFlipSampler, GpuAugment, MixupCutmix
from iresvid.data.video_io import open_video
from iresvid.engine.build import build_eval_inputs, build_model, norm_stats, progress_bar
from iresvid.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from iresvid.engine.device import AMP_DTYPES, autocast
from iresvid.engine.dist import (
    DistInfo,
    all_reduce_sum,
    cleanup,
    env_world_size,
    gather_objects,
    init_distributed,
)
from iresvid.engine.evaluate import EvalResult, evaluate
from iresvid.engine.metrics import MetricsLogger, plot_confusion_matrix, plot_curves, write_per_class_csv
from iresvid.engine.optim import build_optimizer, build_scheduler
from iresvid.models.weights import CheckpointError, check_fits

log = logging.getLogger("iresvid.train")

# What `Trainer.state_dict` writes and `_resume` reads back.
_RESUME_KEYS = (
    "model", "optimizer", "scheduler", "scaler", "epoch", "step", "epoch_step", "best_top1", "history", "rng",
    "classes",
)  # fmt: skip
_CLASSIFIER = "fc."  # the classifier's keys (every model of the registry)


class Trainer:
    """Train and evaluate a model as ``cfg`` says; `fit` returns the final evaluation metrics."""

    def __init__(self, cfg: Config, *, dist_info: DistInfo | None = None):
        self.cfg = cfg
        t = cfg.train
        # Checked before joining the process group: the mistake is reported at once, not after a rendezvous
        # that a slow or missing peer can hold up, and no collective is ever entered with a bad split.
        world_size = dist_info.world_size if dist_info is not None else env_world_size()
        per_step = cfg.data.batch_size
        if per_step % (world_size * t.accum_steps):
            raise ConfigError(
                f"'data.batch_size' ({per_step}) must split evenly over {world_size} processes × "
                f"train.accum_steps ({t.accum_steps})"
            )
        self.micro_batch = per_step // (world_size * t.accum_steps)
        self.dist = dist_info or init_distributed(t.dist_backend, t.device)
        self.device = self.dist.device
        torch.manual_seed(t.seed)
        np.random.seed(t.seed % 2**32)
        self.output_dir = Path(t.output_dir)
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.amp_dtype = AMP_DTYPES[t.amp]
        if t.amp == "bf16" and self.device.type == "cpu":
            log.info("bf16 autocast on CPU: supported, but usually slower than fp32 on CPUs without AMX")

        # --- data: the train set fixes the class index; validation must agree with it.
        d = cfg.data
        crop_sampler = CropFlipSampler(
            d.crop_size,
            mode=d.crop_mode,
            jitter_sizes=tuple(d.jitter_sizes),
            area_scale=tuple(d.area_scale),
            flip_prob=d.flip_prob,
        )
        self.train_set = build_dataset(d, "train", mode="train", crop_sampler=crop_sampler, seed=t.seed)
        check_clip_fits(self.train_set, d)
        self.classes = list(self.train_set.classes)
        self.train_loader = build_loader(
            self.train_set,
            batch_size=self.micro_batch,
            shuffle=True,
            seed=t.seed,
            drop_last=True,
            num_workers=d.num_workers,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=d.prefetch_factor,
        )
        self.steps_per_epoch = len(self.train_loader) // t.accum_steps
        if t.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, t.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"'data.batch_size' ({per_step}) is larger than the training set ({len(self.train_set)} "
                f"videos): no full step per epoch"
            )

        # --- model, optimisation
        model = build_model(cfg, len(self.classes)).to(self.device)
        mean, std = norm_stats(cfg, model)  # the model's normalisation, also that of the evaluation views
        self.augment = GpuAugment(crop_sampler, mean=mean, std=std, channels_last=cfg.model.channels_last)
        self.augment.to(self.device)
        self.val = build_eval_inputs(
            cfg,
            model,
            self.device,
            classes=self.classes,  # the training class index, whatever the validation split lists
            num_clips=d.val_num_clips,
            num_crops=d.val_num_crops,
            views_per_pass=d.eval_batch_size or self.micro_batch,
            world_size=self.dist.world_size,
            rank=self.dist.rank,
        )
        if cfg.model.channels_last:
            model = model.to(memory_format=torch.channels_last_3d if model.dims == 3 else torch.channels_last)
        if cfg.model.sync_bn and self.device.type == "cpu":
            raise ConfigError(
                "'model.sync_bn' needs CUDA devices: PyTorch's SyncBatchNorm does not run on the CPU"
            )
        if cfg.model.sync_bn and self.dist.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.optimizer = build_optimizer(model, cfg.optim, cfg.data.batch_size)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.ema = None
        if t.ema_decay:
            self.ema = torch.optim.swa_utils.AveragedModel(
                model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.ema_decay), use_buffers=True
            )
        self.train_model = model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(model, device_ids=ids)
        if cfg.model.compile:
            self.train_model = torch.compile(self.train_model)
        self.mixup = None
        if t.mixup_alpha > 0 or t.cutmix_alpha > 0:
            self.mixup = MixupCutmix(
                len(self.classes),
                mixup_alpha=t.mixup_alpha,
                cutmix_alpha=t.cutmix_alpha,
                label_smoothing=t.label_smoothing,
            )

        self.checkpoints = CheckpointManager(self.output_dir, keep_every_epochs=t.save_every)
        self.epoch, self.step, self.epoch_step = (
            0,
            0,
            0,
        )  # completed epochs / optimizer steps / steps in epoch
        self.best_top1, self.history = -1.0, []
        self.failures: list[tuple[int, str, str]] = []
        self.logger = MetricsLogger(self.output_dir) if self.dist.is_main else None
        self._resume(t.resume)

    # ------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "epoch_step": self.epoch_step,
            # every process's generators (dropout differs per process), restored by rank on resume
            "rng": gather_objects(capture_rng_state()),
            "best_top1": self.best_top1,
            "history": self.history,
            "classes": self.classes,
            "arch": self.cfg.model.name,
            "config": to_dict(self.cfg),
        }

    def _resume(self, resume: str | None) -> None:
        path = self.checkpoints.resolve(resume)
        if path is None:
            if resume == "auto":
                log.info("no checkpoint in %s yet: starting from scratch", self.output_dir)
            return
        state = self.checkpoints.load(path)
        self._check_resumable(state, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.step, self.epoch_step = state["epoch"], state["step"], state["epoch_step"]
        self.best_top1, self.history = state["best_top1"], state["history"]
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:  # a different number of processes: same data order, but dropout streams start afresh
            log.warning(
                "checkpoint from %d processes resumed on %d: random streams reseeded",
                len(rng),
                self.dist.world_size,
            )
            torch.manual_seed(self.cfg.train.seed + self.step + self.dist.rank)
        where = (
            f"step {self.epoch_step} of epoch {self.epoch + 1}" if self.epoch_step else f"epoch {self.epoch}"
        )
        log.info("resumed from %s (%s)", path, where)

    def _check_resumable(self, state: dict, path: Path) -> None:
        """Refuse, naming what differs, a checkpoint this run cannot continue from.

        Resuming continues the very same run: weights of another model or class list get a clear error that
        names the keys and the way out, never a silently partial load or a raw ``load_state_dict`` error.
        """
        missing = [k for k in _RESUME_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise CheckpointError(
                f"{path} is not an iresvid training checkpoint (no {', '.join(missing)}): to start from its "
                f"weights instead, set model.pretrained={path}"
            )
        try:
            check_fits(state["model"], self.model, str(path))
        except CheckpointError as e:
            raise CheckpointError(f"cannot resume: {e}\n  {self._mismatch_hint(state, path)}") from e
        if list(state["classes"]) != self.classes:
            raise CheckpointError(
                f"cannot resume from {path}: it was trained on other classes than {self.train_set.source} "
                f"({len(state['classes'])} vs {len(self.classes)} classes, e.g. {state['classes'][:3]} vs "
                f"{self.classes[:3]}); {_fine_tune_hint(path)}"
            )

    def _mismatch_hint(self, state: dict, path: Path) -> str:
        """Fine-tuning when the classifier alone differs, else the model settings that differ."""
        ours = {k: v for k, v in self.model.state_dict().items() if k.startswith(_CLASSIFIER)}
        theirs = {k: v for k, v in state["model"].items() if not k.startswith(_CLASSIFIER)}
        try:
            check_fits(theirs | ours, self.model, str(path))
        except CheckpointError:
            saved = (state.get("config") or {}).get("model") or {}
            changed = [
                f"model.{key}={saved[key]!r} there, {value!r} here"
                for key, value in to_dict(self.cfg)["model"].items()
                if key in saved and saved[key] != value
            ]
            return "resume with the model it was trained with" + "".join(f"; {c}" for c in changed)
        return _fine_tune_hint(path)

    def _save(self, *, is_best: bool = False, epoch_end: bool = True) -> None:
        state = self.state_dict()  # on every process: gathering the RNG states is collective
        if self.dist.is_main:
            self.checkpoints.save(
                state, epoch=self.epoch, step=self.step, is_best=is_best, epoch_end=epoch_end
            )

    # ------------------------------------------------------------------------------------ training

    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        log.info(
            "training %s on %d %s videos (%d classes), %d processes × %d clips × %d accumulation = batch %d, "
            "%d steps/epoch, %d epochs, output %s",
            cfg.model.name,
            len(self.train_set),
            cfg.data.format,
            len(self.classes),
            self.dist.world_size,
            self.micro_batch,
            t.accum_steps,
            cfg.data.batch_size,
            self.steps_per_epoch,
            cfg.schedule.epochs,
            self.output_dir,
        )
        result = None
        try:
            while self.epoch < cfg.schedule.epochs:
                train_metrics = self.train_one_epoch()
                self.epoch += 1
                self.epoch_step = 0
                metrics = {"epoch": self.epoch, **train_metrics}
                last = self.epoch == cfg.schedule.epochs
                is_best = False
                if last or (t.eval_every and self.epoch % t.eval_every == 0):
                    result = self.validate()
                    metrics.update(result.summary("val_"))
                    top1 = metrics["val_video_top1"]
                    is_best = top1 > self.best_top1
                    self.best_top1 = max(self.best_top1, top1)
                self.history.append(metrics)
                self._save(is_best=is_best)
                if self.logger is not None:
                    self.logger.log(self.step, metrics, prefix="epoch/")
                    log.info("epoch %d: %s", self.epoch, _format(metrics))
            if result is None:  # resumed after the last epoch: nothing left but the final evaluation
                result = self.validate()
            self._final_reports(result)
            return {"epoch": self.epoch, **result.summary("val_")}
        finally:
            if self.logger is not None:
                self.logger.close()

    def train_one_epoch(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        model = self.train_model
        model.train()
        sampler = self.train_loader.sampler
        sampler.set_epoch(self.epoch, start=self.epoch_step * t.accum_steps * self.micro_batch)
        # loss sum, correct, samples, failed videos, frame reads redone by the readers
        totals = torch.zeros(5, dtype=torch.float64, device=self.device)
        start, clips = time.perf_counter(), 0
        steps_left = self.steps_per_epoch - self.epoch_step
        bar = self._progress(total=steps_left, desc=f"epoch {self.epoch + 1}/{cfg.schedule.epochs}")
        batches = iter(self.train_loader)
        for _ in range(steps_left):
            for micro in range(t.accum_steps):
                batch = next(batches)
                self._record_failures(batch["failures"])
                totals[3] += len(batch["failures"])
                totals[4] += batch["rereads"]
                sync = micro == t.accum_steps - 1 or not self.dist.distributed
                with contextlib.nullcontext() if sync else model.no_sync():
                    loss, correct, n = self._forward_backward(batch)
                totals[:3] += torch.tensor([loss * n, correct, n], dtype=torch.float64, device=self.device)
                clips += n
            self._optimizer_step()
            if bar is not None:
                rate = clips * self.dist.world_size / (time.perf_counter() - start)
                bar.set_postfix(
                    loss=f"{loss:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.3g}", clips_s=f"{rate:.1f}"
                )
                bar.update()
            if self.logger is not None and self.step % t.log_every == 0:
                self.logger.log(
                    self.step, {"loss": loss, "lr": self.scheduler.get_last_lr()[0]}, prefix="train/"
                )
            if (
                t.save_every_steps
                and self.step % t.save_every_steps == 0
                and self.epoch_step < self.steps_per_epoch
            ):
                self._save(epoch_end=False)
        if bar is not None:
            bar.close()
        all_reduce_sum(totals)
        failed = self._write_failures()
        rereads = int(totals[4].item())
        if rereads and self.dist.is_main:
            log.warning(
                "epoch %d: %d frame reads were redone through the exact path (a returned frame's timestamp "
                "did not match the one asked for)",
                self.epoch + 1,
                rereads,
            )
        elapsed = time.perf_counter() - start
        return {
            "train_loss": (totals[0] / totals[2].clamp(min=1)).item(),
            "train_top1": (100 * totals[1] / totals[2].clamp(min=1)).item(),
            "lr": self.scheduler.get_last_lr()[0],
            "clips_per_s": clips * self.dist.world_size / elapsed,
            "train_failed_videos": failed,
            "train_reread_reads": rereads,
        }

    def _forward_backward(self, batch: dict) -> tuple[float, float, int]:
        t = self.cfg.train
        batch = to_device(batch, self.device)
        x = self.augment.apply(batch["input"], batch["augment"])
        labels = batch["label"]
        targets = labels
        if self.mixup is not None:
            generator = torch.Generator().manual_seed(hash((t.seed, self.epoch, self.step)) % 2**63)
            x, targets = self.mixup(x, labels, generator)
        with autocast(self.device, self.amp_dtype):
            logits = self.train_model(x)
            loss = F.cross_entropy(
                logits.float(), targets, label_smoothing=0.0 if self.mixup else t.label_smoothing
            )
        self.scaler.scale(loss / t.accum_steps).backward()
        correct = (logits.argmax(-1) == labels).sum().item()
        return loss.item(), correct, len(labels)

    def _optimizer_step(self) -> None:
        t = self.cfg.train
        if t.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        self.epoch_step += 1

    # ---------------------------------------------------------------------------------- evaluation

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> EvalResult:
        model = self.eval_model()
        if self.cfg.train.precise_bn_batches:
            self._precise_bn(model)
        return evaluate(
            model,
            self.val.loader,
            self.val.views,
            num_classes=len(self.classes),
            device=self.device,
            amp_dtype=self.amp_dtype,
            chunk=self.val.chunk,
            progress=progress_bar(self.cfg.train.progress and self.dist.is_main, desc="eval", leave=False),
        )

    @torch.no_grad()
    def _precise_bn(self, model: nn.Module) -> None:
        """Recompute BN statistics as exact averages over a few training batches (SlowFast's precise BN):
        the running averages lag behind the weights, which matters most for short schedules."""
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        batches = iter(self.train_loader)
        for _ in range(min(self.cfg.train.precise_bn_batches, len(self.train_loader))):
            batch = to_device(next(batches), self.device)
            model(self.augment.apply(batch["input"], batch["augment"]))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            if self.dist.distributed:  # every process saw different batches: average their statistics
                for buf in (m.running_mean, m.running_var):
                    all_reduce_sum(buf).div_(self.dist.world_size)

    # --------------------------------------------------------------------------------- reporting

    def _record_failures(self, failures: list[tuple[str, str]]) -> None:
        self.failures.extend((self.epoch + 1, path, reason) for path, reason in failures)

    def _write_failures(self) -> int:
        """Gather this epoch's unreadable videos from every process; rank 0 reports and writes them."""
        failures = [f for part in gather_objects(self.failures) for f in part]
        self.failures = []
        if failures and self.dist.is_main:
            path = self.output_dir / "failed_videos.tsv"
            with path.open("a", encoding="utf-8") as f:
                for epoch, video, reason in failures:
                    f.write(f"{epoch}\t{video}\t{reason}\n")
            log.warning(
                "epoch %d: %d unreadable videos skipped and replaced (listed in %s)",
                self.epoch + 1,
                len(failures),
                path,
            )
        return len(failures)

    def _final_reports(self, result: EvalResult) -> None:
        if not self.dist.is_main:
            return
        write_per_class_csv(self.output_dir / "per_class.csv", self.classes, result.video)
        plot_confusion_matrix(self.output_dir / "confusion_matrix.png", result.video, self.classes)
        plot_curves(self.output_dir / "curves.png", self.history)

    def _progress(self, iterable=None, **kwargs):
        if not (self.cfg.train.progress and self.dist.is_main):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, **kwargs)


def _fine_tune_hint(checkpoint: Path) -> str:
    return (
        f"to fine-tune its weights on these classes instead, start a new run with "
        f"model.pretrained={checkpoint} model.reset_classifier=true"
    )


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


def _format(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def train(cfg: Config) -> dict:
    """Train as ``cfg`` says (one process, or one of torchrun's), then clean up the process group."""
    try:
        return Trainer(cfg).fit()
    finally:
        cleanup()
