"""GPU readiness in one run and one JSON: the training step's speed, memory, host reads and compile
behaviour, evaluation, EMA, transfers, the loader's speed and the GPU's wait for data, and exact resumption.

python -m iresvid.benchmarks.gpu_check [--out bench_results/gpu_check.json] [--quick] [--budget-s S]
(also ``tools/gpu_check.sh`` and ``make gpu-check``)

Parts, in the order they run: cheap and critical first (and the loader's sets, which later parts read), the
raw set's loader rows and ``torch.compile`` rows of the peers last, since they are the least needed and the
least predictable.  The step-level parts are `iresvid.benchmarks.step`'s (its docstring says how their
step is written: as the trainer's, with its statistics on the device); seconds are H200 estimates.

1. ``loader`` (CPU, runs everywhere, ~45 s, at most 100 s): a raw set of long-GOP H.264 videos (1280×720,
   10 s, GOP 250, 2 or 3 B-frames: `benchmarks.data.pan_frames` content, ``SRC/train/<class>/<name>.mp4``,
   the folder format's layout) is written on every core, prepared with `iresvid.data.prepare.prepare`
   (short side 256, GOP 16, into ``DST/train/<class>/<name>.mp4``), then read by `ClipDataset` (8×8 clips)
   + `build_loader` with one worker per core; clips/s is the median epoch after a warm-up epoch.  If
   ``prepare`` fails, the raw set is timed instead, with ``"prepared": false`` and the reason in
   ``prepare_error``.
2. ``transfer`` (~3 s): host→device copies of a uint8 loader batch (16×3×8×256×455) from pageable and from
   pinned memory, median of 10.
3. ``resume`` (~25 s): whole `Trainer` runs on the synthetic demo set (iresnet3d18, 20 steps of 2 clips,
   bf16 and channels-last on a GPU): one whole, one stopped after step 10 by `Trainer.request_stop` (as a
   preemption) and resumed with ``train.resume=auto``; the largest weight difference between the two (0 on
   the CPU, where training is deterministic), and on a GPU that of a second whole run (the noise floor of
   nondeterministic kernels).  The whole run's training epoch runs under `count_host_reads`.
4. ``step_anatomy`` (~65 s): the step of iresnet3d50 (8×224², bf16, ``channels_last_3d``) at micro-batch
   8/16/32/64, each with cuDNN benchmark mode off, then on: speed (`measure_interleaved`), peak memory,
   host reads of one step (`count_host_reads`), one step under ``torch.cuda.set_sync_debug_mode("error")``,
   and the GPU-busy fraction: the union of the kernels and copies `torch.profiler` records over 2 steps,
   over 2 unprofiled steps' wall time.  An out-of-memory is the row's answer, not an error.
5. ``ema`` (~10 s): a step at batch 16 without EMA, then followed by an ``AveragedModel`` update (EMA
   ``multi_avg_fn``, ``use_buffers=True``, on the GPU) and by the trainer's `ModelEma` update.
6. ``evaluation`` (~30 s): views/s of the evaluation forward pass (`device_logits`, bf16, no gradients) on
   8×256² views at 16/32/64/128 views a pass, and precise BN (`update_bn_stats`) over 20 batches of 16.
7. ``train`` eager (~40 s): a training step (`benchmarks.train.sgd_step`) of iresnet3d50, resnet3d50 and
   pytorchvideo's slow_r50 on a 16×3×8×224² batch, bf16 autocast, ``channels_last_3d``, cuDNN benchmark
   mode.  Each candidate is built, timed (`measure_interleaved`: warm-up calls, then the median of the
   repeats) and freed on its own, so a failure (an OOM) stays its own and its peak memory is its alone.
8. ``data_wait`` (~25 s): iresnet3d50 (eager, as in 7) trains on batches of 16 from the prepared set's
   loader (one worker per core), moved to the GPU and cropped to 224 there (`GpuAugment`, as the trainer
   does).  Each step synchronises the GPU at its end; the time blocked in ``next(loader)`` over the step's
   whole time, summed over the steps after warm-up, is the fraction of time the GPU waits for data.
9. ``loader_workers``, prepared set (~25 s): at 4, 8, 12 and all cores' workers, the loader alone (the
   batches after its first round, one per worker, which include the workers' start) and then feeding the
   steps of 8 (at most 12 steps or 10 s); the same measures on the raw set come in 11.
10. ``compile`` (~110 s, at most 180 s): iresnet3d50 through ``torch.compile`` (inductor) as the trainer
    compiles it (its training forward pass), at batch 16: the first step's time (the compilation), the
    frames dynamo compiles (``torch._dynamo.utils.counters``) over 30 steps, then over a validation pass
    as the trainer's (precise BN, then eval mode, no gradients, 256² views, a short last batch, on the
    module itself), then back in training; eager and compiled step times, interleaved, and their ratio.
11. ``loader_workers``, raw set (~20 s a row).
12. ``train`` compiled: as 7, through ``torch.compile``; compilation happens in the warm-up calls and is
    reported as ``first_step_s``, never in ``step_ms``.  Last: the compiles are what to drop.

Every part (every row of ``train``, ``step_anatomy``, ``loader_workers``) is guarded: an exception is
recorded as ``"error"`` and the next part runs; one that would start with less of the time budget left than
it needs is ``"skipped"`` with the reason, and a part still running at the end of the budget or of its own
share is interrupted (``SIGALRM``) and recorded as an error.  The JSON is rewritten (atomically) after every
part, so a run cut short still leaves a valid file.  Without CUDA, ``--quick`` runs every part on the CPU
but ``transfer`` (pinned memory needs a GPU), ``train`` and ``data_wait`` (``{"skipped": "no CUDA
device"}``); a full run without CUDA runs ``loader`` and ``resume`` only.  ``--quick`` shrinks everything
(tiny videos, iresnet3d18/50 at 1/8 width on 4×32² clips, 1–2 workers, a few steps, ``aot_eager`` for
``torch.compile`` on the CPU): it checks the code path, its numbers mean nothing.

JSON (schema 1), flat:

* ``schema``: 1; ``cuda``: bool; ``device``: the GPU's name, or ``"cpu"``; ``quick``: bool;
  ``env``: `common.environment`; ``budget_s``: the time budget; ``wall_s``: seconds the run took.
* ``train``: one row per (model, mode), mode ``"eager"`` or ``"compiled"``:
  ``{"model", "mode", "clips_per_s", "step_ms" (median), "peak_mem_gib", "first_step_s", "input_shape"}``
  or ``{"model", "mode", "skipped" | "error"}``.  ``peak_mem_gib`` is ``torch.cuda.max_memory_allocated``
  over one steady-state step (the counter is reset per candidate, and again by `measure_interleaved` just
  before its memory call): weights, gradients, momentum, activations, workspace and the input batch.
* ``loader``: ``{"clips_per_s", "workers", "videos", "prepared", "prepare_error" (if not prepared),
  "prepare_counts" (prepare's videos by status, if prepared), "clips_per_epoch", "batch", "epoch_s",
  "raw_size", "short_side", "seconds", "generate_s", "prepare_s"}`` or ``{"error"}``.
* ``data_wait``: ``{"fraction", "steps_per_s", "clips_per_s", "steps", "batch", "model", "prepared",
  "wait_ms_median", "step_ms_median"}`` or ``{"skipped" | "error"}``.
* ``transfer``: ``{"shape", "dtype", "mb", "pageable_gb_per_s", "pinned_gb_per_s", "pageable_ms",
  "pinned_ms"}`` or ``{"skipped" | "error"}``.
* ``resume``: ``{"model", "steps", "stopped_at", "whole_step", "resumed_step", "max_abs_diff" (resumed vs
  whole, over every weight and buffer), "repeat_max_abs_diff" (whole vs whole; null on the
  CPU), "whole_run_s", "trainer_host_reads" (int), "trainer_host_reads_per_step",
  "trainer_host_reads_by_kind"}`` or ``{"skipped" | "error"}``.  The reads are the main process's: on a
  GPU the loader's workers decode; on the CPU (no workers) the data path's reads count too.
* ``step_anatomy``: one row per (batch, cuDNN benchmark): ``{"batch", "cudnn_benchmark", "clips_per_s",
  "step_ms", "first_step_s", "busy_fraction" (in [0, 1]; on the CPU the operators' share of the profiled
  wall time), "peak_mem_gib" (null on the CPU), "host_reads_per_step" (int), "host_reads_by_kind",
  "sync_debug" ("clean", the first synchronising call's error, or null on the CPU), "input_shape"}`` or
  ``{"batch", "cudnn_benchmark", "out_of_memory" | "skipped" | "error"}``; a full run without CUDA:
  ``[{"skipped"}]``, as ``loader_workers``.
* ``ema``: ``{"model", "batch", "decay", "step_ms_without", "variants": [{"kind" ("averaged_model",
  "model_ema"), "step_ms", "cost_ms_per_step" (step_ms − step_ms_without), "update_ms" (an update
  alone), "host_reads_per_update" (int)}]}`` or ``{"skipped" | "error"}``.
* ``evaluation``: ``{"model", "view_shape", "rows": [{"batch", "views_per_s", "batch_ms", "peak_mem_gib"}
  or {"batch", "out_of_memory"}], "precise_bn": {"batches", "batch", "s", "ms_per_batch",
  "host_reads_per_batch" (int)}}`` or ``{"skipped" | "error"}``.
* ``loader_workers``: one row per (set, workers), set ``"prepared"`` or ``"raw"``: ``{"set", "workers",
  "clips_per_s" (the loader alone), "startup_s" (its first round), "wait_fraction", "train_clips_per_s",
  "steps", "batch", "model"}`` or ``{"set", "workers", "skipped" | "error"}``.
* ``compile``: ``{"model", "backend", "batch", "input_shape", "compile_s", "first_step_frames",
  "graph_breaks", "steps", "recompiles_training", "validation_views", "validation_s",
  "compiles_validation", "recompiles_after_validation", "step_ms_eager", "step_ms_compiled", "speedup"}``
  or ``{"skipped" | "error"}``.  The counts are ints, frames dynamo compiled in each phase: after the
  first step, every one is a recompile (0 expected everywhere).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gc
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from iresvid.benchmarks.common import environment, measure_interleaved, synchronize
from iresvid.benchmarks.data import CLASSES, FileSet, epoch_of, video_label, write_set_video
from iresvid.benchmarks.step import (
    StepConfig,
    amp_dtype,
    anatomy_row,
    compile_part,
    ema_part,
    evaluation_part,
    new_model,
    resume_part,
    step_config,
    train_step,
    transfer_part,
)
from iresvid.benchmarks.train import OURS, PEER, TrainConfig, candidate, random_batch, sgd_step
from iresvid.benchmarks.train import config_for as train_config_for
from iresvid.data.annotations import Annotations, folder_per_class
from iresvid.data.datasets import ClipDataset
from iresvid.data.loader import build_loader, to_device
from iresvid.data.transforms import CropFlipSampler, GpuAugment
from iresvid.files import atomic_write, output_dir
from iresvid.models import create_model

SCHEMA = 1
NO_CUDA = "no CUDA device"
MODES = ("eager", "compiled")
GIB = 2**30
CPU = torch.device("cpu")
WAIT_MODEL = "iresnet3d50"
SPLIT = "train"  # the folder format's default ``train_dir``: prepare lists ``SRC/train/<class>/<video>``


@dataclass(frozen=True)
class CheckConfig:
    train: TrainConfig  # the training input and timing of the train rows (and data_wait's width and batch)
    step: StepConfig  # the sizes of the step-level parts (`iresvid.benchmarks.step`)
    raw: FileSet  # the raw videos that are prepared
    seconds: float
    fps: int
    short_side: int  # of the prepared videos and of the loader's clips
    prepare_gop: int
    listings: int  # each video is listed this many times in a loader epoch (the loader part)
    workers: int
    loader_epochs: int  # timed, after one warm-up epoch
    wait_warmup: int  # data_wait's steps left out of the fraction: workers start, cuDNN tunes
    wait_steps: int
    worker_counts: tuple[int, ...]  # the loader_workers rows
    workers_rounds: int  # the loader alone: rounds (one batch per worker) timed after the first
    workers_steps: int  # the most training steps a loader_workers row feeds ...
    workers_train_s: float  # ... and the most seconds it spends on them (at least 2 steps)
    need_s: dict[str, float]  # the least time left for a part (a row) to be started
    cap_s: dict[str, float]  # the most a part (a row) may take: a stuck one leaves time for the others


def config_for(cuda: bool, quick: bool) -> CheckConfig:
    train = train_config_for(torch.device("cuda" if cuda else "cpu"), quick)
    step = step_config(cuda, quick)
    cores = os.cpu_count() or 1
    if quick:
        # Tiny 16:9 frames, like the full set's; 3 s still holds an 8x8 clip (57 frames).
        raw = FileSet("raw_quick", "pan", 4, (72, 128), 250, (2, 3), 21, 1, 2)
        return CheckConfig(
            train=train,
            step=step,
            raw=raw,
            seconds=3.0,
            fps=25,
            short_side=32,
            prepare_gop=16,
            listings=2,
            workers=min(2, cores),
            loader_epochs=2,
            wait_warmup=1,
            wait_steps=3,
            worker_counts=tuple(sorted({1, min(2, cores)})),
            workers_rounds=1,
            workers_steps=2,
            workers_train_s=math.inf,
            need_s=collections.defaultdict(lambda: 1.0),
            cap_s=collections.defaultdict(lambda: 120.0),  # a slow shared CPU, not a stuck part
        )
    # 32 videos of 250 720p frames: two per core on the 16-core GPU machine, about 10 s to write.
    raw = FileSet("raw_1280x720", "pan", 32, (720, 1280), 250, (2, 3), 21, 16, 16)
    # Estimates for an H200 are in the module docstring (~450 s in all with the first train compiled row;
    # the budget then drops the rest).  A row's need is about its expected time, its cap about twice that.
    need = {
        "loader": 0.0,  # first, and needed by later parts
        "transfer": 5.0,
        "resume": 20.0,
        "step_anatomy": 10.0,  # a row
        "ema": 10.0,
        "evaluation": 20.0,
        "train eager": 20.0,  # a row
        "data_wait": 30.0,
        "loader_workers prepared": 10.0,  # a row
        "compile": 90.0,
        "loader_workers raw": 20.0,  # a row
        "train compiled": 60.0,  # a row
    }
    cap = {
        "loader": 100.0,
        "transfer": 20.0,
        "resume": 60.0,
        "step_anatomy": 60.0,  # 64 clips with cuDNN's untuned algorithms may take seconds a step
        "ema": 40.0,
        "evaluation": 60.0,
        "train eager": 60.0,
        "data_wait": 60.0,
        "loader_workers prepared": 30.0,
        "compile": 180.0,
        "loader_workers raw": 40.0,
        "train compiled": 120.0,
    }
    counts = tuple(sorted({n for n in (4, 8, 12) if n < cores} | {cores}))
    return CheckConfig(
        train=train,
        step=step,
        raw=raw,
        seconds=10.0,
        fps=25,
        short_side=256,
        prepare_gop=16,
        listings=16,
        workers=cores,
        loader_epochs=2,
        wait_warmup=5,
        wait_steps=40,
        worker_counts=counts,
        workers_rounds=1,
        workers_steps=12,
        workers_train_s=10.0,
        need_s=need,
        cap_s=cap,
    )


class OutOfTime(BaseException):
    """The time budget ran out while a part was running.

    A BaseException, as KeyboardInterrupt is: the ``except Exception`` fallbacks inside a part (this module's
    raw-set fallback, a library's) must not swallow it and carry on past the deadline.
    """


class Budget:
    """Seconds left until the deadline, and a guard that interrupts the code inside it at the deadline."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    @contextlib.contextmanager
    def enforced(self, cap_s: float = math.inf) -> Iterator[None]:
        """Raise `OutOfTime` inside the block at the deadline, or ``cap_s`` from now if that is sooner."""
        # A timer signal, not a check between steps: a torch.compile can run for minutes in one call.
        limit = min(self.left(), cap_s)
        why = f"ran past {cap_s:.0f} s, its share" if cap_s < self.left() else "the time budget ran out"

        def alarm(signum, frame):
            raise OutOfTime(why)

        if limit <= 0:
            raise OutOfTime(why)
        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def attempt(part: Callable[[], dict], budget: Budget, need_s: float, cap_s: float = math.inf) -> dict:
    """``part()``, or ``{"skipped": why}`` when less than ``need_s`` is left, or ``{"error": what}``."""
    if budget.left() < need_s:
        return {"skipped": f"time budget: {budget.left():.0f} s left, this part needs about {need_s:.0f} s"}
    try:
        with budget.enforced(cap_s):
            return part()
    except (Exception, OutOfTime) as error:  # recorded, and the next part still runs
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}
    finally:
        gc.collect()  # a failed candidate's model and optimizer go before the next one is built
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write_raw_set(root: Path, config: CheckConfig) -> None:
    """``root/<class>/<index>.mp4``, one job per video on every core."""
    frames = round(config.seconds * config.fps)
    paths = [
        root / CLASSES[video_label(i)].replace(" ", "_") / f"{i:03d}.mp4" for i in range(config.raw.videos)
    ]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        jobs = [
            pool.submit(write_set_video, p, config.raw, i, frames, config.fps) for i, p in enumerate(paths)
        ]
        try:
            for job in jobs:
                job.result()  # raises the first failure
        except BaseException:
            for job in jobs:
                job.cancel()  # the queued videos: an interrupted run then ends when the running ones do
            raise


def prepared_set(root: Path, config: CheckConfig) -> tuple[Annotations, dict]:
    """Write the raw set, prepare it; the videos to read (prepared, else raw) and what it took."""
    src, dst = root / "src", root / "prepared"
    start = time.perf_counter()
    write_raw_set(src / SPLIT, config)
    facts: dict = {"generate_s": time.perf_counter() - start}
    start = time.perf_counter()
    try:
        from iresvid.data.prepare import prepare

        report = prepare(
            src,
            dst,
            format="folder",
            short_side=config.short_side,
            gop=config.prepare_gop,
            workers=os.cpu_count(),
            progress=False,
        )
        # A video prepare could not make is reported, not raised: the counts say whether all were made.
        videos = folder_per_class(dst / SPLIT)
        facts |= {"prepared": True, "prepare_counts": dict(report.counts)}
    except Exception as error:  # noqa: BLE001 — the raw set is still worth timing, labelled as such
        traceback.print_exc()
        videos = folder_per_class(src / SPLIT)
        facts |= {"prepared": False, "prepare_error": f"{type(error).__name__}: {error}"}
    return videos, facts | {"prepare_s": time.perf_counter() - start}


def clip_dataset(videos: Annotations, listings: int, config: CheckConfig) -> ClipDataset:
    listed = Annotations(videos.records * listings, videos.classes, [], videos.source)
    return ClipDataset(
        listed,
        mode="train",
        num_frames=8,
        frame_stride=8,
        short_side=config.short_side,
        crop_sampler=crop_sampler(config),
    )


def crop_sampler(config: CheckConfig) -> CropFlipSampler:
    # Jitter from the short side to 1.25× it: SlowFast's (256, 320) at full size.
    jitter = (config.short_side, round(1.25 * config.short_side))
    return CropFlipSampler(config.train.size, jitter_sizes=jitter)


def loader_part(videos: Annotations, facts: dict, config: CheckConfig) -> dict:
    dataset = clip_dataset(videos, config.listings, config)
    clips = len(dataset)
    loader = build_loader(dataset, batch_size=config.train.batch, shuffle=True, num_workers=config.workers)
    epochs = {"epoch": epoch_of(loader, clips)}
    threads = torch.get_num_threads()
    # One torch thread in the main process, as in `benchmarks.data`: its idle OpenMP threads would spin
    # after each collate and take cores from the decoding workers.
    torch.set_num_threads(1)
    try:
        timing = measure_interleaved(epochs, CPU, warmup=1, repeats=config.loader_epochs)["epoch"]
    finally:
        torch.set_num_threads(threads)
        del epochs, loader  # stops the persistent workers
    return {
        "clips_per_s": clips / timing.median_s,
        "workers": config.workers,
        "videos": len(videos.records),
        "clips_per_epoch": clips,
        "batch": config.train.batch,
        "epoch_s": timing.median_s,
        "raw_size": list(config.raw.size),
        "short_side": config.short_side,
        "seconds": config.seconds,
    } | facts  # prepared, prepare_counts or prepare_error, generate_s, prepare_s


def train_row(name: str, mode: str, config: TrainConfig, device: torch.device) -> dict:
    torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = candidate(name, config).to(device).to(memory_format=torch.channels_last_3d).train()
    clips, labels = random_batch(config, device)
    clips = clips.contiguous(memory_format=torch.channels_last_3d)
    step = sgd_step(torch.compile(model) if mode == "compiled" else model, bf16=True)
    try:
        timing = measure_interleaved(
            {name: lambda: step(clips, labels)}, device, warmup=config.warmup, repeats=config.repeats
        )[name]
    finally:
        if mode == "compiled":
            torch._dynamo.reset()  # its caches would keep this model alive into the next one's memory
    return {
        "clips_per_s": config.batch / timing.median_s,
        "step_ms": 1000 * timing.median_s,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / GIB,
        "first_step_s": timing.first_call_s,  # with torch.compile: the compilation
        "input_shape": list(config.input_shape),
    }


@dataclass(frozen=True)
class WaitTraining:
    """What data_wait and loader_workers feed: iresnet3d50's step and the device-side augmentation."""

    step: Callable[[torch.Tensor, torch.Tensor], None]
    augment: GpuAugment


def wait_training(config: CheckConfig, device: torch.device) -> WaitTraining:
    torch.manual_seed(0)
    model = create_model(WAIT_MODEL, width_scale=config.train.width_scale).to(device)
    step = sgd_step(model.to(memory_format=torch.channels_last_3d).train(), bf16=device.type == "cuda")
    return WaitTraining(step, GpuAugment(crop_sampler(config), channels_last=True).to(device))


def timed_steps(
    batches: Iterator[dict],
    training: WaitTraining,
    device: torch.device,
    *,
    warmup: int,
    steps: int,
    limit_s: float = math.inf,
) -> tuple[list[float], list[float]]:
    """Train on ``steps`` batches after ``warmup`` (fewer once ``limit_s`` is spent, but at least 2):
    each measured step's time blocked in ``next(batches)`` and its whole time."""
    waits: list[float] = []
    totals: list[float] = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        data = next(batches)
        got = time.perf_counter()
        data = to_device(data, device)
        training.step(training.augment.apply(data["input"], data["augment"]), data["label"])
        synchronize(device)  # the trainer's step ends in a read of the loss too
        if i >= warmup:
            waits.append(got - start)
            totals.append(time.perf_counter() - start)
            if len(totals) >= 2 and sum(totals) > limit_s:
                break
    return waits, totals


def training_loader(videos: Annotations, batches: int, workers: int, config: CheckConfig, device):
    batch = config.train.batch
    # Listed often enough that every step falls in one epoch: an epoch's end drains the workers' queue,
    # which on a real dataset happens once in thousands of steps, not every few.
    listings = math.ceil(batches * batch / len(videos.records))
    dataset = clip_dataset(videos, listings, config)
    pin = device.type == "cuda"
    return build_loader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True, pin_memory=pin
    )


def data_wait_part(
    videos: Annotations, prepared: bool, training: WaitTraining, config: CheckConfig, device: torch.device
) -> dict:
    batch = config.train.batch
    loader = training_loader(videos, config.wait_warmup + config.wait_steps, config.workers, config, device)
    batches = iter(loader)
    try:
        waits, totals = timed_steps(
            batches, training, device, warmup=config.wait_warmup, steps=config.wait_steps
        )
    finally:
        del batches, loader  # stops the workers
    return {
        "fraction": sum(waits) / sum(totals),
        "steps_per_s": len(totals) / sum(totals),
        "clips_per_s": batch * len(totals) / sum(totals),
        "steps": len(totals),
        "batch": batch,
        "model": WAIT_MODEL,
        "prepared": prepared,
        "wait_ms_median": 1000 * statistics.median(waits),
        "step_ms_median": 1000 * statistics.median(totals),
    }


def workers_row(
    videos: Annotations, workers: int, training: WaitTraining, config: CheckConfig, device: torch.device
) -> dict:
    """The loader with ``workers`` workers alone, then feeding training steps.

    Alone: the batches after the first round (one per worker: the time their start takes), whose rate is
    the workers' steady one, since all of them work all the time the main process drains them.
    """
    batch, timed = config.train.batch, workers * config.workers_rounds
    loader = training_loader(videos, workers + timed + 1 + config.workers_steps, workers, config, device)
    batches = iter(loader)
    try:
        start = time.perf_counter()
        for _ in range(workers):
            next(batches)
        first = time.perf_counter()
        for _ in range(timed):
            next(batches)
        alone_s = time.perf_counter() - first
        # One warm-up step: the step's first call on a new batch layout, not the loader's.
        waits, totals = timed_steps(
            batches, training, device, warmup=1, steps=config.workers_steps, limit_s=config.workers_train_s
        )
    finally:
        del batches, loader  # stops the workers
    return {
        "clips_per_s": timed * batch / alone_s,
        "startup_s": first - start,
        "wait_fraction": sum(waits) / sum(totals),
        "train_clips_per_s": batch * len(totals) / sum(totals),
        "steps": len(totals),
        "batch": batch,
        "model": WAIT_MODEL,
    }


ROW_SECTIONS = ("train", "step_anatomy", "loader_workers")  # lists of rows; the other sections are dicts
PART_SECTIONS = ("loader", "transfer", "resume", "ema", "evaluation", "data_wait", "compile")


def has_error(record: dict) -> bool:
    """Whether a part failed (an out-of-memory row is an answer, not a failure)."""
    rows = [row for key in ROW_SECTIONS for row in record[key]]
    return any("error" in part for part in (*rows, *(record[key] for key in PART_SECTIONS)))


def check(out: Path, quick: bool, budget_s: float | None = None) -> dict:
    """Run every part, rewriting ``out`` after each; returns the record."""
    started = time.perf_counter()
    output_dir(out.parent)  # refused now, not after minutes of work
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = config_for(cuda, quick)
    budget = Budget(budget_s if budget_s is not None else (300 if quick else 450))
    if quick:
        # Tiny nets gain nothing from more threads, and on a busy machine OpenMP's spinning threads made
        # the quick check four times slower (47 s against 198 s on two shared cores).
        torch.set_num_threads(1)
    env = environment(device)
    runs_here = cuda or quick  # a full-size step on the CPU would take hours
    record: dict = {
        "schema": SCHEMA,
        "cuda": cuda,
        "device": env["device_name"] if cuda else "cpu",
        "quick": quick,
        "env": env,
        "budget_s": budget.seconds,
        **{key: [] for key in ROW_SECTIONS},
        **{key: {"skipped": "not run yet"} for key in PART_SECTIONS},
        "wall_s": 0.0,
    }

    def save(message: str) -> None:
        record["wall_s"] = time.perf_counter() - started
        atomic_write(out, json.dumps(record, indent=2) + "\n")
        print(f"gpu_check [{record['wall_s']:.0f} s]: {message}", flush=True)

    if not cuda:
        where = "run on the CPU (tiny)" if quick else "are skipped; the loader and resume run on the CPU"
        print(f"gpu_check: {NO_CUDA}: the GPU parts {where}", flush=True)
        record["train"] = [
            {"model": m, "mode": mode, "skipped": NO_CUDA} for mode in MODES for m in (*OURS, PEER)
        ]
        record["data_wait"] = {"skipped": NO_CUDA}
        record["transfer"] = {"skipped": NO_CUDA}
    else:
        torch.backends.cudnn.benchmark = True
    need, cap, step = config.need_s, config.cap_s, config.step

    def run_part(key: str, part: Callable[[], dict]) -> None:
        record[key] = attempt(part, budget, need[key], cap[key])
        save(f"{key} {record[key]}")

    def run_row(key: str, row: dict, part: Callable[[], dict], budget_key: str | None = None) -> None:
        budget_key = budget_key or key
        record[key].append(row | attempt(part, budget, need[budget_key], cap[budget_key]))
        save(f"{key} {record[key][-1]}")

    def train_rows(mode: str) -> None:
        for name in (*OURS, PEER):
            part = functools.partial(train_row, name, mode, config.train, device)
            run_row("train", {"model": name, "mode": mode}, part, f"train {mode}")

    with tempfile.TemporaryDirectory(prefix="iresvid-gpu-check-") as tmp:
        state: dict = {}  # the sets the loader part wrote, and models built once for several rows

        def loader() -> dict:
            state["videos"], state["facts"] = prepared_set(Path(tmp), config)
            state["raw"] = folder_per_class(Path(tmp) / "src" / SPLIT)
            return loader_part(state["videos"], state["facts"], config)

        def needs_videos() -> None:
            if "videos" not in state:
                raise RuntimeError("the loader part wrote no videos to read")

        def training() -> WaitTraining:
            if "training" not in state:
                state["training"] = wait_training(config, device)
            return state["training"]

        def data_wait() -> dict:
            needs_videos()
            return data_wait_part(state["videos"], state["facts"]["prepared"], training(), config, device)

        def anatomy(batch: int, benchmark: bool) -> dict:
            if "anatomy" not in state:  # one model for every row: the rows differ in input, not weights
                state["anatomy"] = train_step(new_model(step, device), amp_dtype(device))
            return anatomy_row(state["anatomy"], batch, benchmark, step, device)

        def workers_rows(name: str) -> None:
            for workers in config.worker_counts:
                row = {"set": name, "workers": workers}
                if "videos" not in state or (name == "prepared" and not state["facts"]["prepared"]):
                    record["loader_workers"].append(row | {"skipped": f"no {name} set: see the loader part"})
                    continue
                videos = state["raw" if name == "raw" else "videos"]
                part = functools.partial(workers_row, videos, workers, training(), config, device)
                run_row("loader_workers", row, part, f"loader_workers {name}")

        run_part("loader", loader)
        if cuda:
            run_part("transfer", functools.partial(transfer_part, step, device))
        run_part("resume", functools.partial(resume_part, Path(tmp) / "resume", step, device))
        if runs_here:
            for batch in step.batches:
                for benchmark in (False, True):
                    part = functools.partial(anatomy, batch, benchmark)
                    run_row("step_anatomy", {"batch": batch, "cudnn_benchmark": benchmark}, part)
            state.pop("anatomy", None)
            run_part("ema", functools.partial(ema_part, step, device))
            run_part("evaluation", functools.partial(evaluation_part, step, device))
        if cuda:
            train_rows("eager")
            run_part("data_wait", data_wait)
        if runs_here:
            workers_rows("prepared")
            run_part("compile", functools.partial(compile_part, step, device))
            workers_rows("raw")
            state.pop("training", None)
        else:
            for key in ("step_anatomy", "loader_workers"):
                record[key] = [{"skipped": NO_CUDA}]
            for key in ("ema", "evaluation", "compile"):
                record[key] = {"skipped": NO_CUDA}
        if cuda:
            train_rows("compiled")  # last: the compiles are what to drop when time runs short
    save(f"wrote {out}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_results/gpu_check.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code path, not speed")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="time budget of the whole run (default: 450, quick: 300)"
    )
    args = parser.parse_args(argv)
    record = check(args.out, args.quick, args.budget_s)
    return 1 if has_error(record) else 0  # the JSON is written either way


if __name__ == "__main__":
    sys.exit(main())
