"""Timing, memory and reporting helpers shared by the benchmarks.

Candidates are timed interleaved (A, B, C, A, B, C, …) after warm-up, so a load change on a shared machine
hits all of them alike; each gets the median and interquartile range of its repeats.

Peak memory is what one call needs on top of what was already allocated before it (weights, optimizer
state, the other candidates): activations, gradients and workspace.  On CUDA it is
``torch.cuda.max_memory_allocated`` above the allocation at entry.  On CPU it is the growth of the
process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over the resident
set at entry, after ``malloc_trim`` has handed freed heap back to the OS — without the trim, memory freed
by an earlier call and kept by glibc would hide the growth.  It is page-granular, counts allocator overhead
and every thread of the process, and is ``None`` where those Linux/glibc facilities are missing.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

MIB = 2**20


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock interval covers the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"/proc/self/status has no {key}")


def _reset_cpu_peak() -> int | None:
    """Return the resident set after trimming the heap and resetting its high-water mark, or None."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        return _proc_status_bytes("VmRSS")
    except (OSError, AttributeError):
        return None


class PeakMemory:
    """``with PeakMemory(device) as mem: ...`` sets ``mem.mib``: the peak over the entry level (see above)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None
        self._base: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _reset_cpu_peak()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / MIB
        elif self._base is not None:
            self.mib = (_proc_status_bytes("VmHWM") - self._base) / MIB


@dataclass(frozen=True)
class Measurement:
    """Repeated wall-clock times of one candidate, its first (warm-up) call and its peak memory."""

    times_s: tuple[float, ...]
    first_call_s: float  # includes one-off costs: allocator growth, cuDNN autotuning, torch.compile
    peak_mem_mib: float | None

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))

    def as_dict(self) -> dict:
        q1, median, q3 = np.percentile(self.times_s, [25, 50, 75])
        return {
            "median_ms": 1000 * median,
            "iqr_ms": 1000 * (q3 - q1),
            "min_ms": 1000 * min(self.times_s),  # the least disturbed repeat on a busy machine
            "first_call_ms": 1000 * self.first_call_s,
            "peak_mem_mib": self.peak_mem_mib,
            "repeats": len(self.times_s),
            "times_ms": [1000 * t for t in self.times_s],
        }


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure_interleaved(
    candidates: Mapping[str, Callable[[], object]], device: torch.device, *, warmup: int, repeats: int
) -> dict[str, Measurement]:
    """Time every candidate ``repeats`` times, round-robin, after ``warmup`` round-robin calls.

    Peak memory is taken in one extra call per candidate after the timing, so its bookkeeping (heap trim,
    counter resets) never lands inside a timed interval.
    """
    if warmup < 1 or repeats < 1:
        raise ValueError(f"need warmup >= 1 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    names = list(candidates)
    first = {name: _timed(candidates[name], device) for name in names}
    for _ in range(warmup - 1):
        for name in names:
            _timed(candidates[name], device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            times[name].append(_timed(candidates[name], device))
    measurements = {}
    for name in names:
        with PeakMemory(device) as mem:
            candidates[name]()
        measurements[name] = Measurement(tuple(times[name]), first[name], mem.mib)
    return measurements


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """What the numbers depend on, embedded in every result file: versions, hardware, threads, load."""
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": list(os.getloadavg()),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def goal(description: str, value: float, limit: float) -> dict:
    """A goal entry of the result JSON: ``value <= limit``."""
    return {"goal": f"{description} <= {limit:g}", "value": value, "met": bool(value <= limit)}


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def format_table(rows: Sequence[Mapping[str, object]]) -> str:
    """A plain-text table of flat rows; columns in first-seen order, list-valued fields left out."""
    columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if not isinstance(v, list)))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def format_report(record: Mapping) -> str:
    """The readable form of a result record: environment, results table, ratios and goals."""
    env = record["env"]
    lines = [
        f"== {record['benchmark']} on {env['device_name']} ({env['device']}, torch {env['torch']}, "
        f"{env['torch_threads']} threads, load avg {' '.join(f'{x:.2f}' for x in env['load_avg_1_5_15'])})"
    ]
    if record.get("results"):
        lines.append(format_table(record["results"]))
    for name, value in record.get("ratios", {}).items():
        lines.append(f"ratio {name}: {_cell(value)}")
    for entry in record.get("goals", []):
        lines.append(f"goal {entry['goal']}: {_cell(entry['value'])} {'met' if entry['met'] else 'NOT MET'}")
    return "\n".join(lines)
