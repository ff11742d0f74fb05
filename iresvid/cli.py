"""The ``iresvid`` command: thin argument parsing over the library.

Subcommands: ``train`` and ``test`` (also ``tools/train.py``, ``tools/test.py``), ``zoo`` (params and
GFLOPs of every model), ``make-demo-data ROOT`` (the synthetic motion dataset), ``bench`` (also
``tools/benchmark.py``), ``config`` (every config key with its type, default and meaning).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from iresvid.benchmarks import add_arguments as add_benchmark_arguments

# Errors that are the user's to fix: printed as one clear line, no traceback.
_USER_ERRORS = (
    "ConfigError",
    "CheckpointError",
    "CheckpointWriteError",
    "DatasetUnreadableError",
    "ExportCheckError",
)


def setup_logging(output_dir: str | Path | None) -> None:
    """INFO to stderr on the main process (warnings only elsewhere), and to ``output_dir/log.txt``."""
    rank = int(os.environ.get("RANK", "0"))
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if output_dir is not None and rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / "log.txt"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [{rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def run_guarded(fn) -> int:
    """Run a command; a mistake in its input ends it with a one-line message and exit code 2."""
    try:
        fn()
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ in _USER_ERRORS:
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from iresvid.zoo import format_table, zoo_rows

    def progress(row):
        print(f"  {row.name}", file=sys.stderr, flush=True)

    rows = zoo_rows(args.pattern, flops=not args.no_flops, progress=progress if args.verbose else None)
    if not rows:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print(format_table(rows, markdown=args.markdown))
    return 0


def _make_demo_data(args: argparse.Namespace) -> int:
    from iresvid.data.synthetic import make_demo_data

    summary = make_demo_data(args.root, layout=args.layout, seed=args.seed)
    print(summary.summary())
    return 0


def _train(args: argparse.Namespace) -> int:
    def run():
        import json

        from iresvid.config import load_config
        from iresvid.engine.trainer import train

        overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume else [])
        cfg = load_config(args.config, overrides)
        setup_logging(cfg.train.output_dir)
        print(json.dumps(train(cfg), indent=2))

    return run_guarded(run)


def _test(args: argparse.Namespace) -> int:
    def run():
        from iresvid.config import load_config
        from iresvid.engine.testing import run_test

        setup_logging(None)
        cfg = load_config(args.config, args.overrides) if args.config else None
        result, cfg, out = run_test(
            args.checkpoint, cfg, overrides=args.overrides, output_dir=args.output, use_ema=not args.no_ema
        )
        print(f"{'level':<7}{'top1':>8}{'top5':>8}{'mean-class':>12}{'samples':>9}")
        for name, meter in (("clip", result.clip), ("video", result.video)):
            m = meter.compute()
            print(
                f"{name:<7}{m['top1']:8.2f}{m['top5']:8.2f}{m['mean_class_accuracy']:12.2f}{m['num_samples']:9d}"
            )
        print(f"{cfg.data.num_clips} clips × {cfg.data.num_crops} crops per video; reports in {out}")

    return run_guarded(run)


def _bench(args: argparse.Namespace) -> int:
    from iresvid.benchmarks.runner import run

    return run(args, args.parser)


def _config(args: argparse.Namespace) -> int:
    from iresvid.config import describe_schema

    for key, type_name, default, help_text in describe_schema():
        print(f"{key:<32} {type_name:<18} {default:<28} {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iresvid", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from a YAML config (torchrun for several processes)")
    train.add_argument("--config", required=True, help="YAML file (see configs/)")
    train.add_argument("--resume", default=None, help="'auto' or a checkpoint path (sets train.resume)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=/data optim.lr=0.2")
    train.set_defaults(func=_train)

    test = sub.add_parser("test", help="clip- and video-level evaluation of a checkpoint, with reports")
    test.add_argument("--checkpoint", required=True)
    test.add_argument("--config", default=None, help="YAML config (default: the one in the checkpoint)")
    test.add_argument("--output", default=None, help="report folder (default: <checkpoint dir>/test)")
    test.add_argument("--no-ema", action="store_true", help="evaluate the raw weights, not their EMA")
    test.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=/data")
    test.set_defaults(func=_test)

    zoo = sub.add_parser("zoo", help="params and GFLOPs of every registered model")
    zoo.add_argument("--pattern", default="*", help="shell-style filter, e.g. 'iresnet3d*'")
    zoo.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")
    zoo.add_argument("--no-flops", action="store_true", help="parameters only (fast)")
    zoo.add_argument("-v", "--verbose", action="store_true", help="name each model as it is measured")
    zoo.set_defaults(func=_zoo)

    demo = sub.add_parser("make-demo-data", help="write the synthetic motion dataset (real encoded videos)")
    demo.add_argument("root")
    demo.add_argument("--layout", choices=("ucf101", "kinetics"), default="ucf101")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_make_demo_data)

    bench = sub.add_parser("bench", help="speed, memory and deep-gradient benchmarks, written as JSON")
    add_benchmark_arguments(bench)
    bench.set_defaults(func=_bench, parser=bench)

    config = sub.add_parser("config", help="every config key with its type, default and meaning")
    config.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
