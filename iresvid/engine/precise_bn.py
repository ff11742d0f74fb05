"""Precise BN (SlowFast, after Wu & Johnson 2021): BN statistics recomputed as exact averages over a few
training batches before evaluation, since running averages lag behind weights that still move.

Only the BN layers that train: a fine-tuning run keeps frozen stages and ``norm_eval`` layers in eval mode
(`ResNet.train`), and their pretrained statistics must survive — resetting them all, as a plain loop over
every BN does, would leave those layers at mean 0 / variance 1 for good.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from iresvid.engine.device import autocast
from iresvid.engine.dist import all_reduce_sum


def training_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers whose running statistics a forward pass in training mode updates."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]


@torch.no_grad()
def update_bn_stats(
    model: nn.Module,
    inputs: Iterable[torch.Tensor],
    *,
    amp_dtype: torch.dtype | None = None,
    world_size: int = 1,
) -> int:
    """Set the running mean and variance of ``model``'s training BN layers to their averages over ``inputs``
    (each one batch, already on the model's device and augmented as in training); returns the number of
    batches seen.

    The model is put in training mode first, so layers its ``train()`` keeps in eval mode are left exactly
    as they are.  Batch ``k`` gets momentum ``1 / (k + 1)``, a Python float: the running value becomes the
    cumulative average without BN's ``momentum=None`` path, which reads ``num_batches_tracked`` back to the
    host on every layer of every batch.  ``amp_dtype`` is the training step's autocast dtype (statistics of
    a bf16 model are those of its bf16 activations).  Under DDP (``world_size > 1``) every process saw other
    batches: their statistics are averaged.
    """
    was_training = model.training
    model.train()
    norms = training_norms(model)
    momenta = [m.momentum for m in norms]
    counts = [m.num_batches_tracked.clone() for m in norms]  # untouched by precise BN
    seen = 0
    try:
        for batch in inputs:
            for m in norms:
                m.momentum = 1.0 / (seen + 1)
            with autocast(batch.device, amp_dtype):
                model(batch)
            seen += 1
    finally:
        for m, momentum, count in zip(norms, momenta, counts, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
        model.train(was_training)
    if world_size > 1:
        for m in norms:
            for buffer in (m.running_mean, m.running_var):
                all_reduce_sum(buffer).div_(world_size)
    return seen
