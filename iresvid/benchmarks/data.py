"""Data-loading speed: our clip loader against raw decord and pytorchvideo's Kinetics loader, same files.

Every candidate reads the same generated Kinetics-style videos (10 s, 320×240, 25 fps H.264 MP4, half of them
with B-frames) and produces 8×8 clips (8 frames, stride 8) whose short side is resized to 256:

* raw decord: ``decord.VideoReader(path, num_threads=1).get_batch(indices)`` in this process, on exactly the
  frame indices our dataset draws, with a fresh reader per clip: the ceiling, since a loader opens a file
  per clip.  Its time spent opening is recorded too, so decoding alone is reported as well.  (A reader kept
  open is no faster: decord's ``get_batch`` on a reused reader measured 2× slower than on a fresh one.)
* ours: `ClipDataset` + `build_loader` (open, sample, decode, uint8 resize, collate), N workers.
* pytorchvideo: ``LabeledVideoDataset`` (what ``Kinetics`` builds from a list) with ``decoder="decord"``,
  ``RandomSampler``, ``make_clip_sampler("random", 64 frames / fps)``, ``decode_audio=False`` and a transform
  that keeps every 8th frame of the 64-frame window (the same 8×8 sampling) and applies pytorchvideo's own
  ``ShortSideScale(256)``, in a DataLoader with the same workers, batch size, prefetch and persistent
  workers.  Its decoder keeps its defaults: FFmpeg picks the thread count, all 64 frames come out float32.
  pytorchvideo 0.1.5's transforms import ``torchvision.transforms.functional_tensor``, which torchvision
  renamed ``_functional_tensor``: the benchmark aliases the old name in this process's ``sys.modules``.

One timed call is one epoch, in which every file is listed ``listings`` times (so worker start-up and the
pipeline's fill and drain weigh less).  Epochs are timed interleaved, after a warm-up epoch that starts the
persistent workers; ours and raw decord read the same clips epoch by epoch, pytorchvideo draws its own from
the same distribution.  Opening alone is timed as well: decord's open, and ``open_video`` with a cold and a
warm per-process check cache, which is what a first epoch and the later ones pay.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

from iresvid.benchmarks.common import Measurement, measure_interleaved
from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.datasets import ClipDataset, sample_generator
from iresvid.data.loader import ShardedSampler, build_loader
from iresvid.data.sampling import random_clip
from iresvid.data.synthetic import DEMO_CLASSES, make_demo_data
from iresvid.data.video_io import clear_open_cache, open_video

RAW = "raw decord, open per clip"
RAW_DECODE = "raw decord, decoding only"
OURS = "ours: ClipDataset + build_loader"
PEER = "pytorchvideo: LabeledVideoDataset"
OPENS = {"decord": "decord.VideoReader", "cold": "open_video, cold cache", "cached": "open_video, cached"}
SEED = 0
CPU = torch.device("cpu")

Plan = Callable[[int], list[tuple[str, list[int]]]]  # epoch -> the (path, frame indices) read in it


@dataclass(frozen=True)
class DataConfig:
    classes: int
    videos_per_class: int
    seconds: float
    fps: int
    size: tuple[int, int]  # (H, W) of the videos
    num_frames: int
    frame_stride: int
    short_side: int
    batch: int
    listings: int  # times each file is listed in an epoch
    workers: tuple[int, ...]
    warmup: int
    repeats: int
    note: str


def config_for(quick: bool) -> DataConfig:
    if quick:
        return DataConfig(2, 2, 3.0, 25, (48, 64), 8, 8, 32, 2, 1, (0, 1), 1, 1, "quick: the code path only")
    return DataConfig(8, 2, 10.0, 25, (240, 320), 8, 8, 256, 8, 2, (0, 1, 2), 1, 3, "Kinetics-like 8x8 clips")


def goal_at_least(description: str, value: float, limit: float) -> dict:
    """A goal entry of the result JSON: ``value >= limit``."""
    return {"goal": f"{description} >= {limit:g}", "value": value, "met": bool(value >= limit)}


def make_videos(root: Path, config: DataConfig) -> tuple[Annotations, float]:
    """Write the demo Kinetics layout, some classes per core (rendering dominates); returns all its videos."""
    names = sorted(DEMO_CLASSES)[: config.classes]
    parts = max(1, min(os.cpu_count() or 1, len(names)))
    start = time.perf_counter()
    with ProcessPoolExecutor(parts) as pool:
        jobs = [
            pool.submit(
                make_demo_data,
                root / f"part{k}",
                layout="kinetics",
                classes=names[k::parts],
                videos_per_class=config.videos_per_class,
                num_frames=round(config.seconds * config.fps),
                size=config.size,
                fps=config.fps,
            )
            for k in range(parts)
        ]
        for job in jobs:
            job.result()
    records = [VideoRecord(p, names.index(p.parent.name), p.stem) for p in sorted(root.rglob("*.mp4"))]
    return Annotations(records, names, [], f"benchmark videos in {root}"), time.perf_counter() - start


class EveryNth:
    """Frames ``0, stride, …`` (``count`` of them) of a (C, T, H, W) window: our sampling, in pytorchvideo."""

    def __init__(self, count: int, stride: int):
        self.stop, self.stride = (count - 1) * stride + 1, stride

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        return video[:, : self.stop : self.stride]


def pytorchvideo_dataset(records: Sequence[VideoRecord], config: DataConfig) -> IterableDataset:
    import torchvision.transforms._functional_tensor as functional_tensor
    from torchvision.transforms import Compose

    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional_tensor)
    with warnings.catch_warnings():  # its torch.jit.script_method use is deprecated: noise, not news
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler
        from pytorchvideo.transforms import ApplyTransformToKey, ShortSideScale

    transform = Compose([EveryNth(config.num_frames, config.frame_stride), ShortSideScale(config.short_side)])
    return LabeledVideoDataset(
        [(str(r.path), {"label": r.label}) for r in records],
        make_clip_sampler("random", config.num_frames * config.frame_stride / config.fps),
        video_sampler=RandomSampler,
        transform=ApplyTransformToKey("video", transform),
        decode_audio=False,
        decoder="decord",
    )


def clip_plan(dataset: ClipDataset, num_frames: dict[Path, int]) -> Plan:
    """What our loader reads in an epoch, in its order: `ClipDataset`'s draw replayed, without decoding."""
    sampler = ShardedSampler(len(dataset), shuffle=True, seed=SEED)

    def plan(epoch: int) -> list[tuple[str, list[int]]]:
        sampler.set_epoch(epoch)
        clips = []
        for index, _ in sampler:
            path = dataset.records[index].path
            generator = sample_generator(dataset.seed, epoch, index)
            indices = random_clip(
                num_frames[path], dataset.num_frames, dataset.frame_stride, generator=generator
            )
            clips.append((str(path), indices))
        return clips

    return plan


class RawDecord:
    """decord alone on the clips of ``plan(epoch)``, a fresh reader per clip; one epoch per call.

    ``decode_s`` collects each call's time minus its time spent opening readers.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.epochs = itertools.count()
        self.decode_s: list[float] = []

    def __call__(self) -> None:
        import decord

        start, opening = time.perf_counter(), 0.0
        with decord.bridge.use_torch():  # zero-copy output, whatever bridge pytorchvideo's import set
            for path, indices in self.plan(next(self.epochs)):
                opened = time.perf_counter()
                reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
                opening += time.perf_counter() - opened
                reader.get_batch(indices)
        self.decode_s.append(time.perf_counter() - start - opening)


def epoch_of(loader: DataLoader, expected: int) -> Callable[[], None]:
    """One epoch of ``loader`` per call (the next epoch each time), checked to deliver ``expected`` clips."""
    epochs = itertools.count()

    def run_epoch() -> None:
        if isinstance(loader.sampler, ShardedSampler):
            loader.sampler.set_epoch(next(epochs))
        clips = sum(len(batch["label"]) for batch in loader)
        if clips != expected:
            raise RuntimeError(f"the loader delivered {clips} clips in an epoch, expected {expected}")

    return run_epoch


def open_each(paths: Sequence[Path], how: str) -> Callable[[], None]:
    """Open and close every file once: with decord alone, or with ``open_video`` (cold or cached check)."""
    import decord

    def run() -> None:
        if how == "cold":
            clear_open_cache()  # then every file of the call is checked, and cached for the next call
        for path in paths:
            if how == "decord":
                decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            else:
                open_video(path, "decord").close()

    return run


def loader_row(name: str, workers: int, clips: int, m: Measurement) -> dict:
    stats = m.as_dict()
    clips_per_s = clips / m.median_s
    return {
        "loader": name,
        "workers": workers,
        "clips_per_s": clips_per_s,
        "clips_per_s_per_process": clips_per_s / max(workers, 1),
        "epoch_ms": stats.pop("median_ms"),
    } | stats


def measure(annotations: Annotations, config: DataConfig) -> dict:
    """Time every candidate on the videos of ``annotations`` (`run` without writing them)."""
    files = [r.path for r in annotations.records]
    num_frames = {}
    for path in files:
        with open_video(path, "decord") as reader:
            num_frames[path] = reader.num_frames
    repeat = {"warmup": config.warmup, "repeats": config.repeats}
    opens = measure_interleaved({how: open_each(files, how) for how in OPENS}, CPU, **repeat)

    listed = Annotations(annotations.records * config.listings, annotations.classes, [], annotations.source)
    clips = len(listed.records)
    dataset = ClipDataset(
        listed,
        num_frames=config.num_frames,
        frame_stride=config.frame_stride,
        short_side=config.short_side,
        seed=SEED,
    )
    raw = RawDecord(clip_plan(dataset, num_frames))
    peer_dataset = pytorchvideo_dataset(listed.records, config)
    candidates: dict[tuple[str, int], Callable[[], None]] = {(RAW, 0): raw}
    for w in config.workers:
        ours = build_loader(dataset, batch_size=config.batch, shuffle=True, seed=SEED, num_workers=w)
        # prefetch_factor stays the default, 2, as in build_loader.
        peer = DataLoader(peer_dataset, batch_size=config.batch, num_workers=w, persistent_workers=w > 0)
        candidates[OURS, w] = epoch_of(ours, clips)
        candidates[PEER, w] = epoch_of(peer, clips)
    measured = measure_interleaved(
        {f"{name}, workers={w}": fn for (name, w), fn in candidates.items()}, CPU, **repeat
    )
    keys = list(candidates)
    del candidates, ours, peer  # stops the persistent workers
    timings = {(name, w): measured[f"{name}, workers={w}"] for name, w in keys}
    speed = {key: clips / m.median_s for key, m in timings.items()}
    decode_s = statistics.median(raw.decode_s[1:] or raw.decode_s)  # the first call warmed up
    decoding_speed = clips / decode_s
    open_ms = {how: 1000 * m.median_s / len(files) for how, m in opens.items()}

    results = [loader_row(name, w, clips, m) for (name, w), m in timings.items()]
    decoding = {
        "loader": RAW_DECODE,
        "workers": 0,
        "clips_per_s": decoding_speed,
        "clips_per_s_per_process": decoding_speed,
        "epoch_ms": 1000 * decode_s,
    }
    results.insert(1, decoding)
    results += [{"loader": f"open only: {OPENS[how]}", "open_ms_per_file": ms} for how, ms in open_ms.items()]
    ratios = {
        "open_video cold / decord open": open_ms["cold"] / open_ms["decord"],
        "open_video cached / decord open": open_ms["cached"] / open_ms["decord"],
    }
    goals = []
    for w in config.workers:
        per_process = speed[OURS, w] / max(w, 1)
        vs_peer, vs_raw = speed[OURS, w] / speed[PEER, w], per_process / speed[RAW, 0]
        ratios[f"ours / pytorchvideo, workers={w}"] = vs_peer
        ratios[f"ours per process / raw decord, workers={w}"] = vs_raw
        ratios[f"ours per process / raw decord decoding only, workers={w}"] = per_process / decoding_speed
        goals.append(goal_at_least(f"clips/s ours / pytorchvideo, workers={w}", vs_peer, 2))
        if w < (os.cpu_count() or 1):
            goals.append(goal_at_least(f"clips/s per process ours / raw decord, workers={w}", vs_raw, 0.9))
    details = {
        "videos": len(files),
        "video_frames": sorted(set(num_frames.values())),
        "clips_per_epoch": clips,
        "output": f"{config.num_frames} frames, short side {config.short_side}: uint8 (ours), float32 (peer)",
        "order": "interleaved round-robin over candidates, one epoch per call; ratios are of median times",
        "per_process": "clips/s divided by the workers (by 1 for workers=0, where the main process loads)",
        "per_process_goal": "checked where workers < cpu_count: with more, the workers share cores with the "
        "main process (and anything else running), and the number measures the machine, not the loader",
        "peak_mem": "main process only; workers are separate processes",
        "device": "CPU work: --device does not apply",
    }
    return {"config": asdict(config) | details, "results": results, "ratios": ratios, "goals": goals}


def run(args: argparse.Namespace) -> dict:
    config = config_for(args.quick)
    threads = torch.get_num_threads()
    # One torch thread in every loading process, as torch gives its DataLoader workers: with more, the
    # main process's idle OpenMP threads spin after each resize and take the decoder's core (measured:
    # 25% fewer clips/s at workers=0 with 2 threads on 2 busy cores).
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="iresvid-bench-data-") as tmp:
            annotations, generation_s = make_videos(Path(tmp), config)
            record = measure(annotations, config)
    finally:
        torch.set_num_threads(threads)
    record["config"] |= {"generation_s": generation_s, "torch_threads": 1}
    return record
