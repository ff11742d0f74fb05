"""Dims-generic layer factories: one call builds the 2D or the 3D version of a layer.

Kernel sizes and strides are given as ``(temporal, spatial)`` pairs.  With ``dims=2`` the temporal part is
ignored, so a block written once builds both the image model and its space-time inflation.
"""

from __future__ import annotations

import torch
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


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): channel gates from the global average over time and space.

    Written with ``Linear`` layers on the pooled vector, so the same module serves 2D and 3D; the
    parameters equal a 1×1 conv with bias, as in the SENet and timm reference models.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.flatten(2).mean(-1)
        gates = torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))
        return x * gates.view(gates.shape + (1,) * (x.ndim - 2))
