"""Extract per-video features over the evaluation views (data.num_clips × data.num_crops).

    python tools/extract_features.py --checkpoint runs/x/best.pth --split val --out feats.npy
    python tools/extract_features.py --checkpoint best.pth --out maps.pt --level stages --out-indices 3,4
    python tools/extract_features.py --config C --model iresnet3d50 --pretrained w.pth --out f.npy data.root=D

``pooled``: the classifier's input averaged over a video's views, (num_videos, C).  ``stages``: each stage's
map averaged over (T, H, W) and the views, side by side; with ``--keep-spatial`` every clip's maps (.pt).
.npy gets a .json sidecar (paths, labels, classes, layout); .pt is one dict.  Unreadable videos are left out
and listed there.
"""

from __future__ import annotations

import argparse
import sys

from iresvid.cli import CONFIG_HELP, run_guarded, setup_logging


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a training checkpoint (its config and classes)")
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    parser.add_argument("--model", default=None, help="without --checkpoint: a registry model name")
    parser.add_argument("--pretrained", default=None, help="without --checkpoint: weights for --model")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--out", required=True, help="feats.npy (+ feats.json) or feats.pt")
    parser.add_argument("--level", choices=("pooled", "stages"), default="pooled")
    parser.add_argument(
        "--out-indices", type=_ints, default=None, help="stages: e.g. 2,3,4 (0 = stem; default all)"
    )
    parser.add_argument("--keep-spatial", action="store_true", help="stages: unpooled maps per clip (.pt)")
    parser.add_argument("--max-gib", type=float, default=8.0, help="refuse --keep-spatial maps beyond this")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not their EMA")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    if args.checkpoint and (args.model or args.pretrained):
        parser.error("--model/--pretrained build a model without a checkpoint; give one or the other")
    if args.level == "pooled" and (args.out_indices is not None or args.keep_spatial):
        parser.error("--out-indices and --keep-spatial go with --level stages")
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.name={args.model}")
    if args.pretrained:
        overrides.append(f"model.pretrained={args.pretrained}")

    def run():
        from iresvid.config import load_config
        from iresvid.engine.features import run_extract

        setup_logging(None)
        cfg = load_config(args.config, overrides) if args.config or not args.checkpoint else None
        result, files = run_extract(
            args.out,
            checkpoint=args.checkpoint,
            cfg=cfg,
            split=args.split,
            level=args.level,
            out_indices=args.out_indices,
            keep_spatial=args.keep_spatial,
            overrides=overrides,
            use_ema=not args.no_ema,
            max_bytes=int(args.max_gib * 2**30),
        )
        shapes = result.features if isinstance(result.features, dict) else {result.level: result.features}
        for name, features in shapes.items():
            print(f"{name}: {tuple(features.shape)}")
        skipped = f"; {len(result.failed)} unreadable, left out and listed" if result.failed else ""
        print(f"{len(result.paths)} videos{skipped}")
        print(f"wrote {', '.join(map(str, files))}")

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
