"""Distributed setup: torchrun's env:// variables, or SLURM's tasks (submitit, ``srun``), else one process."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from iresvid.engine.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    world_size: int
    rank: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), known before any process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def adopt_slurm_tasks() -> bool:
    """Describe SLURM's tasks in torchrun's variables, so that each task joins the process group itself.

    Under a submitit job (Hydra's ``hydra/launcher=submitit_slurm``) or ``srun`` with several tasks, SLURM
    starts one process per task with SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the node list; there is
    no torchrun.  The first node is the rendezvous, on a port derived from the job id (submitit's rule), so
    every task of the job finds the same address.  Nothing changes where torchrun's WORLD_SIZE is already set
    or where there is one task.  True when the variables were set.
    """
    if "WORLD_SIZE" in os.environ:
        return False
    submitit_job = "SUBMITIT_EXECUTOR" in os.environ
    if not submitit_job and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    if submitit_job:
        tasks = TorchDistributedEnvironment()
    else:  # plain srun: submitit reads SLURM's variables once told that it runs there
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"
        try:
            tasks = TorchDistributedEnvironment()
        finally:
            del os.environ["SUBMITIT_EXECUTOR"]
    if tasks.world_size <= 1:
        return False
    if "MASTER_ADDR" in os.environ:  # the user's rendezvous address wins (MASTER_PORT: submitit keeps it)
        tasks.master_addr = os.environ["MASTER_ADDR"]
    # every task sees the node's GPUs and takes LOCAL_RANK's
    tasks.export(set_cuda_visible_devices=False, overwrite=True)
    log.info(
        "SLURM tasks: rank %d of %d (local %d), rendezvous %s:%d",
        tasks.rank,
        tasks.world_size,
        tasks.local_rank,
        tasks.master_addr,
        tasks.master_port,
    )
    return True


def init_distributed(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Works across nodes (torchrun --nnodes N --rdzv-endpoint ..., or SLURM tasks described by
    `adopt_slurm_tasks`).  Without either: world size 1, no group.
    """
    world_size = env_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, setting="train.device")
    if target.type == "cuda" and target.index is None:  # each process takes its own GPU of the node
        target = torch.device("cuda", local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if target.type == "cuda" else "gloo"
        if rank == 0:
            _warn_if_restarts_share_a_store()
        # A bounded timeout: a rank that dies mid-collective ends the job instead of hanging it forever.
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(minutes=30))
    return DistInfo(world_size, rank, local_rank, target)


def _warn_if_restarts_share_a_store() -> None:
    """torchrun keeps one TCP store for all of a job's restarts by default; the processes of a restarted round
    can then read the addresses the previous round's processes published there and fail, or hang until the
    timeout, in `init_process_group` (pytorch/pytorch#135712; seen with gloo on torch 2.14 in most restarts of
    a 2-process job, some of them hangs).  ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` gives every round a store
    of its own: the processes cannot fix this, so rank 0 says how before joining.
    """
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if restarts > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        log.warning(
            "torchrun --max-restarts=%d shares one TCP store across restarts: a restarted round can fail or "
            "hang joining the process group (pytorch/pytorch#135712); run torchrun with "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment",
            restarts,
        )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
