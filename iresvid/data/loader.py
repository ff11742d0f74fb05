"""Batches: a resumable sharded sampler, a collate for frames of any size, and the device hand-off.

Frames of a batch may differ in size (a Kinetics batch mixes 4:3 and 16:9 videos): `collate_clips` pads them
to the largest and records each sample's ``size``; the crops on the device read only inside a sample's own
frame, so padding is never seen.  Batches stay uint8 until they reach the device (4× less to transfer).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from iresvid.data.transforms import CropFlipParams

_STACKED = ("label", "index", "valid", "video_index", "clip_index")


class ShardedSampler(Sampler):
    """The dataset order for (seed, epoch), split across processes, resumable mid-epoch.

    Yields ``(index, epoch)`` pairs so datasets draw per-epoch randomness without any state in the workers.
    Shuffled (training): each epoch is a permutation seeded by ``(seed, epoch)``, padded by wrapping around
    so every process gets the same number of samples (as ``DistributedSampler``); process ``rank`` takes
    positions ``rank, rank + world, …`` — so with a global batch split across processes, the union of one
    step's per-process batches is exactly the single-process batch of that step.
    Not shuffled (evaluation): dataset order, split the same way but never padded, so no sample counts twice.
    ``start`` skips this process's first samples of the epoch (resuming a checkpoint taken mid-epoch).
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} processes")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _positions(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.num_replicas))
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()
        total = math.ceil(self.size / self.num_replicas) * self.num_replicas
        order += order[: total - self.size]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._positions()[self.start :]:
            yield index, self.epoch

    def __len__(self) -> int:
        return max(0, len(self._positions()) - self.start)


def collate_clips(samples: list[dict]) -> dict:
    """Stack samples into a batch, padding frames to the largest (H, W) of the batch (zeros, never read).

    An evaluation item (a whole video, see `ClipDataset`) becomes one row per clip, with its ``clip_index``
    and that clip's ``valid``: evaluation batches hold clips, as the evaluator and feature extraction read
    them.  ``failures`` and ``rereads`` (an int, the sum over the batch) are taken per item.
    """
    rows = [row for sample in samples for row in _clip_rows(sample)]
    inputs = [s["input"] for s in rows]
    height = max(x.shape[-2] for x in inputs)
    width = max(x.shape[-1] for x in inputs)
    batch_input = inputs[0].new_zeros((len(inputs), *inputs[0].shape[:-2], height, width))
    for i, x in enumerate(inputs):
        batch_input[i, ..., : x.shape[-2], : x.shape[-1]] = x
    batch = {"input": batch_input, "size": torch.stack([s["size"] for s in rows])}
    for key in _STACKED:
        if key in rows[0]:
            batch[key] = torch.tensor([s[key] for s in rows])
    if "crop_box" in rows[0]:
        batch["augment"] = CropFlipParams(
            torch.stack([s["crop_box"] for s in rows]), torch.stack([s["flip"] for s in rows])
        )
    batch["failures"] = [f for s in samples for f in s["failures"]]
    batch["rereads"] = sum(int(s.get("rereads", 0)) for s in samples)
    return batch


def _clip_rows(sample: dict) -> list[dict]:
    """The batch rows of one item: itself, or for a whole video (``clip_valid``) one row per clip."""
    if "clip_valid" not in sample:
        return [sample]
    return [
        {**sample, "input": clip, "clip_index": k, "valid": valid}
        for k, (clip, valid) in enumerate(zip(sample["input"], sample["clip_valid"], strict=True))
    ]


def resolve_workers(setting: int) -> int:
    """``data.num_workers``, with -1 as one worker per CPU core of this process's share of the node (its
    cores over the node's training processes, torchrun's LOCAL_WORLD_SIZE), less one for the process."""
    if setting >= 0:
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1)


def build_loader(
    dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    start_method: str | None = None,
) -> DataLoader:
    """A DataLoader over `ShardedSampler` + `collate_clips` (``batch_size`` per process); ``num_workers=-1``
    starts `resolve_workers`'s count.

    ``start_method`` starts the workers by ``fork``, ``spawn`` or ``forkserver`` (None: Python's default,
    ``forkserver`` on Linux from Python 3.14).  Under spawn and forkserver the dataset is pickled into each
    worker: it holds only host-side state (the device augmentation stays in the main process), so no
    worker opens a CUDA context.
    """
    num_workers = resolve_workers(num_workers)
    sampler = ShardedSampler(len(dataset), shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_clips,
        drop_last=drop_last,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        multiprocessing_context=start_method if num_workers > 0 else None,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a batch's tensors to ``device`` (asynchronously from pinned memory); others stay as they are."""
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
