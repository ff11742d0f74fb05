"""Smoke tests of `tools/benchmark.py`: the code paths run and write complete JSON; speed is not asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from iresvid import cli

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "tools" / "benchmark.py"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # One thread: on a loaded CI machine OpenMP threads of tiny ops mostly wait on each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(CLI), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def numbers(obj: object) -> list[float]:
    """Every number in a JSON value (booleans and None excluded)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers(v)]
    if isinstance(obj, int | float) and not isinstance(obj, bool):
        return [float(obj)]
    return []


def check_record(path: Path, name: str, row_keys: set[str]) -> dict:
    record = json.loads(path.read_text())
    assert record["benchmark"] == name
    assert {"torch", "device", "device_name", "torch_threads", "cpu_count", "load_avg_1_5_15"} <= set(
        record["env"]
    )
    assert record["config"] and record["results"] and record["ratios"]
    for row in record["results"]:
        assert row_keys <= set(row), row_keys - set(row)
    values = numbers([record["results"], record["ratios"], record.get("goals", [])])
    assert values and all(math.isfinite(v) for v in values)
    return record


def test_train_quick(tmp_path):
    proc = run_cli("train", "--quick", "--device", "cpu", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    record = check_record(
        tmp_path / "train.json",
        "train",
        {"model", "variant", "params_m", "step_ms", "iqr_ms", "clips_per_s", "peak_mem_mib", "times_ms"},
    )
    models = ["iresnet3d50", "resnet3d50", "pytorchvideo_slow_r50"]
    assert [r["model"] for r in record["results"]] == models + [f"{m} channels_last_3d" for m in models]
    assert record["config"]["input_shape"] == [2, 3, 4, 32, 32]
    assert len(record["goals"]) == 6  # three ratios in each memory layout
    assert all(set(g) == {"goal", "value", "met"} and isinstance(g["met"], bool) for g in record["goals"])
    assert "iresnet3d50" in proc.stdout and "goal" in proc.stdout


def test_deep_quick(tmp_path):
    proc = run_cli("deep", "--quick", "--device", "cpu", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    record = check_record(
        tmp_path / "deep.json",
        "deep",
        {"model", "depth", "conv1_grad_norm", "fc_grad_norm", "conv1_over_fc", "logit_std", "loss", "finite"},
    )
    nets = {(r["model"], r["depth"]) for r in record["results"]}
    assert nets == {
        ("resnet", 404),
        ("iresnet", 404),
        ("resnet", 1001),
        ("iresnet", 1001),
        ("resnet_cifar", 3002),
        ("preact_resnet_cifar", 3002),
        ("iresnet_cifar", 3002),
    }
    assert all(r["finite"] for r in record["results"])
    assert len(record["ratios"]) == 4


def test_iresvid_bench_is_the_same_command(tmp_path, capsys):
    """``iresvid bench`` runs the benchmarks of ``tools/benchmark.py`` with the same arguments."""
    assert cli.main(["bench", "deep", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'deep.json'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "deep.json").read_text())["benchmark"] == "deep"
