"""`make bench`: speed, memory and deep-gradient benchmarks; each writes OUT/<name>.json and prints a table.

python tools/benchmark.py {train,deep,data,soak,eval,prepare,all} [--out bench_results] [--quick]
[--device auto|cpu|cuda]
(or ``iresvid bench ...``).

On a shared, loaded CPU machine run with OMP_NUM_THREADS=1: OpenMP threads that wait on each other's
descheduled peers make multi-threaded step times swing by several times; the thread count is recorded.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import torch

from iresvid.benchmarks import BENCHMARKS, add_arguments
from iresvid.benchmarks.common import environment, format_report
from iresvid.engine.device import resolve_device
from iresvid.errors import ConfigError


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


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    return run(parser.parse_args(argv), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``args.command`` (one benchmark or all); a CUDA request without CUDA is a usage error."""
    try:
        args.device = resolve_device(args.device, setting="--device").type  # benchmarks get "cpu" or "cuda"
    except ConfigError as error:
        parser.error(str(error))
    for name in BENCHMARKS if args.command == "all" else [args.command]:
        run_benchmark(name, args)
    return 0
