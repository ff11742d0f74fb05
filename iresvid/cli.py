"""The ``iresvid`` command: thin argument parsing over the library.

iresvid zoo [--pattern 'iresnet*'] [--markdown] [--no-flops]
iresvid make-demo-data ROOT [--layout ucf101|kinetics] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys


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
    print(summary)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
