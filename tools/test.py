"""Evaluate a checkpoint: ``python tools/test.py --checkpoint runs/x/best.pth [--config C] [key=value ...]``.

Reports clip-level and video-level (``data.num_clips × data.num_crops`` views) top-1 / top-5 / mean-class
accuracy and writes test_metrics.json, per_class.csv and confusion_matrix.png.  Without ``--config`` the
checkpoint's own config is used (override e.g. ``data.root=...``).  Same as ``iresvid test``.
"""

import sys

from iresvid.cli import main

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
