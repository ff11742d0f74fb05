"""Dims-generic layer factories: one call builds the 2D or the 3D version of a layer.

Kernel sizes and strides are given as ``(temporal, spatial)`` pairs.  With ``dims=2`` the temporal part is
ignored, so a block written once builds both the image model and its space-time inflation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def check_dims(dims: int) -> int:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 (images) or 3 (video), got {dims!r}")
    return dims


def nd(dims: int, temporal: int, spatial: int) -> tuple[int, ...]:
    """A size tuple for a ``dims``-d layer: ``(s, s)`` in 2D, ``(t, s, s)`` in 3D."""
    return (spatial, spatial) if check_dims(dims) == 2 else (temporal, spatial, spatial)


def conv(
    dims: int,
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> nn.Module:
    """Bias-free convolution (a norm always follows) with "same" padding; kernel and stride as (t, s)."""
    (kt, ks), (st, ss) = kernel, stride
    return _CONV[check_dims(dims)](
        in_channels,
        out_channels,
        kernel_size=nd(dims, kt, ks),
        stride=nd(dims, st, ss),
        padding=nd(dims, kt // 2, ks // 2),
        groups=groups,
        bias=False,
    )


def norm(dims: int, channels: int) -> nn.Module:
    return _NORM[check_dims(dims)](channels)


def max_pool(dims: int, kernel: tuple[int, int], stride: tuple[int, int]) -> nn.Module:
    (kt, ks), (st, ss) = kernel, stride
    return _MAXPOOL[check_dims(dims)](
        kernel_size=nd(dims, kt, ks), stride=nd(dims, st, ss), padding=nd(dims, kt // 2, ks // 2)
    )


def se_width(channels: int, reduction: int = 16, divisor: int = 1) -> int:
    """The SE bottleneck width: ``channels // reduction``, or with ``divisor > 1`` timm's
    ``make_divisible(channels / reduction, divisor)`` (nearest multiple, at least ``divisor``: 64 / 16 → 8),
    which its SE-ResNets use; the two agree whenever ``channels / reduction`` is a multiple of ``divisor``."""
    if divisor <= 1:
        return max(1, channels // reduction)
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): channel gates from the global average over time and space.

    Written with ``Linear`` layers on the pooled vector, so the same module serves 2D and 3D; the
    parameters equal a 1×1 conv with bias, as in the SENet and timm reference models.
    """

    def __init__(self, channels: int, reduction: int = 16, divisor: int = 1):
        super().__init__()
        hidden = se_width(channels, reduction, divisor)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.flatten(2).mean(-1)
        gates = torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))
        return x * gates.view(gates.shape + (1,) * (x.ndim - 2))


# ------------------------------------------------------------------------------ norm and activation choice


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine parameters, for 2D and 3D (small-batch fine-tuning).

    Its buffers have BatchNorm's names (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``), so official and torchvision checkpoints load into it exactly; in every mode it
    computes what BatchNorm computes in eval mode.  Nothing in it is trained.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batch_norm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm:
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
                frozen.num_batches_tracked.copy_(bn.num_batches_tracked)
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm's own eval-mode kernel: the same numbers as BatchNorm in eval mode, to the last bit.
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (Wu & He), fewer where ``channels`` needs it (narrow test models)."""
    return nn.GroupNorm(math.gcd(channels, max_groups), channels)


# Built from a model's BatchNorms at the same names: checkpoint keys stay those of the official code.
NORM_LAYERS: dict[str, Callable[[nn.modules.batchnorm._BatchNorm], nn.Module]] = {
    "batchnorm": lambda bn: bn,
    "frozen_batchnorm": FrozenBatchNorm.from_batch_norm,
    "groupnorm": lambda bn: group_norm(bn.num_features),
}
ACT_LAYERS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def get_act_layer(act_layer: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if callable(act_layer):
        return act_layer
    if act_layer not in ACT_LAYERS:
        raise ValueError(
            f"unknown act_layer {act_layer!r}; expected one of {sorted(ACT_LAYERS)} or a Module class"
        )
    return ACT_LAYERS[act_layer]


def replace_norms(module: nn.Module, norm_layer: str | Callable[[int], nn.Module]) -> nn.Module:
    """Swap every BatchNorm under ``module`` for ``norm_layer`` (a `NORM_LAYERS` name, or a callable taking
    the channel count), keeping each module's name.  Returns ``module``."""
    if isinstance(norm_layer, str):
        if norm_layer not in NORM_LAYERS:
            raise ValueError(
                f"unknown norm_layer {norm_layer!r}; expected one of {sorted(NORM_LAYERS)} or a callable"
            )
        if norm_layer == "batchnorm":
            return module
        make = NORM_LAYERS[norm_layer]
    else:

        def make(bn):
            return norm_layer(bn.num_features)

    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, make(child))
        else:
            replace_norms(child, norm_layer)
    return module
