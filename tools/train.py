"""Train a model: ``python tools/train.py --config configs/iresnet3d50_kinetics.yaml [key=value ...]``.

Several processes (GPUs, nodes): ``torchrun --nproc-per-node N tools/train.py --config ...``.  Resume the
latest checkpoint of the run's output folder with ``--resume auto`` (or give a checkpoint path).
Same as ``iresvid train``.
"""

import sys

from iresvid.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
