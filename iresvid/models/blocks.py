"""Residual blocks, written once for 2D and 3D, with their ResStage role as data.

Duta et al. (ICPR 2020) split a stage into a Start block, Middle blocks and an End block, which differ only
in where the norms and ReLUs sit.  A `BlockRole` records exactly that, so the plain ResNet block, the
pre-activation block and the four ResStage roles are one `forward` with different flags:

=============  ==================  ====================  ==============  ================
role           before the branch   last norm             after the add   used by
=============  ==================  ====================  ==============  ================
plain          —                   before the add        ReLU            ResNet, ResNeXt, ResGroup
start          —                   before the add        —               ResStage / iResNet
first_middle   ReLU (on identity)  —                     —               ResStage / iResNet
middle         BN0 → ReLU          —                     —               ResStage / iResNet
end            BN0 → ReLU          after the add → ReLU                  ResStage / iResNet
end_no_bn0     ReLU (on identity)  after the add → ReLU                  2-block stages
preact         BN0 → ReLU          —                     —               pre-activation ResNet (v2)
=============  ==================  ====================  ==============  ================

A Middle block *is* a pre-activation block (the paper makes this point); `preact` differs only in name.
Module names follow the official iResNet / torchvision code (``bn0``, ``conv1``, ``bn1``, …, the last norm
is ``bn2`` in basic and ``bn3`` in bottleneck blocks, ``downsample``), so their checkpoints load by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from iresvid.models.layers import SqueezeExcite, conv, max_pool, norm


@dataclass(frozen=True)
class BlockRole:
    name: str
    pre_norm: bool  # BN0 → ReLU before the first conv
    pre_relu: bool  # ReLU without a BN before the first conv (reaches the identity too)
    norm_before_add: bool
    norm_after_add: bool  # then a ReLU as well
    relu_after_add: bool


PLAIN = BlockRole("plain", False, False, True, False, True)
START = BlockRole("start", False, False, True, False, False)
FIRST_MIDDLE = BlockRole("first_middle", False, True, False, False, False)
MIDDLE = BlockRole("middle", True, False, False, False, False)
END = BlockRole("end", True, False, False, True, True)
END_NO_BN0 = BlockRole("end_no_bn0", False, True, False, True, True)
PREACT = BlockRole("preact", True, False, False, False, False)

ROLE_SCHEMES = ("plain", "resstage", "preact")


def stage_roles(num_blocks: int, scheme: str) -> list[BlockRole]:
    """The role of every block of one stage, as the official ResStage/iResNet ``_make_layer`` assigns them."""
    if num_blocks < 1:
        raise ValueError(f"a stage needs at least one block, got {num_blocks}")
    if scheme == "plain":
        return [PLAIN] * num_blocks
    if scheme == "preact":
        return [PREACT] * num_blocks
    if scheme != "resstage":
        raise ValueError(f"unknown block role scheme {scheme!r}; expected one of {ROLE_SCHEMES}")
    if num_blocks < 2:
        # The official code would silently build two blocks here; refuse instead of changing the depth.
        raise ValueError(f"ResStage roles need at least 2 blocks per stage (Start and End), got {num_blocks}")
    if num_blocks == 2:
        return [START, END_NO_BN0]
    return [START, FIRST_MIDDLE] + [MIDDLE] * (num_blocks - 3) + [END]


def make_shortcut(
    dims: int,
    in_channels: int,
    out_channels: int,
    stride: tuple[int, int],
    kind: str,
    pool_temporal_kernel: int = 3,
) -> nn.Module | None:
    """The projection shortcut of a stage's first block, or None for the identity.

    ``kind="conv"``: the usual strided 1×1 conv → BN.  ``kind="improved"`` (iResNet): the stride is taken by
    a 3×3 max-pool that sees every activation, then a stride-1 1×1 conv → BN changes the channels; with
    only a stride change the max-pool stands alone, with only a channel change the conv → BN does.  The
    ``Sequential`` indices (0 conv / 1 BN, or 0 pool / 1 conv / 2 BN) are those of the official code.
    """
    strided = stride[1] != 1 or (dims == 3 and stride[0] != 1)
    if not strided and in_channels == out_channels:
        return None
    if kind == "conv":
        return nn.Sequential(conv(dims, in_channels, out_channels, (1, 1), stride), norm(dims, out_channels))
    if kind != "improved":
        raise ValueError(f"unknown shortcut kind {kind!r}; expected 'conv' or 'improved'")
    pool = max_pool(dims, (pool_temporal_kernel, 3), stride) if strided else None
    if in_channels == out_channels:
        return pool
    project = [conv(dims, in_channels, out_channels, (1, 1)), norm(dims, out_channels)]
    return nn.Sequential(pool, *project) if pool is not None else nn.Sequential(*project)


class ResidualBlock(nn.Module):
    """The role logic shared by every block; subclasses define the branch's convs.

    Modules are registered in the official order (bn0, branch, downsample), so state dicts list their keys
    exactly as the official checkpoints do.
    """

    num_convs: int

    def __init__(
        self,
        dims: int,
        in_channels: int,
        width: int,
        out_channels: int,
        *,
        role: BlockRole = PLAIN,
        stride: tuple[int, int] = (1, 1),
        groups: int = 1,
        temporal_kernels: tuple[int, ...] | None = None,
        downsample: nn.Module | None = None,
        se_reduction: int | None = None,
        se_divisor: int = 1,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
    ):
        super().__init__()
        self.act = act_layer()  # no parameters: checkpoint keys are unchanged
        self.role = role.name
        self.pre_relu = role.pre_relu
        self.norm_before_add = role.norm_before_add
        self.norm_after_add = role.norm_after_add
        self.relu_after_add = role.relu_after_add
        self.bn0 = norm(dims, in_channels) if role.pre_norm else None
        kernels = temporal_kernels or (1,) * self.num_convs
        if len(kernels) != self.num_convs:
            raise ValueError(
                f"{type(self).__name__} has {self.num_convs} convs, got temporal kernels {kernels}"
            )
        self._build_branch(dims, in_channels, width, out_channels, stride, groups, kernels)
        if role.norm_before_add or role.norm_after_add:
            self.add_module(self.last_norm_name, norm(dims, out_channels))
        else:
            self.add_module(self.last_norm_name, None)
        self.se = SqueezeExcite(out_channels, se_reduction, se_divisor) if se_reduction else None
        self.downsample = downsample

    last_norm_name: str

    def _build_branch(self, dims, in_channels, width, out_channels, stride, groups, temporal_kernels) -> None:
        raise NotImplementedError

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_relu:
            # The official code applies an in-place ReLU to the block input here, after `identity = x` has
            # aliased it, so the identity path carries ReLU(x) as well.  Its weights depend on this.
            x = self.act(x)
        identity = x
        out = x
        if self.bn0 is not None:
            out = self.act(self.bn0(x))
        if self.downsample is not None:
            # A pre-activation block projects the pre-activated input (ResNet v2); otherwise out is x.
            identity = self.downsample(out)
        out = self._branch(out)
        last_norm = getattr(self, self.last_norm_name)
        if self.norm_before_add:
            out = last_norm(out)
        if self.se is not None:
            out = self.se(out)
        out = out + identity
        if self.norm_after_add:
            out = last_norm(out)
        if self.relu_after_add:
            out = self.act(out)
        return out


class BasicBlock(ResidualBlock):
    """Two 3×3 convs; the stride (spatial and temporal) sits on the first.  Last norm: ``bn2``."""

    num_convs = 2
    last_norm_name = "bn2"

    def _build_branch(self, dims, in_channels, width, out_channels, stride, groups, temporal_kernels):
        if groups != 1:
            raise ValueError("basic blocks do not support grouped convolutions")
        kt1, kt2 = temporal_kernels
        self.conv1 = conv(dims, in_channels, width, (kt1, 3), stride)
        self.bn1 = norm(dims, width)
        self.conv2 = conv(dims, width, out_channels, (kt2, 3))

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.bn1(self.conv1(x))))


class Bottleneck(ResidualBlock):
    """1×1 → 3×3 (grouped, strided) → 1×1.  Last norm: ``bn3``.

    ``width`` and ``out_channels`` are free, so the same block is the ResNet bottleneck (out = 4 × width),
    the ResNeXt block (grouped, wider) and the ResGroup block (out = width / 2, many groups).  The stride
    sits on the 3×3 conv ("ResNet v1.5", as in torchvision and the official iResNet code).
    """

    num_convs = 3
    last_norm_name = "bn3"

    def _build_branch(self, dims, in_channels, width, out_channels, stride, groups, temporal_kernels):
        kt1, kt2, kt3 = temporal_kernels
        self.conv1 = conv(dims, in_channels, width, (kt1, 1))
        self.bn1 = norm(dims, width)
        self.conv2 = conv(dims, width, width, (kt2, 3), stride, groups=groups)
        self.bn2 = norm(dims, width)
        self.conv3 = conv(dims, width, out_channels, (kt3, 1))

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        return self.conv3(out)


BLOCKS: dict[str, type[ResidualBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
