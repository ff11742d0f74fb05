"""`tools/benchmark.py data --quick` runs and writes a complete record (speed is not asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from iresvid.benchmarks.data import OPENS, OURS, PEER, RAW, RAW_DECODE, clip_plan
from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.datasets import ClipDataset
from iresvid.data.loader import ShardedSampler
from iresvid.data.synthetic import make_demo_data
from iresvid.data.transforms import resize_short_side
from iresvid.data.video_io import open_video

ROOT = Path(__file__).resolve().parents[1]


def test_data_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "benchmark.py"), "data", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "data.json").read_text())
    assert record["benchmark"] == "data" and {"load_avg_1_5_15", "load_avg_after"} <= set(record["env"])
    rows = {(r["loader"], r.get("workers")): r for r in record["results"]}
    loaders = {(RAW, 0), (RAW_DECODE, 0), (OURS, 0), (OURS, 1), (PEER, 0), (PEER, 1)}
    assert loaders <= set(rows)
    assert all(rows[key]["clips_per_s"] > 0 for key in loaders)
    assert all(rows[f"open only: {label}", None]["open_ms_per_file"] > 0 for label in OPENS.values())
    assert record["config"]["clips_per_epoch"] == record["config"]["videos"] == 4
    assert all(math.isfinite(v) and v > 0 for v in record["ratios"].values())
    goals = record["goals"]
    assert goals and all(set(g) == {"goal", "value", "met"} and isinstance(g["met"], bool) for g in goals)
    assert "ours / pytorchvideo, workers=1" in record["ratios"]
    assert OURS in proc.stdout and "goal" in proc.stdout


def test_raw_decord_reads_the_clips_our_loader_reads(tmp_path):
    """The ceiling is only a ceiling of the same work: its replayed plan is ClipDataset's own draw."""
    # The default 64x64 frames: decord 3.4 fails on some small sizes (32x48, 96x96: "size must match").
    classes = ["expand", "shrink"]
    data = make_demo_data(tmp_path, layout="kinetics", classes=classes, videos_per_class=2, num_frames=40)
    paths = sorted(data.video_root.rglob("*.mp4"))
    records = [VideoRecord(p, 0, p.stem) for p in paths]
    dataset = ClipDataset(
        Annotations(records, ["a"], [], "test"), num_frames=4, frame_stride=3, short_side=24
    )
    num_frames = {p: open_video(p).num_frames for p in paths}
    plan = clip_plan(dataset, num_frames)
    sampler = ShardedSampler(len(dataset), shuffle=True, seed=0)  # build_loader's, with its default seed
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        for (index, _), (path, indices) in zip(sampler, plan(epoch), strict=True):
            assert path == str(records[index].path)
            with open_video(path, "decord") as reader:
                expected = resize_short_side(reader.get_frames(indices), 24).permute(3, 0, 1, 2)
            assert torch.equal(dataset[index, epoch]["input"], expected)
