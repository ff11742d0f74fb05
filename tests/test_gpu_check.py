"""`tools/gpu_check.sh --quick` runs end to end and writes the documented JSON; speed is not asserted."""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
CUDA = torch.cuda.is_available()
MODELS = ("iresnet3d50", "resnet3d50", "pytorchvideo_slow_r50")
NUMBER = (int, float)


def positive(value: object) -> bool:
    return isinstance(value, NUMBER) and not isinstance(value, bool) and value > 0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu_check") / "x.json"
    # Without CUDA only the loader runs: seconds.  With one, three tiny torch.compile calls take minutes.
    command = [str(SCRIPT), "--quick", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=400 if CUDA else 60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def test_top_level(run):
    proc, record = run
    assert record["schema"] == 1
    assert record["cuda"] is CUDA
    assert isinstance(record["device"], str) and record["device"]
    assert record["quick"] is True
    assert {"torch", "device", "device_name", "torch_threads", "cpu_count", "load_avg_1_5_15"} <= set(
        record["env"]
    )
    assert positive(record["budget_s"]) and positive(record["wall_s"])
    assert record["wall_s"] < record["budget_s"]
    if not CUDA:
        assert record["device"] == "cpu"
        assert "no CUDA device" in proc.stdout


def test_train_rows(run):
    _, record = run
    rows = record["train"]
    assert [(r["model"], r["mode"]) for r in rows] == [
        (m, mode) for mode, m in itertools.product(("eager", "compiled"), MODELS)
    ]
    for row in rows:
        if not CUDA:
            assert row == {"model": row["model"], "mode": row["mode"], "skipped": "no CUDA device"}
            continue
        assert "error" not in row and "skipped" not in row, row
        for key in ("clips_per_s", "step_ms", "peak_mem_gib", "first_step_s"):
            assert positive(row[key]), (key, row)


def test_loader(run):
    _, record = run
    loader = record["loader"]
    assert "error" not in loader, loader
    assert positive(loader["clips_per_s"]) and positive(loader["epoch_s"])
    assert isinstance(loader["workers"], int) and 1 <= loader["workers"] <= 2  # --quick: 1-2 workers
    assert isinstance(loader["videos"], int) and loader["videos"] >= 1
    assert loader["clips_per_epoch"] >= loader["videos"]
    # The prepared set is timed whenever the preparation step exists; the raw set only in its absence.
    has_prepare = importlib.util.find_spec("iresvid.data.prepare") is not None
    assert loader["prepared"] is has_prepare, loader.get("prepare_error")
    assert ("prepare_error" in loader) is not has_prepare
    if has_prepare:
        from iresvid.data.manifest import OK

        assert loader["prepare_counts"] == {OK: loader["videos"]}  # every raw video was prepared


def test_data_wait(run):
    _, record = run
    wait = record["data_wait"]
    if not CUDA:
        assert wait == {"skipped": "no CUDA device"}
        return
    assert "error" not in wait and "skipped" not in wait, wait
    assert 0 <= wait["fraction"] <= 1
    assert positive(wait["steps_per_s"]) and isinstance(wait["steps"], int) and wait["steps"] >= 1
