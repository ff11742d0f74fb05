"""The command-line tools of ``tools/``, loaded by path for in-process tests: ``tools`` is not a package."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def tool_main(name: str) -> Callable[[list[str]], int]:
    """``main`` of ``tools/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_quick_benchmark(name: str, out: Path) -> tuple[str, dict]:
    """``tools/benchmark.py NAME --quick --out OUT`` in a child process (one torch thread, as the benchmarks
    are run): its standard output and the JSON record it wrote, with the environment every record has."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(TOOLS / "benchmark.py"), name, "--quick", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=TOOLS.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / f"{name}.json").read_text())
    assert record["benchmark"] == name and {"load_avg_1_5_15", "load_avg_after"} <= set(record["env"])
    return proc.stdout, record
