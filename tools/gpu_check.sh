#!/usr/bin/env bash
# GPU readiness in one JSON, under 8 minutes: the training step (speed, memory, host reads, GPU-busy share,
# compile), evaluation, EMA, transfers, loader workers and data wait, exact resume
# (iresvid/benchmarks/gpu_check.py).
# Usage: tools/gpu_check.sh [--out bench_results/gpu_check.json] [--quick] [--budget-s S]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
# The checkout on the path, so it runs without an install too; relative --out paths stay the caller's.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m iresvid.benchmarks.gpu_check "$@"
