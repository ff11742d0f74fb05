"""Export a model to TorchScript and/or ONNX, checked against the eager model after reloading.

    python tools/export.py --checkpoint runs/x/best.pth --format both --out export/
    python tools/export.py --model iresnet3d50 --pretrained iresnet50.pth --num-classes 400 --out export/

Writes model.pt / model.onnx and export.json (input layout and shape, mean/std, classes, measured
differences).  The batch axis is dynamic; T, H, W are fixed (``--clip-shape``, default: the evaluation clip).
"""

from __future__ import annotations

import argparse
import sys

from iresvid.cli import run_guarded, setup_logging


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a training checkpoint (its config and classes are used)")
    source.add_argument("--model", help="a registry model name (iresvid.list_models())")
    parser.add_argument("--pretrained", default=None, help="with --model: weights to load")
    parser.add_argument("--num-classes", type=int, default=None, help="with --model: classifier size")
    parser.add_argument("--format", choices=("torchscript", "onnx", "both"), default="both")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--clip-shape", type=_ints, default=None, help="T,H,W (H,W for 2D models)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the traced example")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights, not their EMA")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (with --checkpoint)")
    args = parser.parse_args(argv)
    if args.model is None and (args.pretrained or args.num_classes is not None):
        parser.error("--pretrained and --num-classes go with --model")

    def run():
        from iresvid.engine.export import FORMATS, example_input, export_model, load_for_export
        from iresvid.files import output_dir

        setup_logging(None)
        output_dir(args.out)  # a folder that cannot take the files is refused before any work
        model, clip_shape, info = load_for_export(
            checkpoint=args.checkpoint,
            model_name=args.model,
            pretrained=args.pretrained,
            num_classes=args.num_classes,
            overrides=args.overrides,
            use_ema=not args.no_ema,
        )
        example = example_input(model, args.clip_shape or clip_shape, args.batch)
        formats = FORMATS if args.format == "both" else (args.format,)
        report = export_model(model, example, args.out, formats, metadata=info, opset=args.opset)
        for fmt, diffs in report["max_abs_diff"].items():
            measured = ", ".join(f"{batch} {d:.2e}" for batch, d in diffs.items())
            print(f"{fmt:<12} {report['files'][fmt]:<11} max |diff| vs eager: {measured}")
        print(f"tolerance {report['tolerance']:.2e} (output scale {report['output_scale']:.3g})")
        print(f"input {report['input']['layout']} {report['input']['shape']}; wrote {args.out}/export.json")

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
