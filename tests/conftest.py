"""Shared test setup."""

import logging
import os
from pathlib import Path

import pytest
import torch

from iresvid.data.synthetic import make_demo_data

# pytest-xdist runs one process per core; torch's own thread pool on top of that only oversubscribes.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """The tools' ``setup_logging`` replaces the root logger's handlers (``basicConfig(force=True)``) with
    one on the ``sys.stderr`` of the moment, pytest's capture of this test: later tests would log into that
    closed stream.  Each test ends with the handlers it started with."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], root.level = saved


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """The synthetic UCF101-format set, small: 4 videos per class (3 train / 1 test for split 1), 16 frames of
    32×32 (test files with other needs make their own)."""
    root = tmp_path_factory.mktemp("demo") / "ucf101"
    make_demo_data(root, layout="ucf101", videos_per_class=4, num_frames=16, size=(32, 32))
    return root
