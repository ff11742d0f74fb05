"""Preparing a set: what `iresvid.data.prepare.prepare` costs, and what its copy saves the loader and an open.

The raw set is the data benchmark's ``long_gop_bframes_1280x720`` (`iresvid.benchmarks.data`: a 720p H.264
download, one GOP of 250 frames per 10 s video, 2 or 3 B-frames), written by its `make_videos`, checked by
its `check_traps` and laid out as ``src/train/<class>/<video>.mp4``.  `prepare` re-encodes it with its
defaults (short side 320, a key frame every 16 frames, no B-frames, crf 23, every frame at the same fps) to
``dst/train/<class>/<video>.mp4`` and writes ``dst/manifest.jsonl``; that copy, made once before timing, is
what the prepared loader and the opens read.

Prepare and the loaders are timed in one interleaved round (`measure_interleaved`: a warm-up call each,
then round-robin repeats):

* prepare: ``prepare(src, fresh_dst, workers=N)`` with N the cores this process may use, into a new folder
  every call (a re-run into the same folder would only check the finished files); checked to have encoded
  every video.  Reported as videos per minute and as the realtime factor per core: seconds of video
  prepared / wall seconds / N.
* ours on the prepared copy: `ClipDataset` + `build_loader` on the default backend (PyAV's checked fast
  path), its annotations from ``folder_per_class(dst / "train")`` with the manifest applied
  (``Manifest.find(dst).apply``), so every open takes the manifest's index instead of scanning the file.
* ours on the raw set: the same on ``folder_per_class(src / "train")``, without a manifest.
* pytorchvideo on the raw set: ``LabeledVideoDataset`` on decord, exactly as the data benchmark runs it
  (`iresvid.benchmarks.data.pytorchvideo_dataset`: a random 64-frame window, every 8th frame kept,
  ``ShortSideScale``, float32 out), in a DataLoader with the same workers and batch size, persistent workers.

All three loaders produce 8×8 clips (8 frames, stride 8) with the short side 256 (the data benchmark's
shape), at each worker count, with the same batch size, one epoch per timed call.  Our two loaders read
the same clips: the same video (by path under its root) and the same frame indices, epoch by epoch — checked
before timing by replaying both datasets' draws (`clip_plan`), which holds because prepare keeps every frame
and the frame rate.  pytorchvideo draws its own clips from the same distribution.

Opening alone is timed on the prepared files, each open with a cold per-process cache
(`clear_open_cache` before it), as a worker's first open of a file is: ``open_video(path, "pyav",
known=manifest.known_file(path))`` (the manifest lookup included, as `ClipDataset` does it per read) against
``decord.VideoReader(path, num_threads=1)``; for context ``open_video`` on PyAV without the manifest (the
demux scan and first-frame decode the manifest spares) and on decord with the manifest (its recorded
verdict instead of decord's probe; the backend that actually served is recorded).

Sizes: the full run uses 8 videos of 10 s (the data benchmark's 720p set has 4; 8 give each of prepare's
workers several videos), listed once an epoch, batch 1, loaders at 0 and 2 workers, one warm-up and 3
timed calls.  On 2 cores pytorchvideo's epochs dominate (about 1.2 s per 720p clip in one process), then
prepare (about 1.8 s per video per core, each of its 5 calls) and generation (about 9 s per video per
core): about 4 minutes in all (measured at load average 3).  Quick mode uses 4 tiny 3 s videos and one
repeat: the code path, in seconds.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from iresvid.benchmarks.common import Measurement, goal, measure_interleaved
from iresvid.benchmarks.data import (
    SEED,
    DataConfig,
    FileSet,
    check_traps,
    clip_plan,
    goal_at_least,
    loader_candidates,
    make_videos,
    pytorchvideo_dataset,
)
from iresvid.benchmarks.data import config_for as data_config_for
from iresvid.data.annotations import Annotations, folder_per_class
from iresvid.data.datasets import ClipDataset
from iresvid.data.manifest import Manifest, read_manifest
from iresvid.data.prepare import PrepareOptions, prepare
from iresvid.data.video_io import clear_open_cache, open_video

RAW_SET = "long_gop_bframes_1280x720"
PREPARED_SET = "prepared copy"
PREPARE = "prepare"
PREPARED = "ours on the prepared copy (manifest)"
RAW = "ours on the raw set"
PEER = "pytorchvideo on the raw set"
LOADERS = (PREPARED, RAW, PEER)
OPENS = {
    "decord": "decord.VideoReader",
    "pyav manifest": "open_video pyav + manifest, cold cache",
    "pyav": "open_video pyav without manifest, cold cache",
    "decord manifest": "open_video decord + manifest, cold cache",
}
CPU = torch.device("cpu")


@dataclass(frozen=True)
class PrepareBenchConfig:
    data: DataConfig  # the data benchmark's clip shape and repeats, its 720p set alone, the loaders' workers
    open_rounds: int  # times each file is opened in one timed call of the open candidates

    @property
    def fileset(self) -> FileSet:
        return self.data.sets[0]


def config_for(quick: bool) -> PrepareBenchConfig:
    data = data_config_for(quick)
    fileset = replace(next(s for s in data.sets if s.name == RAW_SET), videos=4 if quick else 8)
    if quick:
        return PrepareBenchConfig(replace(data, sets=(fileset,), workers=(0, 1)), 1)
    # Prepare always uses every core; the loaders run in the main process and with 2 workers.
    note = "720p long-GOP B-frame downloads, prepared with prepare's defaults"
    return PrepareBenchConfig(replace(data, sets=(fileset,), workers=(0, 2), note=note), 5)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_raw_set(root: Path, config: PrepareBenchConfig) -> tuple[Path, dict, float]:
    """Write and check the raw set, then move it to ``root/src/train/<class>/``: the layout prepare reads.

    Returns the source root, the traps' summary and the seconds generation took (summed over its jobs).
    """
    annotations, encode_s = make_videos(root / "generated", config.data)[config.fileset.name]
    traps = check_traps(annotations, config.fileset, config.data)  # never time easier files than promised
    src = root / "src"
    for record in annotations.records:
        target = src / "train" / annotations.classes[record.label] / record.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        record.path.rename(target)
    return src, traps, encode_s


class PrepareRuns:
    """``prepare(src, fresh folder, workers=...)`` per call; raises unless the call encoded every video."""

    def __init__(self, src: Path, scratch: Path, workers: int, videos: int):
        self.src, self.scratch, self.workers, self.videos = src, scratch, workers, videos
        self.runs = itertools.count()

    def __call__(self) -> None:
        dst = self.scratch / f"run-{next(self.runs)}"
        report = prepare(self.src, dst, workers=self.workers, progress=False)
        if report.encoded != self.videos or report.counts != {"ok": self.videos}:
            raise RuntimeError(f"prepare encoded {report.encoded} of {self.videos} videos: {report.counts}")


def open_each(paths: Sequence[Path], how: str, manifest: Manifest, rounds: int) -> Callable[[], None]:
    """Open and close every file ``rounds`` times: decord alone, or ``open_video`` with a cold cache each."""
    import decord

    backend = "decord" if how.startswith("decord") else "pyav"

    def run() -> None:
        for _ in range(rounds):
            for path in paths:
                if how == "decord":
                    decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
                    continue
                clear_open_cache()  # a worker's first open of this file
                known = manifest.known_file(path) if how.endswith("manifest") else None
                open_video(path, backend, known=known).close()

    return run


def check_same_clips(datasets: Sequence[tuple[ClipDataset, Path]], epochs: int) -> None:
    """Raise unless the datasets draw the same clips (video by path under its root, frame indices) in each of
    ``epochs``: the loaders compared then do the same work on differently encoded files."""
    plans = []
    for dataset, root in datasets:
        num_frames = {}
        for record in dataset.records:
            known = dataset.manifest.known_file(record.path) if dataset.manifest is not None else None
            with open_video(record.path, known=known) as reader:
                num_frames[record.path] = reader.num_frames
        plan = clip_plan(dataset, num_frames)
        plans.append([[(Path(p).relative_to(root), i) for p, i in plan(e)] for e in range(epochs)])
    if any(plan != plans[0] for plan in plans[1:]):
        raise RuntimeError("the prepared and raw datasets draw different clips: the frame counts differ")


def timing_row(candidate: str, files: str, workers: int, metrics: dict, m: Measurement) -> dict:
    return {"candidate": candidate, "files": files, "workers": workers, **metrics} | m.as_dict()


def measure(src: Path, scratch: Path, config: PrepareBenchConfig) -> dict:
    """Prepare the reference copy, check it, then time the opens and the interleaved round; the record."""
    fileset, data = config.fileset, config.data
    cores = usable_cores()
    start = time.perf_counter()
    dst = scratch / "prepared"
    prepare(src, dst, workers=cores, progress=False)
    cold_s = time.perf_counter() - start
    manifest = Manifest.find(dst)
    if manifest is None:
        raise RuntimeError(f"prepare wrote no manifest in {dst}")
    entries = list(read_manifest(dst / "manifest.jsonl").values())
    video_s = sum(e["duration"] for e in entries)

    raw = folder_per_class(src / "train")
    prepared = manifest.apply(folder_per_class(dst / "train"))
    repeat = {"warmup": data.warmup, "repeats": data.repeats}
    files = [r.path for r in prepared.records]
    opens = measure_interleaved(
        {how: open_each(files, how, manifest, config.open_rounds) for how in OPENS}, CPU, **repeat
    )
    with open_video(files[0], "decord", known=manifest.known_file(files[0])) as reader:
        decord_manifest_backend = reader.backend  # decord, unless the manifest says it misreads the file

    def listed(annotations: Annotations) -> Annotations:
        return replace(annotations, records=annotations.records * fileset.listings)

    clips = len(raw.records) * fileset.listings
    datasets = {
        name: ClipDataset(
            listed(annotations),
            num_frames=data.num_frames,
            frame_stride=data.frame_stride,
            short_side=data.short_side,
            seed=SEED,
        )
        for name, annotations in ((PREPARED, prepared), (RAW, raw))
    }
    # Every call of a candidate is the next epoch: the first, the warm-up ones, the repeats, the memory one.
    check_same_clips(
        [(datasets[PREPARED], dst / "train"), (datasets[RAW], src / "train")], data.warmup + data.repeats + 1
    )
    peer_dataset = pytorchvideo_dataset(listed(raw).records, data)
    candidates: dict[tuple[str, int], Callable[[], None]] = {
        (PREPARE, cores): PrepareRuns(src, scratch, cores, len(entries))
    }
    candidates |= loader_candidates(datasets, peer_dataset, data.workers, fileset.batch, clips, PEER)
    measured = measure_interleaved(
        {f"{name}, workers={w}": fn for (name, w), fn in candidates.items()}, CPU, **repeat
    )
    timings = {key: measured[f"{key[0]}, workers={key[1]}"] for key in candidates}

    prepare_s = timings[PREPARE, cores].median_s
    throughput = {
        "videos_per_min": 60 * len(entries) / prepare_s,
        "realtime_per_core": video_s / prepare_s / cores,
    }
    rows, speed = [], {}
    for (name, w), m in timings.items():
        if name == PREPARE:
            continue
        speed[name, w] = clips / m.median_s
        per_process = {"clips_per_s": speed[name, w], "clips_per_s_per_process": speed[name, w] / max(w, 1)}
        rows.append(timing_row(name, PREPARED_SET if name == PREPARED else RAW_SET, w, per_process, m))
    rows.append(timing_row(PREPARE, RAW_SET, cores, throughput, timings[PREPARE, cores]))
    open_ms = {how: 1000 * m.median_s / (len(files) * config.open_rounds) for how, m in opens.items()}
    rows += [
        {"candidate": f"open only: {OPENS[how]}", "files": PREPARED_SET, "open_ms_per_file": ms}
        for how, ms in open_ms.items()
    ]

    ratios, goals = {}, []
    for w in data.workers:
        vs_raw = speed[PREPARED, w] / speed[RAW, w]
        ratios[f"clips/s ours prepared / ours raw, workers={w}"] = vs_raw
        ratios[f"clips/s ours prepared / pytorchvideo raw, workers={w}"] = speed[PREPARED, w] / speed[PEER, w]
        goals.append(goal_at_least(f"clips/s ours prepared / ours raw, workers={w}", vs_raw, 4))
    for how in ("pyav manifest", "pyav", "decord manifest"):
        ratios[f"first open {OPENS[how]} / decord.VideoReader"] = open_ms[how] / open_ms["decord"]
    goals.append(
        goal(
            f"first open {OPENS['pyav manifest']} / decord.VideoReader",
            ratios[f"first open {OPENS['pyav manifest']} / decord.VideoReader"],
            1.1,
        )
    )
    return {
        "config": asdict(config)
        | {
            "prepare_options": asdict(PrepareOptions()),
            "output": f"{data.num_frames}x{data.frame_stride} clips, short side {data.short_side}: uint8 "
            "(ours), float32 (pytorchvideo)",
            "order": "prepare and every loader interleaved round-robin, one prepare run or epoch per call; "
            "the opens interleaved on their own; ratios are of median times",
            "device": "CPU work: --device does not apply",
        },
        "prepare": {
            "workers": cores,
            "videos": len(entries),
            "video_s": video_s,
            "wall_s": prepare_s,
            "first_run_wall_s": cold_s,  # the reference copy: process pool and imports started cold
            **throughput,
            "source_mb": sum(e["source"]["size"] for e in entries) / 1e6,
            "prepared_mb": sum(e["size"] for e in entries) / 1e6,
            "prepared_size": sorted({(e["height"], e["width"]) for e in entries}),
        },
        "clips_per_epoch": clips,
        "decord_manifest_backend": decord_manifest_backend,
        "results": rows,
        "ratios": ratios,
        "goals": goals,
    }


def run(args: argparse.Namespace) -> dict:
    config = config_for(args.quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one torch thread in every loading process, as in the data benchmark
    try:
        with tempfile.TemporaryDirectory(prefix="iresvid-bench-prepare-") as tmp:
            start = time.perf_counter()
            src, traps, encode_s = make_raw_set(Path(tmp), config)
            generation_s = time.perf_counter() - start
            record = measure(src, Path(tmp) / "scratch", config)
    finally:
        torch.set_num_threads(threads)
    record["raw_set"] = asdict(config.fileset) | traps | {"encode_s": encode_s}
    record["config"] |= {"generation_s": generation_s, "torch_threads": 1}
    return record
