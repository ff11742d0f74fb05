"""Train a model: ``python tools/train.py --config configs/iresnet3d50_kinetics.yaml [key=value ...]``.

Several processes (GPUs, nodes): ``torchrun --nproc-per-node N tools/train.py --config ...``.
Resume the latest checkpoint of the run's output folder with ``--resume auto`` (or give a checkpoint path).
"""

from __future__ import annotations

import argparse
import json
import sys

from iresvid.cli import run_guarded, setup_logging
from iresvid.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML file (see configs/)")
    parser.add_argument("--resume", default=None, help="'auto' or a checkpoint path (sets train.resume)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=/data optim.lr=0.2")
    args = parser.parse_args(argv)

    def run():
        from iresvid.engine.trainer import train

        overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume else [])
        cfg = load_config(args.config, overrides)
        setup_logging(cfg.train.output_dir)
        metrics = train(cfg)
        print(json.dumps(metrics, indent=2))

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
