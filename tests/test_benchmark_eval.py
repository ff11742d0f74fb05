"""`tools/benchmark.py eval --quick` runs and writes a complete record; its "before" really reads per clip."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from cli_tools import run_quick_benchmark

from iresvid.benchmarks import BENCHMARKS
from iresvid.benchmarks.evaluation import AFTER, BEFORE, OpenPerClip
from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.datasets import ClipDataset
from iresvid.data.synthetic import make_demo_data

ROOT = Path(__file__).resolve().parents[1]


def test_eval_quick(tmp_path):
    stdout, record = run_quick_benchmark("eval", tmp_path)
    config = record["config"]
    backends = config["backends"]
    assert backends and set(backends) <= {"decord", "pyav", "torchcodec"}
    rows = {(r["reading"], r["backend"]): r for r in record["results"]}
    assert set(rows) == {(reading, b) for reading in (BEFORE, AFTER) for b in backends}
    for (reading, _), row in rows.items():
        assert row["opens_per_video"] == (10 if reading == BEFORE else 1)
        assert row["clips_per_s"] > 0 and row["eval_ms"] > 0 and row["reread_reads"] >= 0
        assert 0 < row["loading_ms"] < row["eval_ms"] and row["loading_clips_per_s"] > row["clips_per_s"]
        assert math.isclose(row["views_per_s"], 3 * row["clips_per_s"])
    assert (
        config["videos"] == 4 and config["clips_per_evaluation"] == 40 and config["videos_with_b_frames"] == 2
    )
    assert len(record["goals"]) == len(backends)
    for backend, goal in zip(backends, record["goals"], strict=True):
        ratio = record["ratios"][f"clips/s after / before, {backend}"]
        assert math.isclose(ratio, rows[AFTER, backend]["clips_per_s"] / rows[BEFORE, backend]["clips_per_s"])
        assert goal["goal"].endswith(">= 2") and goal["value"] == ratio and goal["met"] == (ratio >= 2)
        assert record["ratios"][f"loading clips/s after / before, {backend}"] > 0
        check = record["check"][backend]
        assert check["predictions_identical"] is True and check["views_compared"] == 4 * 10 * 3
        assert check["metrics"]["failed_videos"] == 0
    assert "goal" in stdout and AFTER in stdout


def test_make_bench_all_includes_eval():  # `all` runs every entry of BENCHMARKS
    assert BENCHMARKS["eval"] == "iresvid.benchmarks.evaluation"


def test_before_opens_every_clip_and_reads_the_same_pixels(tmp_path, monkeypatch):
    """The baseline is the former evaluation reading (an open per clip), on the same pixels as ours."""
    data = make_demo_data(tmp_path, layout="kinetics", classes=["expand"], videos_per_class=2, num_frames=40)
    records = [VideoRecord(p, 0, p.stem) for p in sorted(data.video_root.rglob("*.mp4"))]
    annotations = Annotations(records, ["expand"], [], "test")
    options = dict(mode="eval", num_frames=4, frame_stride=3, num_clips=5, short_side=32)
    before, after = OpenPerClip(annotations, **options), ClipDataset(annotations, **options)

    import iresvid.data.datasets as datasets

    real_open, opened = datasets.open_video, []

    def counted(path, *args, **kwargs):
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "open_video", counted)
    for index in range(len(records)):
        assert torch.equal(before[index]["input"], after[index]["input"])
    # Per video: five opens for the baseline's five clips, then one for ours.
    assert opened == [r.path for r in records for _ in range(5 + 1)]
