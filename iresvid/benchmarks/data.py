"""Data-loading speed: our clip loader against raw decord and pytorchvideo's, on several kinds of video file.

Each FILE SET is a kind of video a user trains on; every set is generated, checked and timed on its own,
with all candidates interleaved, and gets its own rows, ratios and goals (named ``<set>: …``):

* ``short_gop_320x240``: the demo's 10 s 320×240 H.264 (the synthetic motion classes, exactly the files
  `make_demo_data` writes), GOP 12, every other video with 2 B-frames: short GOPs make every clip cheap to
  reach.
* ``long_gop_bframes_340x256``: a prepared Kinetics copy (short side 256): GOP 250, so a 10 s 25 fps video
  is one GOP and a clip late in it means decoding nearly the whole file, with 2 or 3 B-frames (alternating)
  that store packets out of display order.
* ``long_gop_bframes_1280x720``: the same at 1280×720, a raw download; 4 videos listed once an epoch, as
  each clip decodes up to 250 720p frames.
* ``long_gop_no_bframes_340x256``: long GOP without B-frames: every frame is a reference, so no decoder can
  skip any on its way to a clip.

The long-GOP sets show a panning texture with a square crossing it and a little sensor noise (`pan_frames`):
motion everywhere, so predicted frames carry real motion vectors and residuals, and cheap enough to render
at 720p.  Before timing, every file's packets are checked to hold what its set promises (`check_traps`):
the frame count, keyframes exactly every GOP, and B-frame runs as long as requested (packets behind the
latest reference in decode order) — so a set never silently times easier files than its name says.

Every candidate produces 8×8 clips (8 frames, stride 8) whose short side is resized to 256 (at 340×256 our
resize is a no-op, pytorchvideo's ``ShortSideScale`` still resamples: each library's own behaviour):

* raw decord: ``decord.VideoReader(path, num_threads=1).get_batch(indices)`` in this process, on exactly the
  frame indices our dataset draws, with a fresh reader per clip: the ceiling, since a loader opens a file
  per clip.  Its time spent opening is recorded too, so decoding alone is reported as well.  (A reader kept
  open is no faster: decord's ``get_batch`` on a reused reader measured 2× slower than on a fresh one.)
* ours: `ClipDataset` + `build_loader` (open, sample, decode, uint8 resize, collate), N workers, on the
  default backend: PyAV's fast path (seek to the key frame, skip the non-reference frames no returned frame
  needs, every decode pass checked against the index).
* ours on decord: the same with ``backend="decord"`` (decord's ``get_batch`` on files its probe admitted).
* pytorchvideo: ``LabeledVideoDataset`` (what ``Kinetics`` builds from a list) with ``decoder="decord"``,
  ``RandomSampler``, ``make_clip_sampler("random", 64 frames / fps)``, ``decode_audio=False`` and a transform
  that keeps every 8th frame of the 64-frame window (the same 8×8 sampling) and applies pytorchvideo's own
  ``ShortSideScale(256)``, in a DataLoader with the same workers, batch size, prefetch and persistent
  workers.  Its decoder keeps its defaults: FFmpeg picks the thread count, all 64 frames come out float32.
  pytorchvideo 0.1.5's transforms import ``torchvision.transforms.functional_tensor``, which torchvision
  renamed ``_functional_tensor``: the benchmark aliases the old name in this process's ``sys.modules``.

One timed call is one epoch, in which every file is listed ``listings`` times (so worker start-up and the
pipeline's fill and drain weigh less).  Epochs are timed interleaved, after a warm-up epoch that starts the
persistent workers; ours (both backends) and raw decord read the same clips epoch by epoch, pytorchvideo
draws its own from the same distribution.  Opening alone is timed as well: decord's open, and ``open_video``
with a cold and a warm per-process check cache, which is what a first epoch and the later ones pay: their
difference is what the decord check costs per file.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

from iresvid.benchmarks.common import Measurement, measure_interleaved
from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.datasets import ClipDataset, sample_generator
from iresvid.data.encode import write_video
from iresvid.data.loader import ShardedSampler, build_loader
from iresvid.data.sampling import random_clip
from iresvid.data.synthetic import DEMO_CLASSES, render_clip, video_rngs
from iresvid.data.video_io import clear_open_cache, open_video

RAW = "raw decord, open per clip"
RAW_DECODE = "raw decord, decoding only"
OURS = "ours: ClipDataset + build_loader"  # the default backend: PyAV's checked fast path
OURS_DECORD = "ours on decord: ClipDataset(backend=decord)"
PEER = "pytorchvideo: LabeledVideoDataset"
LOADERS = (OURS, OURS_DECORD, PEER)  # the candidates timed at every worker count
OPENS = {
    "decord": "decord.VideoReader",
    "cold": "open_video decord, cold cache",
    "cached": "open_video decord, cached",
    "pyav cold": "open_video pyav, cold cache",
    "pyav cached": "open_video pyav, cached",
}
CLASSES = tuple(sorted(DEMO_CLASSES))  # labels only matter to the collate, except for the demo's content
SEED = 0
CPU = torch.device("cpu")

Plan = Callable[[int], list[tuple[str, list[int]]]]  # epoch -> the (path, frame indices) read in it


@dataclass(frozen=True)
class FileSet:
    """One kind of video: how many, their size and encoding, and how an epoch lists them."""

    name: str
    content: str  # "demo": the demo's motion classes (`render_clip`); "pan": `pan_frames`
    videos: int
    size: tuple[int, int]  # (H, W)
    gop: int  # keyframe interval, in frames
    bframes: tuple[int, ...]  # video i has bframes[i % len(bframes)] consecutive B-frames
    crf: int
    listings: int  # times each file is listed in an epoch
    batch: int  # small enough that every worker of the largest count gets batches in an epoch


@dataclass(frozen=True)
class DataConfig:
    seconds: float
    fps: int
    num_frames: int
    frame_stride: int
    short_side: int
    workers: tuple[int, ...]
    warmup: int
    repeats: int
    sets: tuple[FileSet, ...]
    note: str


def config_for(quick: bool) -> DataConfig:
    if quick:
        # Tiny frames, a few videos and one repeat: every set and candidate runs, in seconds.  decord 3.4
        # fails on some small sizes ("size must match": 32x48, 96x96); these ones it reads.
        sets = (
            FileSet("short_gop_320x240", "demo", 4, (48, 64), 12, (0, 2), 18, 1, 2),
            FileSet("long_gop_bframes_340x256", "pan", 4, (48, 64), 250, (2, 3), 21, 1, 2),
            FileSet("long_gop_bframes_1280x720", "pan", 2, (72, 128), 250, (2, 3), 21, 1, 2),
            FileSet("long_gop_no_bframes_340x256", "pan", 4, (48, 64), 250, (0,), 21, 1, 2),
        )
        return DataConfig(3.0, 25, 8, 8, 32, (0, 1), 1, 1, sets, "quick: the code path only")
    sets = (
        # Today's set, byte for byte what make_demo_data's Kinetics layout writes (crf 18, GOP 12): 2 videos
        # per class, the second with B-frames.
        FileSet("short_gop_320x240", "demo", 16, (240, 320), 12, (0, 2), 18, 2, 8),
        # crf 21 gives the pan about 400 kbps at 340x256 and 2.7 Mbps at 720p: the bitrates of a prepared
        # Kinetics copy (~130 GB for 240k 10 s videos) and of a 720p H.264 download.  Lower bitrates would
        # flatter every decoder alike, since entropy decoding scales with the bits.
        FileSet("long_gop_bframes_340x256", "pan", 8, (256, 340), 250, (2, 3), 21, 2, 4),
        # Each 720p clip decodes up to 250 frames (~0.7 s on one core): 4 videos listed once keep the set's
        # 10 candidates x 5 epochs near 2.5 minutes; batch 1 still gives 2 workers 2 batches each.
        FileSet("long_gop_bframes_1280x720", "pan", 4, (720, 1280), 250, (2, 3), 21, 1, 1),
        FileSet("long_gop_no_bframes_340x256", "pan", 8, (256, 340), 250, (0,), 21, 2, 4),
    )
    return DataConfig(10.0, 25, 8, 8, 256, (0, 1, 2), 1, 3, sets, "Kinetics-like 8x8 clips")


def goal_at_least(description: str, value: float, limit: float) -> dict:
    """A goal entry of the result JSON: ``value >= limit``."""
    return {"goal": f"{description} >= {limit:g}", "value": value, "met": bool(value >= limit)}


def pan_frames(rng: np.random.Generator, num_frames: int, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """A camera panning over a smooth texture while a textured square crosses it: uint8 (H, W, 3) frames.

    Motion covers the whole frame, as in real footage, so predicted frames carry motion vectors everywhere;
    luma noise (a bank of 7 noise frames, cycled: 7 shares no factor with the GOPs or B-frame runs) leaves
    them residuals to code.  The pan's speed is a fraction of the frame per frame, so a 1280×720 video moves
    like its 340×256 copy.  Frames are yielded one by one: 250 720p frames held at once would be 700 MB.
    Costs about 4 ms per 720p frame (slicing and one add), against 190 ms for `render_clip` (measured).
    """
    height, width = size
    # (dy, dx) per frame: the pan crosses half to 1.25 frames in 250 frames, in a random direction.
    step = rng.uniform(0.002, 0.005, 2) * np.array([height, width]) * rng.choice([-1, 1], 2)
    pad = np.ceil(np.abs(step) * num_frames).astype(int) + 1
    texture = _smooth_texture(rng, height + pad[0], width + pad[1])
    side = max(8, min(height, width) // 4)
    square = _smooth_texture(rng, side, side)
    noise = np.rint(rng.normal(0, 3.0, (7, height, width, 1))).astype(np.int16)
    for t in range(num_frames):
        # A negative step starts at the far edge of the padded texture and moves back.
        y, x = (int(t * abs(s)) if s > 0 else p - 1 - int(t * abs(s)) for s, p in zip(step, pad, strict=True))
        frame = texture[y : y + height, x : x + width].astype(np.int16)
        top = int((height - side) * (0.5 + 0.45 * math.sin(2 * math.pi * t / num_frames)))
        left = int((width - side) * t / (num_frames - 1))
        frame[top : top + side, left : left + side] = square
        frame += noise[t % len(noise)]
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _smooth_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Colour blobs about a tenth of the shorter side across, with fine grain: uint8 (height, width, 3)."""
    cells = max(2, min(height, width) // 10)
    shape = (math.ceil(height / cells) + 2, math.ceil(width / cells) + 2, 3)
    grid = rng.uniform(30, 225, shape).astype(np.float32)
    # Separable linear upsampling of the coarse grid, by gathering neighbours (no BLAS: a multi-threaded
    # OpenBLAS product hung for good in the video-writing workers in CI, its main thread spinning in
    # exec_blas while its one worker thread slept).
    low, weight = _interpolation(height, grid.shape[0])
    grid = grid[low] * (1 - weight)[:, None, None] + grid[low + 1] * weight[:, None, None]  # (H, cols, 3)
    low, weight = _interpolation(width, grid.shape[1])
    blobs = grid[:, low] * (1 - weight)[None, :, None] + grid[:, low + 1] * weight[None, :, None]
    grain = rng.normal(0, 10, (height, width, 1)).astype(np.float32)
    return np.clip(blobs + grain, 0, 255).astype(np.uint8)


def _interpolation(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation from a coarse grid of n_in samples onto n_out: each output's lower neighbour and
    the weight of the upper one."""
    position = np.linspace(0, n_in - 1, n_out)
    low = np.minimum(position.astype(int), n_in - 2)
    return low, (position - low).astype(np.float32)


def video_label(index: int) -> int:
    """Videos come two per class, in class order (as `make_demo_data` writes them: index 0, then 1)."""
    return index // 2 % len(CLASSES)


def write_set_video(path: Path, fileset: FileSet, index: int, num_frames: int, fps: int) -> float:
    """Render and encode video ``index`` of ``fileset`` to ``path``; returns the seconds it took."""
    start = time.perf_counter()
    name = CLASSES[video_label(index)]
    if fileset.content == "demo":
        # The within-class index make_demo_data would give this video, hence its exact pixels.
        within = index % 2 + 2 * (index // (2 * len(CLASSES)))
        frames = render_clip(name, video_rngs(SEED, name, within)[0], num_frames, fileset.size)
    else:
        seeds = np.random.SeedSequence([SEED, zlib.crc32(fileset.name.encode()), index])
        frames = pan_frames(np.random.default_rng(seeds), num_frames, fileset.size)
    bframes = fileset.bframes[index % len(fileset.bframes)]
    write_video(path, frames, fps=fps, bframes=bframes, gop_size=fileset.gop, crf=fileset.crf)
    return time.perf_counter() - start


def make_videos(root: Path, config: DataConfig) -> dict[str, tuple[Annotations, float]]:
    """Write every set's videos, one job per video on every core; returns each set's videos and seconds.

    Videos are listed in index order, which `check_traps` relies on.  A set's seconds are its jobs' times
    summed (CPU time, in effect), since the jobs of all sets run mixed.
    """
    num_frames = round(config.seconds * config.fps)
    jobs: dict[str, list] = {}
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        # Largest frames first, so the long 720p jobs do not end up last on one core.
        for fileset in sorted(config.sets, key=lambda s: -s.size[0] * s.size[1]):
            jobs[fileset.name] = []
            for index in range(fileset.videos):
                path = (
                    root / fileset.name / f"{index:03d}_{CLASSES[video_label(index)].replace(' ', '_')}.mp4"
                )
                job = pool.submit(write_set_video, path, fileset, index, num_frames, config.fps)
                jobs[fileset.name].append((path, job))
    sets = {}
    for fileset in config.sets:
        records = [VideoRecord(p, video_label(i), p.stem) for i, (p, _) in enumerate(jobs[fileset.name])]
        annotations = Annotations(records, list(CLASSES), [], f"{fileset.name} videos in {root}")
        sets[fileset.name] = annotations, sum(job.result() for _, job in jobs[fileset.name])
    return sets


def probe_packets(path: Path) -> dict:
    """What the packets of ``path``'s video stream say, without decoding: the traps the set should hold.

    ``keyframes`` are display positions (rank of the pts); ``bframes_run`` is the longest run of packets
    whose pts is behind the latest one before them in decode order, i.e. of consecutive B-frames.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None]
    rank = {pts: i for i, pts in enumerate(sorted(pts for pts, _ in packets))}
    run = longest = 0
    latest = -math.inf
    for pts, _ in packets:
        if pts < latest:
            run += 1
            longest = max(longest, run)
        else:
            run, latest = 0, pts
    return {
        "frames": len(packets),
        "keyframes": [rank[pts] for pts, key in packets if key],
        "bframes_run": longest,
        "bytes": path.stat().st_size,
    }


def check_traps(annotations: Annotations, fileset: FileSet, config: DataConfig) -> dict:
    """Raise unless every file has the frame count, keyframe spacing and B-frames its set promises.

    ``annotations`` lists the set's videos in index order, as `make_videos` returns them.
    Returns a summary for the record: the B-frame runs found, keyframe positions and bitrate.
    """
    frames = round(config.seconds * config.fps)
    expected_keys = list(range(0, frames, fileset.gop))
    probes, wrong = [], []
    for index, record in enumerate(annotations.records):
        probe = probe_packets(record.path)
        bframes = fileset.bframes[index % len(fileset.bframes)]
        if (
            probe["frames"] != frames
            or probe["keyframes"] != expected_keys
            or probe["bframes_run"] != bframes
        ):
            wrong.append(
                f"{record.path.name}: {probe['frames']} frames (expected {frames}), keyframes at "
                f"{probe['keyframes']} (expected {expected_keys}), B-frame runs up to {probe['bframes_run']} "
                f"(expected {bframes})"
            )
        probes.append(probe)
    if wrong:
        raise RuntimeError(f"{fileset.name}: the encoder did not write the set's traps: " + "; ".join(wrong))
    kbps = [8 * p["bytes"] / config.seconds / 1000 for p in probes]
    return {
        "frames": frames,
        "keyframes_at": expected_keys,
        "bframes_runs": sorted({p["bframes_run"] for p in probes}),
        "packets_reordered": sum(p["bframes_run"] > 0 for p in probes),
        "kbps_median": statistics.median(kbps),
    }


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


def loader_candidates(
    datasets: dict[str, ClipDataset],
    peer_dataset,
    workers: Sequence[int],
    batch: int,
    clips: int,
    peer_name: str = PEER,
) -> dict[tuple[str, int], Callable[[], None]]:
    """One epoch of each of our datasets' loaders and of pytorchvideo's, at every worker count."""
    candidates = {}
    for w in workers:
        for name, dataset in datasets.items():
            ours = build_loader(dataset, batch_size=batch, shuffle=True, seed=SEED, num_workers=w)
            candidates[name, w] = epoch_of(ours, clips)
        # prefetch_factor stays the default, 2, as in build_loader.
        peer = DataLoader(peer_dataset, batch_size=batch, num_workers=w, persistent_workers=w > 0)
        candidates[peer_name, w] = epoch_of(peer, clips)
    return candidates


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
    """Open and close every file once: with decord alone, or with ``open_video`` on decord or PyAV (cold: the
    first open of a file in a process, which indexes it and, on decord, probes it; cached: a later one)."""
    import decord

    backend = "pyav" if how.startswith("pyav") else "decord"

    def run() -> None:
        if how.endswith("cold"):
            clear_open_cache()  # then every file of the call is checked, and cached for the next call
        for path in paths:
            if how == "decord":
                decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            else:
                open_video(path, backend).close()

    return run


def loader_row(set_name: str, name: str, workers: int, clips: int, m: Measurement) -> dict:
    stats = m.as_dict()
    clips_per_s = clips / m.median_s
    return {
        "set": set_name,
        "loader": name,
        "workers": workers,
        "clips_per_s": clips_per_s,
        "clips_per_s_per_process": clips_per_s / max(workers, 1),
        "epoch_ms": stats.pop("median_ms"),
    } | stats


def measure_set(annotations: Annotations, fileset: FileSet, config: DataConfig) -> dict:
    """Time every candidate on one set's videos, interleaved; its rows, ratios, goals and details."""
    files = [r.path for r in annotations.records]
    num_frames = {}
    for path in files:
        with open_video(path, "decord") as reader:
            num_frames[path] = reader.num_frames
    repeat = {"warmup": config.warmup, "repeats": config.repeats}
    opens = measure_interleaved({how: open_each(files, how) for how in OPENS}, CPU, **repeat)

    listed = Annotations(annotations.records * fileset.listings, annotations.classes, [], annotations.source)
    clips = len(listed.records)
    datasets = {
        loader: ClipDataset(
            listed,
            num_frames=config.num_frames,
            frame_stride=config.frame_stride,
            short_side=config.short_side,
            backend=backend,
            seed=SEED,
        )
        for loader, backend in ((OURS, "pyav"), (OURS_DECORD, "decord"))
    }
    raw = RawDecord(clip_plan(datasets[OURS], num_frames))
    peer_dataset = pytorchvideo_dataset(listed.records, config)
    candidates: dict[tuple[str, int], Callable[[], None]] = {(RAW, 0): raw}
    candidates |= loader_candidates(datasets, peer_dataset, config.workers, fileset.batch, clips)
    measured = measure_interleaved(
        {f"{name}, workers={w}": fn for (name, w), fn in candidates.items()}, CPU, **repeat
    )
    keys = list(candidates)
    del candidates  # stops the persistent workers before the next set starts its own
    timings = {(name, w): measured[f"{name}, workers={w}"] for name, w in keys}
    speed = {key: clips / m.median_s for key, m in timings.items()}
    decode_s = statistics.median(raw.decode_s[1:] or raw.decode_s)  # the first call warmed up
    decoding_speed = clips / decode_s
    open_ms = {how: 1000 * m.median_s / len(files) for how, m in opens.items()}

    rows = [loader_row(fileset.name, name, w, clips, m) for (name, w), m in timings.items()]
    decoding = {
        "set": fileset.name,
        "loader": RAW_DECODE,
        "workers": 0,
        "clips_per_s": decoding_speed,
        "clips_per_s_per_process": decoding_speed,
        "epoch_ms": 1000 * decode_s,
    }
    rows.insert(1, decoding)
    rows += [
        {"set": fileset.name, "loader": f"open only: {OPENS[how]}", "open_ms_per_file": ms}
        for how, ms in open_ms.items()
    ]
    ratios = {
        "open_video decord cold / decord open": open_ms["cold"] / open_ms["decord"],
        "open_video decord cached / decord open": open_ms["cached"] / open_ms["decord"],
        "open_video pyav cold / decord open": open_ms["pyav cold"] / open_ms["decord"],
        "open_video pyav cached / decord open": open_ms["pyav cached"] / open_ms["decord"],
    }
    goals = []
    for w in config.workers:
        per_process = {loader: speed[loader, w] / max(w, 1) for loader in (OURS, OURS_DECORD)}
        vs_peer, vs_raw = speed[OURS, w] / speed[PEER, w], per_process[OURS] / speed[RAW, 0]
        ratios[f"ours / pytorchvideo, workers={w}"] = vs_peer
        ratios[f"ours per process / raw decord, workers={w}"] = vs_raw
        ratios[f"ours per process / raw decord decoding only, workers={w}"] = (
            per_process[OURS] / decoding_speed
        )
        ratios[f"ours / ours on decord, workers={w}"] = speed[OURS, w] / speed[OURS_DECORD, w]
        ratios[f"ours on decord / pytorchvideo, workers={w}"] = speed[OURS_DECORD, w] / speed[PEER, w]
        ratios[f"ours on decord per process / raw decord, workers={w}"] = (
            per_process[OURS_DECORD] / speed[RAW, 0]
        )
        goals.append(goal_at_least(f"{fileset.name}: clips/s ours / pytorchvideo, workers={w}", vs_peer, 2))
        if w < (os.cpu_count() or 1):
            description = f"{fileset.name}: clips/s per process ours / raw decord, workers={w}"
            goals.append(goal_at_least(description, vs_raw, 1))
    details = {
        "clips_per_epoch": clips,
        # What the first epoch pays per file for indexing it and probing decord, over decord's own open.
        "check_ms_per_file": open_ms["cold"] - open_ms["decord"],
        "pyav_index_ms_per_file": open_ms["pyav cold"] - open_ms["pyav cached"],
    }
    return {"rows": rows, "ratios": ratios, "goals": goals, "details": details}


def measure(sets: dict[str, tuple[Annotations, float]], config: DataConfig) -> dict:
    """Check and time every set of ``sets`` in turn (`run` without writing them); one record for all."""
    record: dict = {"sets": {}, "results": [], "ratios": {}, "goals": []}
    for fileset in config.sets:
        annotations, encode_s = sets[fileset.name]
        traps = check_traps(annotations, fileset, config)  # before timing: never time the wrong files
        measured = measure_set(annotations, fileset, config)
        record["sets"][fileset.name] = asdict(fileset) | traps | measured["details"] | {"encode_s": encode_s}
        record["results"] += measured["rows"]
        record["ratios"] |= {f"{fileset.name}: {name}": value for name, value in measured["ratios"].items()}
        record["goals"] += measured["goals"]
    details = {
        "output": f"{config.num_frames} frames, short side {config.short_side}: uint8 (ours), float32 (peer)",
        "order": "per set, interleaved round-robin over candidates, one epoch per call; ratios are of median "
        "times",
        "per_process": "clips/s divided by the workers (by 1 for workers=0, where the main process loads)",
        "per_process_goal": "checked where workers < cpu_count: with more, the workers share cores with the "
        "main process (and anything else running), and the number measures the machine, not the loader",
        "peak_mem": "main process only; workers are separate processes",
        "device": "CPU work: --device does not apply",
    }
    record["config"] = {k: v for k, v in asdict(config).items() if k != "sets"} | details
    return record


def run(args: argparse.Namespace) -> dict:
    config = config_for(args.quick)
    threads = torch.get_num_threads()
    # One torch thread in every loading process, as torch gives its DataLoader workers: with more, the
    # main process's idle OpenMP threads spin after each resize and take the decoder's core (measured:
    # 25% fewer clips/s at workers=0 with 2 threads on 2 busy cores).
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="iresvid-bench-data-") as tmp:
            start = time.perf_counter()
            sets = make_videos(Path(tmp), config)
            generation_s = time.perf_counter() - start
            record = measure(sets, config)
    finally:
        torch.set_num_threads(threads)
    record["config"] |= {"generation_s": generation_s, "torch_threads": 1}
    return record
