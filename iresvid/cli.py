"""The ``iresvid`` command: thin argument parsing over the library.

Subcommands: ``zoo`` (params and GFLOPs of every model), ``make-demo-data ROOT`` (the synthetic motion
dataset), ``config`` (every config key with its type, default and meaning).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Errors that are the user's to fix: printed as one clear line, no traceback.
_USER_ERRORS = ("ConfigError", "CheckpointError", "CheckpointWriteError", "DatasetUnreadableError")


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


def _config(args: argparse.Namespace) -> int:
    from iresvid.config import describe_schema

    for key, type_name, default, help_text in describe_schema():
        print(f"{key:<32} {type_name:<18} {default:<28} {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iresvid", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

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

    config = sub.add_parser("config", help="every config key with its type, default and meaning")
    config.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
