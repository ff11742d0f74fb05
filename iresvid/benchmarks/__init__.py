"""Benchmarks: speed and memory goals, and the deep-network gradient claim, measured outside the unit tests.

Run them with ``python tools/benchmark.py train|deep|data|soak|eval|prepare|all`` or ``iresvid bench ...``
(``make bench``: all).  Every benchmark module exposes ``run(args) -> dict`` where ``args`` carries
``quick`` (tiny sizes, for the smoke test), ``device`` (``"cpu"`` or ``"cuda"``, already resolved) and
``out``.  The returned dict holds ``"config"``, ``"results"`` (a list of flat rows, printed as a table),
optionally ``"ratios"`` and ``"goals"`` (``{"goal": ..., "value": ..., "met": ...}``); the CLI adds the
environment record and writes the JSON.
Peers are compared side by side in one run, interleaved, and reported as ratios, so that a shared or busy
machine slows every candidate alike instead of biasing a comparison across runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Imported only when run: `make bench train` does not import the data benchmark's dependencies.
BENCHMARKS = {
    "train": "iresvid.benchmarks.train",
    "deep": "iresvid.benchmarks.deep",
    "data": "iresvid.benchmarks.data",
    "soak": "iresvid.benchmarks.soak",
    "eval": "iresvid.benchmarks.evaluation",
    "prepare": "iresvid.benchmarks.prepare",
}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark command's arguments (``tools/benchmark.py`` and ``iresvid bench``)."""
    parser.add_argument("command", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="where the JSON files go")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code path, not speed")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser
