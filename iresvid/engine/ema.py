"""The exponential moving average of a model's weights, updated on the model's device without a host sync.

``torch.optim.swa_utils.AveragedModel`` keeps its update count on the CPU (a blocking copy to the device
and a read of it every step) and, with ``use_buffers=True``, "averages" integer buffers too — BN's
``num_batches_tracked``, 53 of them in a ResNet-50 — into rounded garbage.  `ModelEma` averages the
floating-point weights and buffers in one fused ``_foreach_lerp_`` and copies the integer ones; its count
is a Python int.  Its ``state_dict`` keeps AveragedModel's layout (``module.<key>`` and ``n_averaged``), so
checkpoints of either kind load into both.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma(nn.Module):
    """``ema = decay · ema + (1 − decay) · weights`` after every `update_parameters`; the first update copies
    the weights (as ``AveragedModel`` with ``get_ema_multi_avg_fn`` does).  ``module`` is the averaged
    model, on ``model``'s device."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.updates = 0
        # On the CPU and written, never read, by the steps: AveragedModel's count, for its checkpoints.
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long), persistent=True)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ours = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        floating = [(a, b.detach()) for a, b in zip(ours, theirs, strict=True) if a.is_floating_point()]
        counters = [(a, b) for a, b in zip(ours, theirs, strict=True) if not a.is_floating_point()]
        averaged, current = [a for a, _ in floating], [b for _, b in floating]
        if self.updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        if counters:
            torch._foreach_copy_([a for a, _ in counters], [b for _, b in counters])
        self.updates += 1
        self.n_averaged.fill_(self.updates)

    def _apply(self, fn, recurse=True):
        # ``.to(device)`` moves the averaged model; the count stays where the steps never wait for it.
        count = self.n_averaged
        super()._apply(fn, recurse)
        self.n_averaged = count
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)
        return result
