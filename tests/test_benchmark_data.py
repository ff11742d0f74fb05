"""`tools/benchmark.py data --quick` runs and writes a complete record (speed is not asserted)."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_tools import run_quick_benchmark

from iresvid.benchmarks.data import (
    LOADERS,
    OPENS,
    RAW,
    RAW_DECODE,
    check_traps,
    clip_plan,
    config_for,
    make_videos,
)
from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.datasets import ClipDataset
from iresvid.data.loader import ShardedSampler
from iresvid.data.synthetic import make_demo_data
from iresvid.data.transforms import resize_short_side
from iresvid.data.video_io import open_video

ROOT = Path(__file__).resolve().parents[1]


def test_data_quick(tmp_path):
    stdout, record = run_quick_benchmark("data", tmp_path)
    config = config_for(quick=True)
    workers = config.workers
    assert list(record["sets"]) == [s.name for s in config.sets]
    rows = {(r["set"], r["loader"], r.get("workers")): r for r in record["results"]}
    for name, fileset in record["sets"].items():
        # Every set, every candidate, at every worker count.
        loaders = {(RAW, 0), (RAW_DECODE, 0)} | {(loader, w) for loader in LOADERS for w in workers}
        assert all(rows[name, loader, w]["clips_per_s"] > 0 for loader, w in loaders)
        assert all(
            rows[name, f"open only: {label}", None]["open_ms_per_file"] > 0 for label in OPENS.values()
        )
        assert (
            fileset["clips_per_epoch"] == fileset["videos"] * fileset["listings"]
        )  # each file, listings times
        assert math.isfinite(fileset["check_ms_per_file"])
        # The traps were checked: long GOPs have one keyframe in 3 s, B-frame sets reorder packets.
        assert fileset["keyframes_at"] == list(range(0, fileset["frames"], fileset["gop"]))
        assert fileset["bframes_runs"] == sorted(set(fileset["bframes"]))
        assert (fileset["packets_reordered"] > 0) == (max(fileset["bframes"]) > 0)
        for w in workers:
            for ratio in (
                "ours / pytorchvideo",
                "ours per process / raw decord",
                "ours / ours on decord",
            ):
                assert f"{name}: {ratio}, workers={w}" in record["ratios"]
        assert f"{name}: open_video decord cold / decord open" in record["ratios"]
        assert f"{name}: open_video pyav cold / decord open" in record["ratios"]
        goals = [g for g in record["goals"] if g["goal"].startswith(f"{name}: ")]
        # ours / pytorchvideo at every worker count, ours per process / raw where workers < cores.
        assert len(goals) == len(workers) + sum(w < (os.cpu_count() or 1) for w in workers)
    assert {r["set"] for r in record["results"]} == set(record["sets"])
    assert all(math.isfinite(v) and v > 0 for v in record["ratios"].values())
    goals = record["goals"]
    assert goals and all(set(g) == {"goal", "value", "met"} and isinstance(g["met"], bool) for g in goals)
    assert all(label in stdout for label in LOADERS) and "goal" in stdout


def test_trap_check_catches_files_without_the_traps(tmp_path):
    """A set's files are checked for what its name promises: a mismatch in GOP or B-frames stops the run."""
    config = config_for(quick=True)
    fileset = replace(config.sets[1], videos=2)  # long GOP, 2 then 3 B-frames
    config = replace(config, sets=(fileset,))
    annotations, _ = make_videos(tmp_path, config)[fileset.name]
    summary = check_traps(annotations, fileset, config)
    assert summary["keyframes_at"] == [0] and summary["bframes_runs"] == [2, 3]
    assert summary["packets_reordered"] == 2
    with open_video(annotations.records[0].path, "decord") as reader:
        assert (reader.height, reader.width) == fileset.size
    for wrong in (replace(fileset, gop=12), replace(fileset, bframes=(0,)), replace(fileset, bframes=(3, 2))):
        with pytest.raises(RuntimeError, match="did not write the set's traps"):
            check_traps(annotations, wrong, config)


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
