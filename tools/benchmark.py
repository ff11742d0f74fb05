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

import torch

from iresvid.benchmarks.common import environment, format_report, resolve_device

# Imported only when run: `make bench train` does not import the data benchmark's dependencies.
BENCHMARKS = {
    "train": "iresvid.benchmarks.train",
    "deep": "iresvid.benchmarks.deep",
    "data": "iresvid.benchmarks.data",
    "soak": "iresvid.benchmarks.soak",
}


def run_benchmark(name: str, args: argparse.Namespace) -> None:
    module = importlib.import_module(BENCHMARKS[name])
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
    for name in BENCHMARKS if args.command == "all" else [args.command]:
        run_benchmark(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
