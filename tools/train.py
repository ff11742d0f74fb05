"""Train a model: ``python tools/train.py --config configs/iresnet3d50_kinetics.yaml [key=value ...]``.

Through Hydra (`iresvid.engine.launch`): overrides in Hydra's grammar, ``-m`` for a multirun sweep
(``-m optim.lr=0.05,0.1`` trains both, then prints one table), ``-m hydra/launcher=submitit_slurm
hydra.launcher.nodes=2 ...`` for SLURM jobs that requeue themselves when preempted.

Several processes (GPUs, nodes): ``torchrun --nproc-per-node N tools/train.py --config ...``.  Resume the
latest checkpoint of the run's output folder with ``--resume auto`` (or give a checkpoint path).
Same as ``iresvid train``.

Automatic restarts after a failure: ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --max-restarts 3 ...
tools/train.py --config ... --resume auto`` (with ``train.save_every_steps`` for mid-epoch checkpoints).
The variable gives each restarted round a TCP store of its own: in the shared one, a restarted round can
pick up the previous round's addresses and fail or hang joining the process group (pytorch/pytorch#135712).
"""

import sys

from iresvid.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
