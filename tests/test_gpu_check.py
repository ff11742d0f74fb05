"""`tools/gpu_check.sh --quick` runs end to end and writes the documented JSON; speed is not asserted.

Without CUDA the step-level parts run their CPU paths (tiny nets); the pieces that need a GPU are tested
through their math (`busy_fraction`, `gb_per_s`) and through a step that raises an out-of-memory.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from iresvid.benchmarks import gpu_check, step

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
    # About a minute on two idle cores (the tiny Trainer runs and the aot_eager compile take most); a loaded
    # machine may need several.  With CUDA, the tiny inductor compiles take minutes.
    command = [str(SCRIPT), "--quick", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=400 if CUDA else 300)
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


QUICK = step.step_config(CUDA, quick=True)


def fraction(value: object) -> bool:
    return isinstance(value, float) and 0 <= value <= 1


def count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def test_step_anatomy(run):
    _, record = run
    rows = record["step_anatomy"]
    assert [(r["batch"], r["cudnn_benchmark"]) for r in rows] == list(
        itertools.product(QUICK.batches, (False, True))
    )
    for row in rows:
        assert "error" not in row and "skipped" not in row and "out_of_memory" not in row, row
        assert positive(row["clips_per_s"]) and positive(row["step_ms"]), row
        assert fraction(row["busy_fraction"]), row
        # The step keeps its loss and accuracy on the device: one read back would show here.
        assert row["host_reads_per_step"] == 0 and row["host_reads_by_kind"] == {}, row
        if CUDA:
            assert positive(row["peak_mem_gib"]) and row["sync_debug"] == "clean", row
        else:
            assert row["peak_mem_gib"] is None and row["sync_debug"] is None


def test_compile(run):
    _, record = run
    compiled = record["compile"]
    assert "error" not in compiled and "skipped" not in compiled, compiled
    assert compiled["backend"] == ("inductor" if CUDA else "aot_eager")
    for key in ("compile_s", "validation_s", "step_ms_eager", "step_ms_compiled", "speedup"):
        assert positive(compiled[key]), (key, compiled)
    keys = ("first_step_frames", "graph_breaks", "recompiles_training", "compiles_validation")
    assert all(count(compiled[key]) for key in (*keys, "recompiles_after_validation")), compiled
    assert compiled["first_step_frames"] >= 1 and compiled["steps"] == QUICK.compile_steps
    assert compiled["recompiles_training"] == 0  # the same batch every step: nothing to recompile for
    # Validation (precise BN, eval mode) runs the module itself and leaves every guarded attribute as it
    # was: a BN momentum precise BN did not restore would recompile the training graph here.
    assert compiled["compiles_validation"] == 0 and compiled["recompiles_after_validation"] == 0


def test_evaluation(run):
    _, record = run
    evaluation = record["evaluation"]
    assert "error" not in evaluation and "skipped" not in evaluation, evaluation
    assert [r["batch"] for r in evaluation["rows"]] == list(QUICK.eval_batches)
    assert all(positive(r["views_per_s"]) and positive(r["batch_ms"]) for r in evaluation["rows"])
    precise = evaluation["precise_bn"]
    assert precise["batches"] == QUICK.precise_bn_batches and positive(precise["s"])
    assert precise["host_reads_per_batch"] == 0  # momentum as a Python float: no count read per layer


def test_ema(run):
    _, record = run
    ema = record["ema"]
    assert "error" not in ema and "skipped" not in ema, ema
    assert positive(ema["step_ms_without"])
    variants = {v["kind"]: v for v in ema["variants"]}
    assert "averaged_model" in variants
    for variant in variants.values():
        assert positive(variant["step_ms"]) and positive(variant["update_ms"]), variant
        assert count(variant["host_reads_per_update"]), variant
    # AveragedModel reads its update count back every update; the trainer's ModelEma never does.
    assert variants["averaged_model"]["host_reads_per_update"] >= 1
    if "model_ema" in variants:
        assert variants["model_ema"]["host_reads_per_update"] == 0


def test_transfer(run):
    _, record = run
    transfer = record["transfer"]
    if not CUDA:
        assert transfer == {"skipped": "no CUDA device"}
    else:
        assert positive(transfer["pinned_gb_per_s"]) and positive(transfer["pageable_gb_per_s"]), transfer
    assert step.gb_per_s(3 * 10**9, 1.5) == pytest.approx(2.0)  # the bandwidth is in 10^9 bytes a second


def test_loader_workers(run):
    _, record = run
    rows = record["loader_workers"]
    counts = tuple(sorted({1, min(2, os.cpu_count() or 1)}))
    assert [(r["set"], r["workers"]) for r in rows] == list(itertools.product(("prepared", "raw"), counts))
    for row in rows:
        assert "error" not in row and "skipped" not in row, row
        assert positive(row["clips_per_s"]) and positive(row["train_clips_per_s"]), row
        assert fraction(row["wait_fraction"]) and row["steps"] == 2, row


def test_resume(run):
    _, record = run
    resume = record["resume"]
    assert "error" not in resume and "skipped" not in resume, resume
    steps = QUICK.resume_steps
    assert resume["stopped_at"] == steps // 2 and resume["resumed_step"] == resume["whole_step"] == steps
    assert count(resume["trainer_host_reads"]) and resume["trainer_host_reads_per_step"] >= 0
    if CUDA:
        assert resume["max_abs_diff"] >= 0 and resume["repeat_max_abs_diff"] >= 0
    else:
        assert resume["max_abs_diff"] == 0.0  # the CPU trains deterministically: a resume changes nothing
        assert resume["repeat_max_abs_diff"] is None


def test_busy_fraction_is_the_union_of_the_intervals_over_the_wall_time():
    assert step.busy_fraction([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)], 10.0) == pytest.approx(0.4)
    assert step.busy_fraction([(0.0, 4.0), (1.0, 2.0)], 8.0) == pytest.approx(0.5)  # nested: counted once
    assert step.busy_fraction([], 1.0) == 0.0
    assert step.busy_fraction([(0.0, 3.0)], 2.0) == 1.0  # profiled past the unprofiled wall time: capped
    with pytest.raises(ValueError, match="wall time"):
        step.busy_fraction([(0.0, 1.0)], 0.0)


def test_an_out_of_memory_step_is_the_rows_answer_not_an_error():
    def step_out_of_memory(clips, labels):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")

    benchmark = torch.backends.cudnn.benchmark
    row = step.anatomy_row(step_out_of_memory, 2, not benchmark, QUICK, torch.device("cpu"))
    assert row == {"out_of_memory": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert torch.backends.cudnn.benchmark is benchmark  # the row's setting does not leak into the next
    record = {key: [] for key in gpu_check.ROW_SECTIONS} | {key: {} for key in gpu_check.PART_SECTIONS}
    record["step_anatomy"] = [{"batch": 64, "cudnn_benchmark": True} | row]
    assert not gpu_check.has_error(record)
    for key in ("resume", "compile", "loader_workers"):
        failed = {**record, key: [{"error": "x"}] if key in gpu_check.ROW_SECTIONS else {"error": "x"}}
        assert gpu_check.has_error(failed), key


def test_state_dicts_differ_by_their_largest_entry_difference():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(10)}
    assert step.max_abs_diff(a, {k: v.clone() for k, v in a.items()}) == 0.0
    assert (
        step.max_abs_diff(a, {"w": torch.tensor([1.0, 2.5]), "bn.num_batches_tracked": torch.tensor(10)})
        == 0.5
    )
    assert step.max_abs_diff(a, {"w": a["w"], "bn.num_batches_tracked": torch.tensor(13)}) == 3.0
    with pytest.raises(ValueError, match="differ in keys"):
        step.max_abs_diff(a, {"w": a["w"]})
