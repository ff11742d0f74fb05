"""GPU readiness in one run and one JSON: training speed and memory, loader speed, the GPU's wait for data.

python -m iresvid.benchmarks.gpu_check [--out bench_results/gpu_check.json] [--quick] [--budget-s S]
(also ``tools/gpu_check.sh`` and ``make gpu-check``)

Parts, in the order they run (cheap and needed-by-others first, ``torch.compile`` last since its cost is the
least predictable):

1. ``loader`` (CPU, runs everywhere): a raw set of long-GOP H.264 videos (1280×720, 10 s, GOP 250, 2 or 3
   B-frames: `benchmarks.data.pan_frames` content, ``SRC/train/<class>/<name>.mp4``, the folder format's
   layout) is written on every core, prepared with `iresvid.data.prepare.prepare` (short side 256, GOP 16,
   into ``DST/train/<class>/<name>.mp4``), then read by `ClipDataset` (8×8 clips) + `build_loader` with one
   worker per core; clips/s is the median epoch after a warm-up epoch.  If ``prepare`` fails, the raw set is
   timed instead, with ``"prepared": false`` and the reason in ``prepare_error``.
2. ``train`` eager: a training step (`benchmarks.train.sgd_step`) of iresnet3d50, resnet3d50 and
   pytorchvideo's slow_r50 on a 16×3×8×224² batch, bf16 autocast, ``channels_last_3d``, cuDNN benchmark
   mode.  Each candidate is built, timed (`measure_interleaved`: warm-up calls, then the median of the
   repeats) and freed on its own, so a failure (an OOM) stays its own and its peak memory is its alone.
3. ``data_wait``: iresnet3d50 (eager, as in 2) trains on batches of 16 from the prepared set's loader, moved
   to the GPU and cropped to 224 there (`GpuAugment`, as the trainer does).  Each step synchronises the GPU
   at its end (the trainer does too, through ``loss.item()``); the time blocked in ``next(loader)`` over the
   step's whole time, summed over the steps after warm-up, is the fraction of time the GPU waits for data.
4. ``train`` compiled: as 2, through ``torch.compile``; compilation happens in the warm-up calls and is
   reported as ``first_step_s``, never in ``step_ms``.

Every part (every train candidate) is guarded: an exception is recorded as ``"error"`` and the next part
runs; one that would start with less of the time budget left than it needs is ``"skipped"`` with the reason,
and a part still running when the budget ends is interrupted (``SIGALRM``) and recorded as an error.  The
JSON is rewritten after every part, so a run cut short still leaves a valid file.  Without CUDA, the GPU
parts are ``{"skipped": "no CUDA device"}`` and the loader runs on the CPU.  ``--quick`` shrinks everything
(tiny videos and nets, 1–2 workers): it checks the code path, its numbers mean nothing.

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
"""

from __future__ import annotations

import argparse
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
from iresvid.benchmarks.train import OURS, PEER, TrainConfig, candidate, random_batch, sgd_step
from iresvid.benchmarks.train import config_for as train_config_for
from iresvid.data.annotations import Annotations, folder_per_class
from iresvid.data.datasets import ClipDataset
from iresvid.data.loader import build_loader, to_device
from iresvid.data.transforms import CropFlipSampler, GpuAugment
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
    train: TrainConfig  # the training input and timing of parts 2 and 4 (and 3's width and batch)
    raw: FileSet  # the raw videos that are prepared
    seconds: float
    fps: int
    short_side: int  # of the prepared videos and of the loader's clips
    prepare_gop: int
    listings: int  # each video is listed this many times in a loader epoch (part 1)
    workers: int
    loader_epochs: int  # timed, after one warm-up epoch
    wait_warmup: int  # steps of part 3 left out of the fraction: workers start, cuDNN tunes
    wait_steps: int
    loader_cap_s: float  # the most part 1 may take, so a stuck encoder leaves time for the GPU parts
    need_s: dict[str, float]  # the least time left for a part (a train candidate) to be started


def config_for(cuda: bool, quick: bool) -> CheckConfig:
    train = train_config_for(torch.device("cuda" if cuda else "cpu"), quick)
    cores = os.cpu_count() or 1
    if quick:
        # Tiny 16:9 frames, like the full set's; 3 s still holds an 8x8 clip (57 frames).
        raw = FileSet("raw_quick", "pan", 4, (72, 128), 250, (2, 3), 21, 1, 2)
        need = dict.fromkeys(("train eager", "train compiled", "data_wait"), 1.0)
        return CheckConfig(train, raw, 3.0, 25, 32, 16, 2, min(2, cores), 2, 1, 3, 60, need)
    # 32 videos of 250 720p frames: two per core on the 16-core GPU machine, about 10 s to write.
    raw = FileSet("raw_1280x720", "pan", 32, (720, 1280), 250, (2, 3), 21, 16, 16)
    # Estimates for an H200: an eager candidate (cuDNN tuning + 24 steps) ~20 s, a compile ~60 s or more.
    need = {"train eager": 20.0, "train compiled": 60.0, "data_wait": 30.0}
    return CheckConfig(train, raw, 10.0, 25, 256, 16, 16, cores, 3, 5, 40, 150, need)


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


def data_wait_part(videos: Annotations, prepared: bool, config: CheckConfig, device: torch.device) -> dict:
    batch, steps = config.train.batch, config.wait_warmup + config.wait_steps
    # Listed often enough that every step falls in one epoch: an epoch's end drains the workers' queue,
    # which on a real dataset happens once in thousands of steps, not every few.
    listings = math.ceil(steps * batch / len(videos.records))
    dataset = clip_dataset(videos, listings, config)
    loader = build_loader(
        dataset, batch_size=batch, shuffle=True, num_workers=config.workers, drop_last=True, pin_memory=True
    )
    augment = GpuAugment(dataset.crop_sampler, channels_last=True).to(device)
    torch.manual_seed(0)
    model = create_model(WAIT_MODEL, width_scale=config.train.width_scale).to(device)
    step = sgd_step(model.to(memory_format=torch.channels_last_3d).train(), bf16=True)
    waits, totals = [], []
    batches = iter(loader)
    for i in range(steps):
        start = time.perf_counter()
        data = next(batches)
        got = time.perf_counter()
        data = to_device(data, device)
        step(augment.apply(data["input"], data["augment"]), data["label"])
        synchronize(device)
        if i >= config.wait_warmup:
            waits.append(got - start)
            totals.append(time.perf_counter() - start)
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


def has_error(record: dict) -> bool:
    return any("error" in part for part in (*record["train"], record["loader"], record["data_wait"]))


def check(out: Path, quick: bool, budget_s: float | None = None) -> dict:
    """Run every part, rewriting ``out`` after each; returns the record."""
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = config_for(cuda, quick)
    budget = Budget(budget_s if budget_s is not None else (180 if quick else 450))
    env = environment(device)
    record: dict = {
        "schema": SCHEMA,
        "cuda": cuda,
        "device": env["device_name"] if cuda else "cpu",
        "quick": quick,
        "env": env,
        "budget_s": budget.seconds,
        "train": [],
        "loader": {"skipped": "not run yet"},
        "data_wait": {"skipped": "not run yet"},
        "wall_s": 0.0,
    }

    def save(message: str) -> None:
        record["wall_s"] = time.perf_counter() - started
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"gpu_check [{record['wall_s']:.0f} s]: {message}", flush=True)

    if not cuda:
        print(f"gpu_check: {NO_CUDA}: the GPU parts are skipped, the loader runs on the CPU", flush=True)
        record["train"] = [
            {"model": m, "mode": mode, "skipped": NO_CUDA} for mode in MODES for m in (*OURS, PEER)
        ]
        record["data_wait"] = {"skipped": NO_CUDA}
    else:
        torch.backends.cudnn.benchmark = True
    need = config.need_s

    def train_rows(mode: str) -> None:
        for name in (*OURS, PEER):
            row = attempt(
                functools.partial(train_row, name, mode, config.train, device), budget, need[f"train {mode}"]
            )
            record["train"].append({"model": name, "mode": mode} | row)
            save(f"train {record['train'][-1]}")

    with tempfile.TemporaryDirectory(prefix="iresvid-gpu-check-") as tmp:
        state: dict = {}  # the videos part 1 read, for part 3

        def loader() -> dict:
            state["videos"], state["facts"] = prepared_set(Path(tmp), config)
            return loader_part(state["videos"], state["facts"], config)

        def data_wait() -> dict:
            if "videos" not in state:
                raise RuntimeError("the loader part wrote no videos to read")
            return data_wait_part(state["videos"], state["facts"]["prepared"], config, device)

        record["loader"] = attempt(loader, budget, 0, config.loader_cap_s)
        save(f"loader {record['loader']}")
        if cuda:
            train_rows("eager")
            record["data_wait"] = attempt(data_wait, budget, need["data_wait"])
            save(f"data_wait {record['data_wait']}")
            train_rows("compiled")  # last: the compiles are what to drop when time runs short
    save(f"wrote {out}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_results/gpu_check.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code path, not speed")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="time budget of the whole run (default: 450, quick: 180)"
    )
    args = parser.parse_args(argv)
    record = check(args.out, args.quick, args.budget_s)
    return 1 if has_error(record) else 0  # the JSON is written either way


if __name__ == "__main__":
    sys.exit(main())
