"""Evaluate a checkpoint: ``python tools/test.py --checkpoint runs/x/best.pth [--config C] [key=value ...]``.

Reports clip-level and video-level (``data.num_clips × data.num_crops`` views) top-1 / top-5 / mean-class
accuracy, and writes test_metrics.json, per_class.csv and confusion_matrix.png.  Without ``--config`` the
checkpoint's own config is used (override e.g. ``data.root=...``).
"""

from __future__ import annotations

import argparse
import sys

from iresvid.cli import run_guarded, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", default=None, help="YAML config (default: the one in the checkpoint)")
    parser.add_argument("--output", default=None, help="report folder (default: <checkpoint dir>/test)")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw weights, not their EMA")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)

    def run():
        from iresvid.config import load_config
        from iresvid.engine.testing import run_test

        setup_logging(None)
        cfg = load_config(args.config, args.overrides) if args.config else None
        result, cfg, out = run_test(
            args.checkpoint, cfg, overrides=args.overrides, output_dir=args.output, use_ema=not args.no_ema
        )
        clip, video = result.clip.compute(), result.video.compute()
        print(f"{'level':<7}{'top1':>8}{'top5':>8}{'mean-class':>12}{'samples':>9}")
        for name, m in (("clip", clip), ("video", video)):
            print(
                f"{name:<7}{m['top1']:8.2f}{m['top5']:8.2f}{m['mean_class_accuracy']:12.2f}{m['num_samples']:9d}"
            )
        print(f"reports in {out}")

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
