"""Evaluation throughput: each video's clips read in one pass, against one open and seek per clip, same files.

The multi-view protocol (``num_clips`` uniform clips × ``num_crops`` crops per video, here 10 × 3) reads
each video ``num_clips`` times when every clip is its own read: each opens the file, seeks to the key frame
before the clip and decodes from there.  `ClipDataset` in evaluation mode reads a video's clips with one
open and one ``get_frames`` call, which decodes the union of their frames in one ascending pass.

Candidates, on the same generated Kinetics-style videos (H.264 MP4 from `make_demo_data`, every other one
with B-frames) and the same tiny model (so decoding, not the network, is what differs), with each installed
decoder backend (how much one pass saves depends on how the backend serves sparse sorted indices):

* before: `OpenPerClip`, the former reading kept here to measure against: every clip of a video is read with
  its own `open_video` (and its own seek), exactly as the former per-clip evaluation item did.
* after: `ClipDataset(mode="eval")` as shipped.

One timed call is a whole evaluation, `iresvid.engine.evaluate.evaluate` over the loader `build_eval_inputs`
would build (main-process loading, ``views_per_pass`` views per model pass).  Both candidates go through the
same batches, so the model sees the very same tensors: their logits must be identical, bit for bit, and
are compared after the timing (a difference fails the benchmark rather than reporting a speed of other
work).  The time each call spends in the loader is kept too: the reading alone, without the model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from iresvid.benchmarks.common import measure_interleaved
from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.datasets import ClipDataset
from iresvid.data.loader import build_loader
from iresvid.data.synthetic import DEMO_CLASSES, make_demo_data
from iresvid.data.transforms import EvalViews
from iresvid.data.video_io import list_backends
from iresvid.engine.build import eval_videos_per_batch
from iresvid.engine.evaluate import EvalResult, evaluate
from iresvid.models import create_model

BEFORE = "before: open + seek per clip"
AFTER = "after: one pass per video"
CPU = torch.device("cpu")


@dataclass(frozen=True)
class EvalConfig:
    classes: int
    videos_per_class: int
    video_frames: int
    fps: int
    size: tuple[int, int]  # (H, W) of the videos
    num_frames: int
    frame_stride: int
    num_clips: int
    num_crops: int
    test_size: int
    model: str
    width_scale: float
    views_per_pass: int
    backends: tuple[str, ...]
    warmup: int
    repeats: int
    note: str


def config_for(quick: bool) -> EvalConfig:
    protocol = dict(fps=25, num_clips=10, num_crops=3, model="iresnet3d18", width_scale=1 / 16)
    protocol |= dict(views_per_pass=30, backends=tuple(list_backends()))  # those installed and working
    if quick:  # 64×64 frames: decord fails on some smaller sizes
        sizes = dict(
            classes=2, videos_per_class=2, video_frames=48, size=(64, 64), num_frames=4, frame_stride=4
        )
        return EvalConfig(**protocol, **sizes, test_size=32, warmup=1, repeats=1, note="quick: code path")
    sizes = dict(
        classes=4, videos_per_class=2, video_frames=250, size=(240, 320), num_frames=8, frame_stride=8
    )
    note = "10 s Kinetics-like videos; 10 clips x 3 crops of 8x8 clips at short side 112; a tiny model"
    return EvalConfig(**protocol, **sizes, test_size=112, warmup=1, repeats=3, note=note)


def goal_at_least(description: str, value: float, limit: float) -> dict:
    """A goal entry of the result JSON: ``value >= limit``."""
    return {"goal": f"{description} >= {limit:g}", "value": value, "met": bool(value >= limit)}


class OpenPerClip(ClipDataset):
    """The former evaluation reading: every clip opens the video and seeks on its own (``num_clips`` opens
    per video); items, batches and pixels are otherwise those of `ClipDataset`."""

    def _read_clips(self, record: VideoRecord, clip_indices: Sequence[int]) -> tuple[list[torch.Tensor], int]:
        clips, rereads = [], 0
        for clip_index in clip_indices:
            [clip], count = super()._read_clips(record, [clip_index])
            clips.append(clip)
            rereads += count
        return clips, rereads


def make_videos(root: Path, config: EvalConfig) -> tuple[Annotations, float]:
    """Every video of the demo Kinetics layout (train and val alike), one class per job (rendering and
    encoding dominate, and a video depends only on its class and index, so the split changes nothing)."""
    names = sorted(DEMO_CLASSES)[: config.classes]
    start = time.perf_counter()
    options = dict(
        layout="kinetics",
        videos_per_class=config.videos_per_class,
        num_frames=config.video_frames,
        size=config.size,
        fps=config.fps,
    )
    with ProcessPoolExecutor(min(len(names), 2)) as pool:
        jobs = [pool.submit(make_demo_data, root / name, classes=[name], **options) for name in names]
        for job in jobs:
            job.result()
    paths = sorted(root.rglob("*.mp4"))
    records = [VideoRecord(path, names.index(path.parent.name), path.stem) for path in paths]
    return Annotations(records, names, [], f"benchmark videos in {root}"), time.perf_counter() - start


class Evaluation:
    """One whole evaluation of ``dataset`` per call; keeps the last call's logits (in model-call order) and
    each call's time spent in the loader (opening, decoding, resizing, collating: the reading alone)."""

    def __init__(self, dataset: ClipDataset, model: torch.nn.Module, views: EvalViews, config: EvalConfig):
        self.model, self.views, self.config = model, views, config
        batch = eval_videos_per_batch(config.views_per_pass, config.num_clips, config.num_crops)
        self.loader = build_loader(dataset, batch_size=batch, shuffle=False)
        self.logits: list[torch.Tensor] = []
        self.loading_s: list[float] = []
        self.result: EvalResult | None = None

    def _timed(self, loader) -> Iterator[dict]:
        """The loader's batches, timing each ``next``; `evaluate` takes it as its progress wrapper."""
        batches, spent = iter(loader), 0.0
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            spent += time.perf_counter() - start
            if batch is None:
                break
            yield batch
        self.loading_s.append(spent)

    def __call__(self) -> None:
        logits: list[torch.Tensor] = []
        hook = self.model.register_forward_hook(lambda _module, _inputs, out: logits.append(out.detach()))
        try:
            self.result = evaluate(
                self.model,
                self.loader,
                self.views,
                num_classes=len(self.loader.dataset.classes),
                device=CPU,
                chunk=self.config.views_per_pass,
                progress=self._timed,
            )
        finally:
            hook.remove()
        self.logits = logits


def check_identical(before: Evaluation, after: Evaluation) -> dict:
    """The two readings must give the very same predictions: every logit, and the metrics."""
    a, b = torch.cat(before.logits), torch.cat(after.logits)
    if a.shape != b.shape or not torch.equal(a, b):
        diff = (a - b).abs().max().item() if a.shape == b.shape else float("nan")
        raise RuntimeError(f"the two readings' logits differ ({tuple(a.shape)} vs {tuple(b.shape)}, {diff})")
    summaries = before.result.summary(), after.result.summary()
    metrics = [{k: v for k, v in s.items() if k != "reread_reads"} for s in summaries]
    if metrics[0] != metrics[1]:
        raise RuntimeError(f"the two readings' metrics differ: {metrics[0]} vs {metrics[1]}")
    return {"predictions_identical": True, "views_compared": len(a), "metrics": metrics[1]}


def measure(annotations: Annotations, config: EvalConfig) -> dict:
    """Time both readings with every backend on the videos of ``annotations`` (`run` without writing them)."""
    options = dict(
        mode="eval",
        num_frames=config.num_frames,
        frame_stride=config.frame_stride,
        num_clips=config.num_clips,
        short_side=config.test_size,
    )
    torch.manual_seed(0)
    model = create_model(config.model, num_classes=config.classes, width_scale=config.width_scale).eval()
    stats = model.pretrained_cfg
    views = EvalViews(config.test_size, config.num_crops, mean=stats["mean"], std=stats["std"])
    readings = {BEFORE: OpenPerClip, AFTER: ClipDataset}
    candidates = {
        (reading, backend): Evaluation(dataset(annotations, backend=backend, **options), model, views, config)
        for backend in config.backends
        for reading, dataset in readings.items()
    }
    # One interleaved round over all of them: a load change on the machine hits every backend alike.
    measured = measure_interleaved(
        {f"{reading}, {backend}": fn for (reading, backend), fn in candidates.items()},
        CPU,
        warmup=config.warmup,
        repeats=config.repeats,
    )
    timings = {key: measured[f"{key[0]}, {key[1]}"] for key in candidates}
    checks = {b: check_identical(candidates[BEFORE, b], candidates[AFTER, b]) for b in config.backends}

    # The reading alone, within the very calls timed (after the warm-up ones, before the memory call).
    timed = slice(config.warmup, config.warmup + config.repeats)
    loading = {key: statistics.median(fn.loading_s[timed]) for key, fn in candidates.items()}
    videos = len(annotations.records)
    clips = videos * config.num_clips
    opens = {BEFORE: config.num_clips, AFTER: 1}
    results = []
    for (reading, backend), m in timings.items():
        row = m.as_dict()
        results.append(
            {
                "reading": reading,
                "backend": backend,
                "opens_per_video": opens[reading],
                "clips_per_s": clips / m.median_s,
                "videos_per_s": videos / m.median_s,
                "views_per_s": clips * config.num_crops / m.median_s,
                "eval_ms": row.pop("median_ms"),
                "loading_clips_per_s": clips / loading[reading, backend],
                "loading_ms": 1000 * loading[reading, backend],
                "reread_reads": candidates[reading, backend].result.rereads,
            }
            | row
        )
    # clips/s after / before is the inverse ratio of the median evaluation times.
    ratios = {
        f"clips/s after / before, {b}": timings[BEFORE, b].median_s / timings[AFTER, b].median_s
        for b in config.backends
    }
    ratios |= {
        f"loading clips/s after / before, {b}": loading[BEFORE, b] / loading[AFTER, b]
        for b in config.backends
    }
    goals = [
        goal_at_least(f"{name} ({config.num_clips} clips x {config.num_crops} crops)", value, 2)
        for name, value in ratios.items()
        if name.startswith("clips/s")  # the goal is the evaluation's; loading alone is a diagnosis
    ]
    details = {
        "videos": videos,
        "clips_per_evaluation": clips,
        "views_per_evaluation": clips * config.num_crops,
        "videos_with_b_frames": sum(_has_b_frames(r.path) for r in annotations.records),
        "loader": "main process (num_workers=0); videos per batch as build_eval_inputs sizes them",
        "order": "interleaved round-robin over readings and backends, one evaluation per call; ratios are "
        "of median times",
        "loading": "time spent in the loader's next() (open, decode, resize, collate) within the same calls",
        "peak_mem": "one evaluation's growth of the process's peak RSS (frames, views, activations)",
        "device": "CPU: --device does not apply (decoding is CPU work)",
    }
    return {
        "config": asdict(config) | details,
        "results": results,
        "ratios": ratios,
        "goals": goals,
        "check": checks,
    }


def _has_b_frames(path: Path) -> bool:
    import av

    with av.open(str(path)) as container:
        return bool(container.streams.video[0].codec_context.has_b_frames)


def run(args: argparse.Namespace) -> dict:
    config = config_for(args.quick)
    with tempfile.TemporaryDirectory(prefix="iresvid-bench-eval-") as tmp:
        annotations, generation_s = make_videos(Path(tmp), config)
        record = measure(annotations, config)
    record["config"]["generation_s"] = generation_s
    return record
