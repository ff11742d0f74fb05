"""Shared test setup."""

import os

import torch

# pytest-xdist runs one process per core; torch's own thread pool on top of that only oversubscribes.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))
