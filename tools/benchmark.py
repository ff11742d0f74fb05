"""`make bench`: speed, memory and deep-gradient benchmarks; each writes OUT/<name>.json and prints a table.

python tools/benchmark.py {train,deep,data,soak,all} [--out bench_results] [--quick] [--device auto|cpu|cuda]

On a shared, loaded CPU machine run with OMP_NUM_THREADS=1: OpenMP threads that wait on each other's
descheduled peers make multi-threaded step times swing by several times; the thread count is recorded.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

from iresvid.benchmarks.common import environment, format_report, resolve_device

# Imported only when asked for, so one benchmark's missing module or dependency does not block the others.
BENCHMARKS = {
    "train": "iresvid.benchmarks.train",
    "deep": "iresvid.benchmarks.deep",
    "data": "iresvid.benchmarks.data",
    "soak": "iresvid.benchmarks.soak",
}


def load(name: str) -> ModuleType | None:
    """The benchmark's module, or None when the module itself does not exist (yet)."""
    try:
        return importlib.import_module(BENCHMARKS[name])
    except ModuleNotFoundError as error:
        if error.name != BENCHMARKS[name]:
            raise  # a dependency of an existing module is missing: that is a real error
        return None


def run_benchmark(name: str, args: argparse.Namespace) -> bool:
    module = load(name)
    if module is None:
        print(f"benchmark {name!r}: {BENCHMARKS[name]} does not exist yet; not run", file=sys.stderr)
        return False
    env = environment(torch.device(args.device))
    start = time.perf_counter()
    result = module.run(args)
    env["load_avg_after"] = list(os.getloadavg())
    record = {"benchmark": name, "env": env, "wall_s": time.perf_counter() - start, **result}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(format_report(record))
    print(f"wrote {path}\n", flush=True)
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="where the JSON files go")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code path, not speed")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device).type  # benchmarks get "cpu" or "cuda"
    except RuntimeError as error:
        parser.error(str(error))
    if args.command != "all":
        return 0 if run_benchmark(args.command, args) else 1
    for name in BENCHMARKS:
        run_benchmark(name, args)  # `all` skips a benchmark that does not exist yet, with its message
    return 0


if __name__ == "__main__":
    sys.exit(main())
