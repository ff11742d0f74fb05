"""Optimizer with the usual no-decay groups, and per-step learning-rate schedules with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

from iresvid.config import OptimConfig, ScheduleConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_size: int) -> torch.optim.Optimizer:
    """SGD or AdamW at ``lr × batch_size / base_batch_size`` (linear scaling).

    With ``no_decay_norm_bias``, 1-D parameters (BN weights and biases, all biases) get no weight decay, as
    in SlowFast's and timm's recipes: decaying BN scales only fights the normalisation.
    """
    lr = cfg.lr * batch_size / cfg.base_batch_size
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if cfg.no_decay_norm_bias and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))


def lr_factor(step: int, cfg: ScheduleConfig, steps_per_epoch: int) -> float:
    """The learning rate at optimizer step ``step`` as a fraction of the peak."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / warmup
    if cfg.name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "multistep":
        epoch = step / steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule (stepped after every optimizer step); its state is the step count."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))
