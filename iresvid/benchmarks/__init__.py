"""Benchmarks: speed and memory goals, and the deep-network gradient claim, measured outside the unit tests.

Run them with ``python tools/benchmark.py train|deep|data|all`` (``make bench``).  Every benchmark module
exposes ``run(args) -> dict`` where ``args`` carries ``quick`` (tiny sizes, for the smoke test), ``device``
(``"cpu"`` or ``"cuda"``, already resolved) and ``out``.  The returned dict holds ``"config"``,
``"results"`` (a list of flat rows, printed as a table), optionally ``"ratios"`` and ``"goals"``
(``{"goal": ..., "value": ..., "met": ...}``); the CLI adds the environment record and writes the JSON.
Peers are compared side by side in one run, interleaved, and reported as ratios, so that a shared or busy
machine slows every candidate alike instead of biasing a comparison across runs.
"""
