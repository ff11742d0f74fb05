"""`tools/benchmark.py prepare --quick` runs and writes a complete record (speed is not asserted)."""

from __future__ import annotations

import math

from cli_tools import run_quick_benchmark

from iresvid.benchmarks.prepare import LOADERS, OPENS, PREPARE, PREPARED, RAW, config_for


def test_prepare_quick(tmp_path):
    stdout, record = run_quick_benchmark("prepare", tmp_path)
    config = config_for(quick=True)
    workers = config.data.workers
    rows = {(r["candidate"], r.get("workers")): r for r in record["results"]}

    # Every loader at every worker count, on the same number of clips.
    clips = record["clips_per_epoch"]
    assert clips == config.fileset.videos * config.fileset.listings
    for loader in LOADERS:
        for w in workers:
            row = rows[loader, w]
            assert row["clips_per_s"] > 0
            assert math.isclose(row["clips_per_s"], 1000 * clips / row["median_ms"])
    # Prepare encoded every video on every core, and its throughput follows from its wall time.
    prepared = record["prepare"]
    cores = prepared["workers"]
    row = rows[PREPARE, cores]
    assert prepared["videos"] == config.fileset.videos and cores >= 1
    assert math.isclose(prepared["video_s"], config.fileset.videos * config.data.seconds)
    assert math.isclose(row["videos_per_min"], 60 * prepared["videos"] / prepared["wall_s"])
    assert math.isclose(row["realtime_per_core"], prepared["video_s"] / prepared["wall_s"] / cores)
    assert prepared["prepared_mb"] > 0 and prepared["first_run_wall_s"] > 0
    # The raw set holds the traps its name promises.
    assert record["raw_set"]["bframes_runs"] == [2, 3] and record["raw_set"]["keyframes_at"] == [0]
    # Opens: every candidate, in ms per file.
    for label in OPENS.values():
        assert rows[f"open only: {label}", None]["open_ms_per_file"] > 0
    assert record["decord_manifest_backend"] in ("decord", "pyav")

    ratios = record["ratios"]
    for w in workers:
        expected = rows[PREPARED, w]["clips_per_s"] / rows[RAW, w]["clips_per_s"]
        assert math.isclose(ratios[f"clips/s ours prepared / ours raw, workers={w}"], expected)
        assert ratios[f"clips/s ours prepared / pytorchvideo raw, workers={w}"] > 0
    open_ms = {how: rows[f"open only: {label}", None]["open_ms_per_file"] for how, label in OPENS.items()}
    first_open = f"first open {OPENS['pyav manifest']} / decord.VideoReader"
    assert math.isclose(ratios[first_open], open_ms["pyav manifest"] / open_ms["decord"])
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())

    # One loader goal per worker count and the open goal, each with its verdict (not asserted: quick sizes).
    goals = {g["goal"]: g for g in record["goals"]}
    assert all(set(g) == {"goal", "value", "met"} and isinstance(g["met"], bool) for g in goals.values())
    for w in workers:
        entry = goals[f"clips/s ours prepared / ours raw, workers={w} >= 4"]
        assert entry["value"] == ratios[f"clips/s ours prepared / ours raw, workers={w}"]
        assert entry["met"] == (entry["value"] >= 4)
    entry = goals[f"{first_open} <= 1.1"]
    assert entry["value"] == ratios[first_open] and entry["met"] == (entry["value"] <= 1.1)
    assert len(goals) == len(workers) + 1
    assert all(label in stdout for label in LOADERS) and "goal" in stdout
