"""The training loop: one process or many (torchrun), exact resume, AMP, EMA, precise BN, reports.

Reproducibility is by construction: a sample's clip, crop and flip depend only on (seed, epoch, index)
(`ClipDataset`), the order of an epoch only on (seed, epoch) (`ShardedSampler`), a batch's mixup only on
(seed, epoch, step), and everything else random (dropout) comes from the global RNG, saved in checkpoints.
So a run resumed from any checkpoint — at an epoch's end or mid-epoch — ends with the weights of the
uninterrupted run, and N processes over a global batch see exactly the samples one process would.

A preempted job calls `Trainer.request_stop` (from its signal handler): training saves a checkpoint after a
step all processes agree on and raises `TrainingInterrupted`; ``train.resume=auto`` then continues exactly.

No run is lost: the run folder is claimed first (`claim_run_folder`: locked for the whole run, a folder of
another run refused), and a diverged run stops (`TrainingDiverged`) before saving a non-finite state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iresvid.config import Config, to_dict, to_yaml
from iresvid.data.loader import to_device
from iresvid.engine.build import progress_bar
from iresvid.engine.checkpoint import capture_rng_state, restore_rng_state
from iresvid.engine.device import autocast, nondeterministic_op, set_algorithms
from iresvid.engine.dist import (
    DistInfo,
    all_reduce_sum,
    cleanup,
    env_world_size,
    gather_objects,
    init_distributed,
)
from iresvid.engine.evaluate import EvalResult, evaluate
from iresvid.engine.metrics import write_reports
from iresvid.engine.parts import (
    RunFolder,
    build_augment,
    build_checkpointing,
    build_logger,
    build_mixup,
    build_model_parts,
    build_optimization,
    build_train_data,
    build_validation,
    claim_run_folder,
    micro_batch_size,
)
from iresvid.engine.precise_bn import update_bn_stats
from iresvid.errors import UserError
from iresvid.files import atomic_write, csv_cell, open_append
from iresvid.models.weights import CheckpointError, check_fits

log = logging.getLogger("iresvid.train")

# What `Trainer.state_dict` writes and `_resume` reads back.
_RESUME_KEYS = (
    "model", "optimizer", "scheduler", "scaler", "epoch", "step", "epoch_step", "best_top1", "history", "rng",
    "classes",
)  # fmt: skip
_CLASSIFIER = "fc."  # the classifier's keys (every model of the registry)


DATA_WAIT_WARNING = 0.25  # above this share of an epoch spent waiting for batches, the loader is named

_FINE = 2**62  # a divergence tracker's "no non-finite value yet": above any step
# What `_check_finite` watches, in the order of `Trainer._first_bad`.
_WATCHED = ("the training loss was", "the gradient norm was", "the weights were")


class TrainingInterrupted(Exception):
    """Training stopped early at `Trainer.request_stop`, after saving a checkpoint it resumes from."""


class TrainingDiverged(UserError):
    """The loss, the gradient norm or the weights became NaN or infinite; nothing from then on was saved."""


class Trainer:
    """Train and evaluate a model as ``cfg`` says; `fit` returns the final evaluation metrics.

    Assembled from the builders of `iresvid.engine.parts`, in their order: run folder, data, model,
    optimisation, checkpoints, logging.
    """

    def __init__(
        self, cfg: Config, *, dist_info: DistInfo | None = None, run_folder: RunFolder | None = None
    ):
        """``run_folder``: ``train.output_dir`` already claimed by the caller (`claim_run_folder`: the
        command line claims it before logging into it), who releases it; otherwise the trainer claims it
        and releases it when `fit` ends, or when building fails."""
        self.cfg, t = cfg, cfg.train
        # Checked before joining the process group: the mistake is reported at once, not after a rendezvous
        # that a slow or missing peer can hold up.
        self.micro_batch = micro_batch_size(cfg, dist_info.world_size if dist_info else env_world_size())
        # The folder too, by the main process: before the other processes join, and so before anything of
        # theirs or its own is written there.
        main = dist_info.is_main if dist_info else int(os.environ.get("RANK", "0")) == 0
        self._own_folder = run_folder is None
        self.run_folder = run_folder or claim_run_folder(t, main=main)
        try:
            self._build(cfg, dist_info)
        except BaseException:
            if getattr(self, "logger", None) is not None:
                self.logger.close()
            self._release_folder()
            raise

    def _build(self, cfg: Config, dist_info: DistInfo | None) -> None:
        t = cfg.train
        self.dist = dist_info or init_distributed(t.dist_backend, t.device)
        self.device = self.dist.device
        set_algorithms(self.device, benchmark=t.cudnn_benchmark, deterministic=t.deterministic)
        torch.manual_seed(t.seed)
        np.random.seed(t.seed % 2**32)
        self.output_dir = Path(t.output_dir)

        self.train_set, self.train_loader, self.classes, self.steps_per_epoch = build_train_data(
            cfg, self.micro_batch, self.dist
        )
        self.model, self.train_model, self.ema = build_model_parts(cfg, len(self.classes), self.dist)
        self.augment = build_augment(cfg, self.train_set.crop_sampler, self.model, self.device)
        self.val = build_validation(cfg, self.model, self.classes, self.micro_batch, self.dist)
        self.optimizer, self.scheduler, self.scaler, self.amp_dtype = build_optimization(
            cfg, self.model, self.steps_per_epoch, self.device
        )
        self.mixup = build_mixup(t, len(self.classes))
        self.checkpoints, resume_from = build_checkpointing(t, main=self.dist.is_main)
        self.logger = build_logger(self.output_dir, self.dist)
        if self.dist.is_main:  # the fully resolved config this run uses, beside its checkpoints
            atomic_write(self.output_dir / "config.yaml", to_yaml(cfg))

        self.epoch = self.step = self.epoch_step = 0  # completed epochs / optimizer steps / steps in epoch
        self.best_top1, self.history = -1.0, []
        self.failures: list[tuple[int, str, str]] = []
        self._stop_requested = False  # set by `request_stop`, maybe on one process only
        self._stopping = False  # every process agreed to stop after the current step
        # The first optimizer step (1-based) at which each of `_WATCHED` was not finite, kept on the device
        # and read only where training may stop anyway (`_check_finite`): the steps gain no device sync.
        self._first_bad = torch.full((len(_WATCHED),), _FINE, dtype=torch.int64, device=self.device)
        self._last_saved: tuple[Path, str] | None = None  # the newest good checkpoint, and where it stood
        if resume_from is not None:
            self._resume(resume_from)

    def request_stop(self) -> None:
        """Ask training to stop after the current optimizer step, with a checkpoint to resume from (a
        preemption).  Only sets a flag, so a signal handler may call it.  `fit` then saves and raises
        `TrainingInterrupted`; with several processes, all stop at the same step (see `_should_stop`)."""
        self._stop_requested = True

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

    def _resume(self, path: Path) -> None:
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
        self.checkpoints.adopt(state)  # the epoch files it wrote are this run's: pruned as its own
        self._last_saved = (path, self._position())
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
        log.info("resumed from %s (%s)", path, self._position())

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
        self._check_finite()  # a diverged state is never saved, not as last.pth, not as best.pth
        state = self.state_dict()  # on every process: gathering the RNG states is collective
        if self.dist.is_main:
            path = self.checkpoints.save(
                state, epoch=self.epoch, step=self.step, is_best=is_best, epoch_end=epoch_end
            )
            self._last_saved = (path, self._position())

    # ---------------------------------------------------------------------------------- divergence

    def _watch(self, which: int, value: torch.Tensor) -> None:
        """Note on the device whether ``value`` (of `_WATCHED`) is finite at the step being made."""
        bad = self._first_bad[which]
        self._first_bad[which] = torch.where(torch.isfinite(value), bad, bad.clamp(max=self.step + 1))

    def _check_finite(self, *, weights: bool = True) -> None:
        """Stop with `TrainingDiverged` if a watched value was NaN or infinite since training began.

        Called on logging steps and before every save and validation — the points where the loop reads the
        device anyway — never on the other steps.  ``weights``: also check every weight and buffer (one
        reduction), which catches a step whose loss was finite but whose update was not.  All processes
        call it at the same points and agree (a MIN over them), so all stop together.
        """
        first = self._first_bad.clone()
        if weights:
            tensors = [v for v in self._states() if v.is_floating_point()]
            finite = torch.stack([torch.isfinite(v).all() for v in tensors]).all()
            first[2] = torch.where(finite, first[2], first[2].clamp(max=max(self.step, 1)))
        if self.dist.distributed:
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        steps = first.tolist()
        if min(steps) >= _FINE:
            return
        which = min(range(len(steps)), key=steps.__getitem__)
        step = steps[which]
        fix = "lower optim.lr or set train.clip_grad_norm"
        if self._last_saved is None:
            way_out = f"no checkpoint was saved before it: {fix} and start over (train.overwrite=true)"
        else:
            path, position = self._last_saved
            way_out = (
                f"the last good checkpoint is {path} ({position}): {fix}, then resume from it "
                f"(train.resume={path}) or start over (train.overwrite=true)"
            )
        raise TrainingDiverged(
            f"training diverged: {_WATCHED[which]} not finite (NaN or inf) at optimizer step {step} "
            f"(epoch {(step - 1) // self.steps_per_epoch + 1}), so nothing from then on was saved; {way_out}"
        )

    def _states(self) -> list[torch.Tensor]:
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        return [v for m in models for v in m.state_dict().values()]

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
                try:
                    train_metrics = self.train_one_epoch()
                except RuntimeError as e:
                    if (refusal := nondeterministic_op(e)) is not None:  # train.deterministic=strict
                        raise refusal from e
                    raise
                self.epoch += 1
                self.epoch_step = 0
                metrics = {"epoch": self.epoch, **train_metrics}
                last = self.epoch == cfg.schedule.epochs
                is_best = False
                if last or (t.eval_every and self.epoch % t.eval_every == 0):
                    self._check_finite()  # a diverged model scores too (argmax of NaN): not a best one
                    result = self.validate()
                    metrics.update(result.summary("val_"))
                    top1 = metrics["val_video_top1"]
                    is_best = math.isfinite(top1) and top1 > self.best_top1
                    self.best_top1 = top1 if is_best else self.best_top1
                self.history.append(metrics)
                self._save(is_best=is_best)
                if self.logger is not None:
                    self.logger.log(self.step, metrics, prefix="epoch/")
                    log.info("epoch %d: %s", self.epoch, _format(metrics))
                if self._stopping:  # asked during the epoch's last step: its epoch-end checkpoint is saved
                    raise self._interrupted()
            if result is None:  # resumed after the last epoch: nothing left but the final evaluation
                result = self.validate()
            self._final_reports(result)
            return {"epoch": self.epoch, **result.summary("val_")}
        finally:
            if self.logger is not None:
                self.logger.close()
            self._release_folder()

    def _release_folder(self) -> None:
        if self._own_folder:
            self.run_folder.release()

    def train_one_epoch(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        model = self.train_model
        model.train()
        sampler = self.train_loader.sampler
        sampler.set_epoch(self.epoch, start=self.epoch_step * t.accum_steps * self.micro_batch)
        # loss sum, correct, samples: summed on the device, read at the epoch's end, so the steps never
        # wait for the GPU (see `_forward_backward`); then the frame reads the readers redid (a host count)
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        rereads = 0
        start, clips, waited = time.perf_counter(), 0, 0.0
        steps_left = self.steps_per_epoch - self.epoch_step
        bar = self._progress(total=steps_left, desc=f"epoch {self.epoch + 1}/{cfg.schedule.epochs}")
        batches = iter(self.train_loader)
        for _ in range(steps_left):
            for micro in range(t.accum_steps):
                asked = time.perf_counter()
                batch = next(batches)
                waited += time.perf_counter() - asked
                self._record_failures(batch["failures"])
                rereads += batch["rereads"]
                sync = micro == t.accum_steps - 1 or not self.dist.distributed
                with contextlib.nullcontext() if sync else model.no_sync():
                    loss, correct, n = self._forward_backward(batch)
                totals[0] += loss.double() * n
                totals[1] += correct
                totals[2] += n
                clips += n
            self._optimizer_step()
            if self.step % t.log_every == 0:  # the one step in log_every that reads values back
                self._check_finite(weights=False)  # the loss and gradient flags: one read, no reduction
                loss_value, lr = loss.item(), self.scheduler.get_last_lr()[0]
                if self.logger is not None:
                    self.logger.log(self.step, {"loss": loss_value, "lr": lr}, prefix="train/")
                if bar is not None:
                    rate = clips * self.dist.world_size / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}", clips_s=f"{rate:.1f}")
            if bar is not None:
                bar.update()
            if self._should_stop():
                self._stopping = True
                break  # the checkpoint is saved below (or at the epoch's end), after the epoch's reports
            if (
                t.save_every_steps
                and self.step % t.save_every_steps == 0
                and self.epoch_step < self.steps_per_epoch
            ):
                self._save(epoch_end=False)
        if bar is not None:
            bar.close()
        totals[3] = rereads
        all_reduce_sum(totals)
        failed = self._write_failures()
        rereads = int(totals[3].item())
        if rereads and self.dist.is_main:
            log.warning(
                "epoch %d: %d frame reads were redone through the exact path (a returned frame's timestamp "
                "did not match the one asked for)",
                self.epoch + 1,
                rereads,
            )
        if self._stopping and self.epoch_step < self.steps_per_epoch:
            self._save(epoch_end=False)
            raise self._interrupted()
        elapsed = time.perf_counter() - start
        self._report_data_wait(waited, elapsed)
        return {
            "train_loss": (totals[0] / totals[2].clamp(min=1)).item(),
            "train_top1": (100 * totals[1] / totals[2].clamp(min=1)).item(),
            "lr": self.scheduler.get_last_lr()[0],
            "clips_per_s": clips * self.dist.world_size / elapsed,
            "train_failed_videos": failed,
            "train_reread_reads": rereads,
            "data_wait": waited / elapsed,
        }

    def _report_data_wait(self, waited: float, elapsed: float) -> None:
        """Log, once an epoch, the share of the epoch this process spent waiting for batches; when the
        loader cannot keep up, say how to help it."""
        if not self.dist.is_main or elapsed <= 0:
            return
        share = waited / elapsed
        log.info("epoch %d: %.0f%% of the time waiting for data", self.epoch + 1, 100 * share)
        if share > DATA_WAIT_WARNING:
            log.warning(
                "epoch %d: the model waited for data %.0f%% of the time, the loader is the bottleneck: give "
                "it more workers (data.num_workers=%d now; -1 takes every core) or prepare the set once "
                "(iresvid prepare), whose short GOPs at the training size decode several times faster",
                self.epoch + 1,
                100 * share,
                self.train_loader.num_workers,
            )

    def _should_stop(self) -> bool:
        """Whether to stop after this step: `request_stop` was called, here or on any other process.

        The processes must stop at the same step (saving gathers their RNG states collectively), so they
        compare their flags, in one all-reduce on logging steps only: the other steps gain no collective
        and no device sync, and a stop waits at most ``train.log_every`` steps.
        """
        if not self.dist.distributed:
            return self._stop_requested
        if self.step % self.cfg.train.log_every:
            return False
        flag = torch.tensor([float(self._stop_requested)], device=self.device)
        return all_reduce_sum(flag).item() > 0

    def _interrupted(self) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"training stopped on request after {self._position()} (step {self.step}); "
            f"train.resume=auto continues it from {self.checkpoints.last_path}"
        )

    def _position(self) -> str:
        """Where training stands, as a person counts: "step 2 of epoch 3" or "epoch 2" (completed)."""
        return (
            f"step {self.epoch_step} of epoch {self.epoch + 1}" if self.epoch_step else f"epoch {self.epoch}"
        )

    def _forward_backward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
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
        self._watch(0, loss.detach())
        self.scaler.scale(loss / t.accum_steps).backward()
        # Both stay on the device: an .item() here would make the CPU wait for the GPU every step, and the
        # next batch's kernels could not be queued while this one's run.
        correct = (logits.argmax(-1) == labels).sum()
        return loss.detach(), correct, len(labels)

    def _optimizer_step(self) -> None:
        t = self.cfg.train
        if t.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
            if not self.scaler.is_enabled():  # fp16's loss scaling skips steps with inf gradients by design
                self._watch(1, norm)
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
        self._sync_buffers()
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

    def _precise_bn(self, model: nn.Module) -> None:
        """Recompute the statistics of the BN layers that train (`update_bn_stats`) over a few training
        batches, augmented and in the autocast of the training step (SlowFast's precise BN): the running
        averages lag behind the weights, which matters most for short schedules."""
        batches = iter(self.train_loader)
        count = min(self.cfg.train.precise_bn_batches, len(self.train_loader))

        def inputs():
            for _ in range(count):
                batch = to_device(next(batches), self.device)
                yield self.augment.apply(batch["input"], batch["augment"])

        update_bn_stats(model, inputs(), amp_dtype=self.amp_dtype, world_size=self.dist.world_size)

    def _sync_buffers(self) -> None:
        """Give every process rank 0's buffers (BN statistics), of the model and its EMA.

        DDP runs without broadcasting buffers at every forward (a collective per step): each process's BN
        statistics follow its own batches, and rank 0's — the ones saved — are exactly what a broadcast
        would have left there.  Evaluation, where each process scores its shard, needs them the same."""
        if not self.dist.distributed:
            return
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        for buffer in (b for m in models for b in m.buffers()):
            torch.distributed.broadcast(buffer, src=0)

    # --------------------------------------------------------------------------------- reporting

    def _record_failures(self, failures: list[tuple[str, str]]) -> None:
        self.failures.extend((self.epoch + 1, path, reason) for path, reason in failures)

    def _write_failures(self) -> int:
        """Gather this epoch's unreadable videos from every process; rank 0 reports and writes them."""
        failures = [f for part in gather_objects(self.failures) for f in part]
        self.failures = []
        if failures and self.dist.is_main:
            path = self.output_dir / "failed_videos.tsv"
            with open_append(path) as f:  # a name or reason holding a tab or newline must not forge a row
                for epoch, video, reason in failures:
                    f.write(f"{epoch}\t{csv_cell(video)}\t{csv_cell(reason)}\n")
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
        # A plot that fails to draw is logged and left out; the other reports are written.
        write_reports(self.output_dir, result.video, self.classes, self.history)

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


def _format(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def train(cfg: Config) -> dict:
    """Train as ``cfg`` says (one process, or one of torchrun's), then clean up the process group."""
    try:
        return Trainer(cfg).fit()
    finally:
        cleanup()
