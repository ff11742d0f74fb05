"""Loader soak: the memory of the main process and of every worker stays flat over thousands of clips.

A training run pushes millions of clips through the same worker processes; memory that grows per clip or
per file ends, days in, with the OOM killer.  The culprits this catches:

* decord readers kept open in a worker (a reader cache): each keeps its decoder, and decord's decode thread
  goes on buffering frames after ``get_batch`` (dmlc/decord#208, #197), so memory grows with every file
  opened and every clip read.  `open_video` opens a reader per clip and frees it with the clip.
* decoded frames or batches held on to by accident (a cache keyed by index, a list of outputs).

Method: the synthetic demo set (Kinetics layout: H.264 MP4, at a frame size decord decodes itself, so its
readers are the ones exercised), `ClipDataset` in training mode and `build_loader` with persistent workers,
epoch after epoch.  Every ``sample_every`` batches the resident set (RSS) of the main process and of each
worker (psutil children) is sampled.  The first ``warmup_batches`` are warm-up: workers start, import the
decoders, and the allocators reach their working size; they cover a fraction of the files, so a cache that
grows per file is still growing after it.  Growth is the median of the last ``window`` samples minus the
median of the first ``window`` samples after warm-up (medians: one sample caught mid-batch does not decide),
for the sum over processes and for each one; the least-squares slope is reported per 1000 clips.  The sum
counts pages that forked workers share with the main process once per process: only its change is used.

glibc's malloc raises its mmap threshold each time a large block is freed, so a worker's frame buffers
soon come from the heap, which fragments: each worker's RSS then climbs by tens of MB over the first
epochs and levels off (measured: +50 to +75 MiB per worker over ~500 clips of 120×160 video, flat for the
next 2500).  Bounded, so not a leak, but it would hide one in a short run.  The soak pins the threshold at
glibc's default 128 KiB in the main process before the workers fork (they inherit it): what grows after
warm-up is then memory held, not heap fragmentation.  (Where glibc is missing, nothing is pinned and the
config says so.)
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

from iresvid.benchmarks.common import MIB, goal
from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.datasets import ClipDataset
from iresvid.data.loader import build_loader
from iresvid.data.synthetic import DEMO_CLASSES, make_demo_data

SEED = 0
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@dataclass(frozen=True)
class SoakConfig:
    classes: int
    videos_per_class: int
    video_frames: int
    size: tuple[int, int]  # (H, W) of the videos
    num_frames: int
    frame_stride: int
    short_side: int
    batch: int
    workers: int
    epochs: int
    warmup_batches: int
    sample_every: int  # batches
    window: int  # samples averaged at each end
    limit_mib: float  # goal: growth of the summed RSS after warm-up
    note: str
    # decord, not the default PyAV: its readers are where the known leak lives (PyAV's bounded memory is
    # tests/test_video_io.py::test_memory_stays_bounded, on every backend).
    backend: str = "decord"


def config_for(quick: bool) -> SoakConfig:
    # Frame sizes decord 3.4 decodes itself (it fails on some, e.g. a side of 32, 48 or 144 px, and the
    # loader then reads with PyAV): the decord readers are the ones a leak is expected from.
    if quick:
        return SoakConfig(
            classes=8, videos_per_class=4, video_frames=32, size=(96, 128), num_frames=8, frame_stride=2,
            short_side=96, batch=8, workers=2, epochs=12, warmup_batches=4, sample_every=2, window=5,
            limit_mib=12.0, note="quick: a few hundred clips",
        )  # fmt: skip
    return SoakConfig(
        classes=8, videos_per_class=8, video_frames=64, size=(120, 160), num_frames=8, frame_stride=4,
        short_side=112, batch=8, workers=3, epochs=40, warmup_batches=8, sample_every=4, window=8,
        limit_mib=16.0, note="thousands of clips",
    )  # fmt: skip


def pin_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold at ``size`` (see the module docstring); False where that is impossible."""
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


def make_videos(root: Path, config: SoakConfig) -> Annotations:
    """The demo set in the Kinetics layout; every video of both splits is read."""
    names = sorted(DEMO_CLASSES)[: config.classes]
    make_demo_data(
        root,
        layout="kinetics",
        classes=names,
        videos_per_class=config.videos_per_class,
        num_frames=config.video_frames,
        size=config.size,
    )
    records = [VideoRecord(p, names.index(p.parent.name), p.stem) for p in sorted(root.rglob("*.mp4"))]
    return Annotations(records, names, [], f"soak videos in {root}")


def rss_by_process() -> dict[int, int]:
    """Resident bytes of this process and of each of its children, by pid (children may come and go)."""
    me = psutil.Process()
    sizes = {me.pid: me.memory_info().rss}
    for child in me.children(recursive=True):
        try:
            sizes[child.pid] = child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return sizes


def growth(values: list[float], warm: int, window: int) -> float:
    """Median of the last ``window`` values minus median of the first ``window`` after ``warm``."""
    measured = values[warm:]
    return statistics.median(measured[-window:]) - statistics.median(measured[:window])


def soak(annotations: Annotations, config: SoakConfig) -> dict:
    """Iterate the loader over ``annotations`` as ``config`` says, sampling RSS (`run` without writing)."""
    dataset = ClipDataset(
        annotations,
        num_frames=config.num_frames,
        frame_stride=config.frame_stride,
        short_side=config.short_side,
        backend=config.backend,
        seed=SEED,
    )
    loader = build_loader(
        dataset, batch_size=config.batch, shuffle=True, seed=SEED, num_workers=config.workers
    )
    samples: list[dict[int, int]] = []
    clips_at: list[int] = []
    clips, batches, start = 0, 0, time.perf_counter()
    for epoch in range(config.epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            clips += len(batch["label"])
            batches += 1
            if batches % config.sample_every == 0:
                samples.append(rss_by_process())
                clips_at.append(clips)
    elapsed = time.perf_counter() - start
    del loader  # stops the persistent workers

    warm = config.warmup_batches // config.sample_every
    if len(samples) - warm < 2 * config.window:
        raise ValueError(f"{len(samples)} samples: too few after warm-up for two windows of {config.window}")
    pids = [pid for pid in samples[0] if all(pid in s for s in samples)]  # processes alive throughout
    roles = {pid: "main" if i == 0 else f"worker {i - 1}" for i, pid in enumerate(pids)}
    series = {roles[pid]: [s[pid] / MIB for s in samples] for pid in pids}
    series["sum"] = [sum(s[pid] for pid in pids) / MIB for s in samples]
    x = np.array(clips_at[warm:], dtype=float)
    results = []
    for name, values in series.items():
        slope = float(np.polyfit(x, np.array(values[warm:]), 1)[0]) * 1000 if len(x) > 1 else 0.0
        results.append(
            {
                "process": name,
                "rss_warm_mib": values[warm],
                "rss_end_mib": values[-1],
                "rss_max_mib": max(values[warm:]),
                "growth_mib": growth(values, warm, config.window),
                "slope_mib_per_1000_clips": slope,
                "rss_mib": values,
            }
        )
    total = results[-1]["growth_mib"]
    return {
        "results": results,
        "goals": [goal("RSS growth after warm-up, main + workers, MiB", total, config.limit_mib)],
        "details": {
            "videos": len(annotations.records),
            "clips": clips,
            "clips_after_warmup": clips - clips_at[warm] if warm < len(clips_at) else 0,
            "clips_per_s": clips / elapsed,
            "samples": len(samples),
            "clips_at_samples": clips_at,
            "processes_sampled": len(pids),
        },
    }


def run(args: argparse.Namespace) -> dict:
    config = config_for(args.quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the data benchmark: the main process only collates
    pinned = pin_mmap_threshold()
    try:
        with tempfile.TemporaryDirectory(prefix="iresvid-bench-soak-") as tmp:
            start = time.perf_counter()
            annotations = make_videos(Path(tmp), config)
            generation_s = time.perf_counter() - start
            record = soak(annotations, config)
    finally:
        torch.set_num_threads(threads)
    details = record.pop("details")
    record["config"] = asdict(config) | details
    record["config"] |= {"generation_s": generation_s, "mmap_threshold_pinned": pinned, "device": "CPU work"}
    return record
