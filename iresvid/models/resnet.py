"""One residual network class for every family, in 2D and 3D, and the family specs.

A family is a `ResNetSpec`: block type, blocks per stage, widths, groups, role scheme, shortcut, stem.
`ResNet(spec, dims=3, inflate="slow")` is the space-time version of `ResNet(spec, dims=2)`: the same modules,
with a temporal kernel per conv chosen by the inflation pattern, so 2D checkpoints inflate by name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from iresvid.models.blocks import BLOCKS, ResidualBlock, make_shortcut, stage_roles
from iresvid.models.features import FeatureInfo, take_indices
from iresvid.models.layers import check_dims, conv, get_act_layer, max_pool, norm, replace_norms

# ---------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ResNetSpec:
    """Everything that tells one residual family from another."""

    block: str  # "basic" | "bottleneck"
    layers: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # width of each stage's 3×3 conv
    out_channels: tuple[int, ...]  # channels each stage outputs
    groups: tuple[int, ...]  # groups of each stage's 3×3 conv
    roles: str = "plain"  # "plain" | "resstage" | "preact"  (see blocks.py)
    shortcut: str = "conv"  # "conv" | "improved" (max-pool → 1×1 conv → BN)
    stem: str = "conv7_pool"  # "conv7_pool" (ResNet) | "conv7" (iResNet: no max-pool) | "conv3" (CIFAR)
    stage_strides: tuple[int, ...] = (1, 2, 2, 2)
    stem_width: int = 64
    se_reduction: int | None = None
    # SE width rounding (`layers.se_width`): 1 is channels // reduction; 8 is timm's make_divisible, which
    # the basic-block SE-ResNets (timm's seresnet18/34, the only published ones) need: 64 / 16 → 8, not 4.
    se_divisor: int = 1

    def __post_init__(self):
        n = len(self.layers)
        for field in ("widths", "out_channels", "groups", "stage_strides"):
            if len(getattr(self, field)) != n:
                raise ValueError(
                    f"ResNetSpec.{field} needs one entry per stage ({n}), got {getattr(self, field)}"
                )
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}; expected one of {sorted(BLOCKS)}")
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; expected one of {STEMS}")
        for stage, (width, groups) in enumerate(zip(self.widths, self.groups, strict=True), 1):
            if width % groups:
                raise ValueError(f"stage {stage}: width {width} is not divisible by {groups} groups")

    def scaled(self, width_scale: float) -> ResNetSpec:
        """The same family at a fraction of the width (for tests and tiny demos); channels per group kept."""
        if width_scale == 1:
            return self

        def scale(c: int) -> int:
            return max(1, round(c * width_scale))

        groups = tuple(max(1, round(g * width_scale)) if g > 1 else 1 for g in self.groups)
        widths = tuple(max(g, scale(w) // g * g) for w, g in zip(self.widths, groups, strict=True))
        return dataclasses.replace(
            self,
            widths=widths,
            groups=groups,
            out_channels=tuple(scale(c) for c in self.out_channels),
            stem_width=scale(self.stem_width),
        )


STEMS = ("conv7_pool", "conv7", "conv3")

# Blocks per stage of the official code (ResNet, ResStage, iResNet, ResGroup); other depths are derived.
BOTTLENECK_LAYERS = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    302: (4, 34, 58, 4),
    404: (4, 46, 80, 4),
    1001: (4, 155, 170, 4),
}
BASIC_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def stage_layers(depth: int, block: str) -> tuple[int, ...]:
    """Blocks per stage for a 4-stage ImageNet-style net of ``depth`` weighted layers.

    The official tables first; any other depth ``d`` with ``(d - 2)`` divisible by the convs per block is
    spread like the paper's very deep nets: stages 1 and 4 keep 3 blocks (4 from 302 layers on), stages 2
    and 3 share the rest 1 : 2 (rounded), so ``depth`` is exact.
    """
    table = BASIC_LAYERS if block == "basic" else BOTTLENECK_LAYERS
    if depth in table:
        return table[depth]
    convs = 2 if block == "basic" else 3
    if depth < 2 + convs * 8 or (depth - 2) % convs:
        raise ValueError(
            f"depth {depth} does not fit {block} blocks: need (depth - 2) divisible by {convs} and at least "
            f"{2 + convs * 8} layers; official depths are {sorted(table)}"
        )
    total = (depth - 2) // convs
    outer = 4 if depth >= 302 else 3
    inner = total - 2 * outer
    second = max(2, round(inner / 3))
    return (outer, second, inner - second, outer)


def resnet_spec(
    depth: int,
    *,
    roles: str = "plain",
    improved: bool = False,
    groups: int = 1,
    width_per_group: int = 64,
    se: bool = False,
) -> ResNetSpec:
    """ResNet / pre-activation ResNet / ResStage / iResNet / ResNeXt / SE variants at any depth.

    ``improved=True`` is the full iResNet package: improved shortcut, stem without max-pool, and a stride-2
    first stage (so the network still reduces the input 32×).
    """
    block = "basic" if depth in BASIC_LAYERS else "bottleneck"
    expansion = 1 if block == "basic" else 4
    planes = (64, 128, 256, 512)
    widths = tuple(p * width_per_group // 64 * groups for p in planes)
    return ResNetSpec(
        block=block,
        layers=stage_layers(depth, block),
        widths=widths,
        out_channels=tuple(p * expansion for p in planes),
        groups=(groups,) * 4,
        roles=roles,
        shortcut="improved" if improved else "conv",
        stem="conv7" if improved else "conv7_pool",
        stage_strides=(2, 2, 2, 2) if improved else (1, 2, 2, 2),
        se_reduction=16 if se else None,
        # Bottleneck SE widths are multiples of 8 at full width either way; floor keeps scaled nets as before.
        se_divisor=8 if se and block == "basic" else 1,
    )


def resgroup_spec(depth: int, *, fixed_groups: bool, improved: bool = False) -> ResNetSpec:
    """ResGroup(Fix) and iResGroup(Fix): bottleneck width W = 256·2^i, output W/2, 64 groups at most.

    ResGroup keeps 32 channels per group (8/16/32/64 groups); ResGroupFix uses 64 groups in every stage.
    The i-variants add ResStage roles, the improved shortcut and the iResNet stem, as in the official code.
    """
    widths = (256, 512, 1024, 2048)
    return ResNetSpec(
        block="bottleneck",
        layers=stage_layers(depth, "bottleneck"),
        widths=widths,
        out_channels=tuple(w // 2 for w in widths),
        groups=(64,) * 4 if fixed_groups else (8, 16, 32, 64),
        roles="resstage" if improved else "plain",
        shortcut="improved" if improved else "conv",
        stem="conv7" if improved else "conv7_pool",
        stage_strides=(2, 2, 2, 2) if improved else (1, 2, 2, 2),
    )


def cifar_spec(depth: int, *, roles: str = "plain", improved: bool = False) -> ResNetSpec:
    """CIFAR nets of He et al.: 3×3 stem, three stages of 16/32/64 channels, basic blocks, depth = 6n + 2.

    ``improved`` swaps in the improved shortcut; the stem and strides stay CIFAR's (the input is 32×32).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR depth must be 6n + 2 with n >= 1 (e.g. 20, 56, 110, 3002), got {depth}")
    n = (depth - 2) // 6
    channels = (16, 32, 64)
    return ResNetSpec(
        block="basic",
        layers=(n, n, n),
        widths=channels,
        out_channels=channels,
        groups=(1, 1, 1),
        roles=roles,
        shortcut="improved" if improved else "conv",
        stem="conv3",
        stage_strides=(1, 2, 2),
        stem_width=16,
    )


# ------------------------------------------------------------------------------------------ inflation

INFLATIONS = ("slow", "i3d", "i3d_r50", "full", "c2d")
# Stem temporal kernel per pattern: Slow-only and C2D keep the 1×7×7 stem, I3D uses 5×7×7, R3D 3×7×7.
STEM_TEMPORAL_KERNEL = {"slow": 1, "i3d": 5, "i3d_r50": 5, "full": 3, "c2d": 1}


def block_temporal_kernels(inflate: str, num_convs: int, stage: int, index: int, num_stages: int) -> tuple:
    """Temporal kernel of each conv of one block under an inflation pattern.

    - ``slow`` (SlowFast's Slow pathway, pytorchvideo ``slow_r50``): 3 on the first conv of every block in
      the last two stages (res4, res5), 1 elsewhere.
    - ``i3d``: 3 on the first conv of alternate blocks — even blocks, but odd blocks in the last stage.
    - ``i3d_r50`` (pytorchvideo ``i3d_r50``; mmaction2's I3D R50 inflates the same convs): as ``i3d``, but
      every block of the first stage is inflated.
    - ``full`` (R3D): every 3×3 conv becomes 3×3×3; 1×1 convs stay 1×1×1.
    - ``c2d``: no temporal kernel anywhere; a per-frame 2D network.
    """
    ones = (1,) * num_convs
    first = (3,) + (1,) * (num_convs - 1)
    if inflate == "c2d":
        return ones
    if inflate == "slow":
        return first if stage >= num_stages - 2 else ones
    if inflate == "i3d_r50" and stage == 0:
        return first
    if inflate in ("i3d", "i3d_r50"):
        inflated = index % 2 == (1 if stage == num_stages - 1 else 0)
        return first if inflated else ones
    if inflate == "full":
        return (1, 3, 1) if num_convs == 3 else (3, 3)
    raise ValueError(f"unknown inflate pattern {inflate!r}; expected one of {INFLATIONS}")


# -------------------------------------------------------------------------------------------- network


class ResNet(nn.Module):
    """A residual network of any family (`ResNetSpec`), as an image (dims=2) or video (dims=3) model.

    Input ``(N, C, H, W)`` or ``(N, C, T, H, W)``.  Module names follow torchvision and the official iResNet
    code (``conv1``, ``bn1``, ``layer1``…, ``fc``).  The interface is timm's: `forward_features`,
    `forward_head`, `reset_classifier`, `feature_info` (a `FeatureInfo`), `forward_intermediates` and
    `prune_intermediate_layers` (used by ``features_only``).

    3D knobs: ``inflate`` (see `block_temporal_kernels`), ``stem_temporal_kernel`` (default per pattern),
    ``temporal_strides`` per stage (default 1: the clip length is kept to the head, as in Slow-only R50),
    ``stage1_temporal_pool`` (default 1: none; 2 is the k×1×1 max-pool, stride k, that pytorchvideo's
    ``c2d_r50`` / ``i3d_r50`` put between the first and second stage: the clip is halved once; no parameters,
    so state dict keys are unchanged, and feature level 1 is the first stage's output before it).
    Backbone knobs: ``frozen_stages`` (−1 none, 0 stem, k stem + stages 1..k), ``norm_eval`` (BN layers stay
    in eval mode while training, for small-batch fine-tuning), ``zero_init_last`` (each residual branch
    starts at zero, so every block starts as the identity), ``norm_layer`` ("batchnorm", "frozen_batchnorm"
    (fixed statistics, loads BatchNorm checkpoints exactly), "groupnorm", or a callable taking the channels;
    module names are kept) and ``act_layer`` ("relu", "silu", "gelu" or a Module class; parameterless, so
    checkpoints still load, though only ReLU reproduces their logits).
    """

    def __init__(
        self,
        spec: ResNetSpec,
        *,
        dims: int = 2,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        inflate: str = "slow",
        stem_temporal_kernel: int | None = None,
        stem_temporal_stride: int = 1,
        temporal_strides: Sequence[int] | None = None,
        stage1_temporal_pool: int = 1,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        zero_init_last: bool = False,
        norm_layer: str | Callable[[int], nn.Module] = "batchnorm",
        act_layer: str | Callable[[], nn.Module] = "relu",
    ):
        super().__init__()
        act_layer = get_act_layer(act_layer)
        self.spec = spec
        self.dims = check_dims(dims)
        self.inflate = inflate if dims == 3 else "c2d"
        num_stages = len(spec.layers)
        if dims == 3 and inflate not in INFLATIONS:
            raise ValueError(f"unknown inflate pattern {inflate!r}; expected one of {INFLATIONS}")
        temporal_strides = tuple(temporal_strides or (1,) * num_stages)
        if len(temporal_strides) != num_stages:
            raise ValueError(f"temporal_strides needs {num_stages} entries, got {temporal_strides}")
        if stem_temporal_kernel is None:
            stem_temporal_kernel = STEM_TEMPORAL_KERNEL[self.inflate]
        if stage1_temporal_pool != 1 and (dims != 3 or stage1_temporal_pool < 1 or num_stages < 2):
            raise ValueError(
                f"stage1_temporal_pool={stage1_temporal_pool!r} needs a 3D model with 2 or more stages and a "
                f"kernel >= 1 (1: no pool; 2: pytorchvideo's c2d_r50 / i3d_r50)"
            )
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.grad_checkpointing = False

        # --- stem: names as in torchvision / timm (conv1, bn1, act1, maxpool); pre-activation nets leave the
        # norm and ReLU to their first block.  ``act1`` has no parameters: checkpoint keys are unchanged.
        kernel = 3 if spec.stem == "conv3" else 7
        stem_stride = 1 if spec.stem == "conv3" else 2
        self.conv1 = conv(
            dims,
            in_chans,
            spec.stem_width,
            (stem_temporal_kernel, kernel),
            (stem_temporal_stride, stem_stride),
        )
        self.bn1 = norm(dims, spec.stem_width) if spec.roles != "preact" else None
        self.act1 = act_layer() if self.bn1 is not None else None
        self.maxpool = max_pool(dims, (1, 3), (1, 2)) if spec.stem == "conv7_pool" else None
        # Level 0 is the stem's activation before the max-pool, as in timm's ResNet (reduction 2).
        reduction = stem_stride
        self.feature_info = FeatureInfo(
            [
                dict(
                    num_chs=spec.stem_width,
                    reduction=reduction,
                    module="conv1" if self.act1 is None else "act1",
                )
            ]
        )
        if self.maxpool is not None:
            reduction *= 2

        # --- stages
        # C2D stays a per-frame network: its max-pool shortcuts do not pool over time either.
        pool_kt = 1 if self.inflate == "c2d" else 3
        block_cls = BLOCKS[spec.block]
        channels = spec.stem_width
        self.stage_names = []
        for s in range(num_stages):
            blocks = []
            for b, role in enumerate(stage_roles(spec.layers[s], spec.roles)):
                stride = (temporal_strides[s], spec.stage_strides[s]) if b == 0 else (1, 1)
                out = spec.out_channels[s]
                shortcut = (
                    make_shortcut(dims, channels, out, stride, spec.shortcut, pool_kt) if b == 0 else None
                )
                blocks.append(
                    block_cls(
                        dims,
                        channels,
                        spec.widths[s],
                        out,
                        role=role,
                        stride=stride,
                        groups=spec.groups[s],
                        temporal_kernels=block_temporal_kernels(
                            self.inflate, block_cls.num_convs, s, b, num_stages
                        ),
                        downsample=shortcut,
                        se_reduction=spec.se_reduction,
                        se_divisor=spec.se_divisor,
                        act_layer=act_layer,
                    )
                )
                channels = out
            name = f"layer{s + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            reduction *= spec.stage_strides[s]
            self.feature_info.append(dict(num_chs=channels, reduction=reduction, module=name))

        # Applied on the way into the second stage (after layer1's feature level), as pytorchvideo's block 2.
        k = stage1_temporal_pool
        self.stage1_pool = nn.MaxPool3d((k, 1, 1), stride=(k, 1, 1)) if k != 1 else None

        # Pre-activation nets end on a BN → ReLU (their last block adds without normalising).
        self.final_norm = norm(dims, channels) if spec.roles == "preact" else None
        self.final_act = act_layer() if self.final_norm is not None else None
        self.num_features = channels
        self.drop_rate = drop_rate
        self.fc = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes
        self._zero_init_last = zero_init_last
        self._init_weights(zero_init_last)
        # Other norms take the BatchNorms' places (and names), after their init: keys stay the official ones.
        replace_norms(self, norm_layer)
        self._freeze_stages()

    def init_weights(self, pretrained: str | os.PathLike | None = None) -> None:
        """mmaction2's backbone hook: every weight as at construction (Kaiming-normal convs, norms 1 / 0), or
        the checkpoint ``pretrained`` loaded as `create_model` loads one (converted, 2D inflated to 3D)."""
        if pretrained is not None:
            from iresvid.models.weights import load_pretrained

            load_pretrained(self, pretrained)
            return
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                m.reset_parameters()  # PyTorch's default, as at construction
        self._init_weights(self._zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        # As the official code: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0.  Linear layers keep
        # PyTorch's default init (as torchvision and the official code do).
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            # The official zero_init_residual names `bn3` on blocks that have none; instead, zero whatever
            # ends the branch: its BN when one precedes the add, else its last conv.
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    if m.norm_before_add:
                        nn.init.zeros_(getattr(m, m.last_norm_name).weight)
                    else:
                        nn.init.zeros_(getattr(m, f"conv{m.num_convs}").weight)

    # ------------------------------------------------------------------------------ backbone knobs

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem = [m for m in (self.conv1, self.bn1) if m is not None]
        return stem + [getattr(self, n) for n in self.stage_names[: self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations (deep 3D nets)."""
        self.grad_checkpointing = enable

    # ------------------------------------------------------------------------------------- forward

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.dims + 2:
            layout = "(N, C, H, W)" if self.dims == 2 else "(N, C, T, H, W)"
            raise ValueError(
                f"{type(self).__name__} ({self.dims}D) expects a {layout} input, got shape {tuple(x.shape)}"
            )

    def _stem_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature level 0: the stem before its max-pool."""
        self._check_input(x)
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.act1(self.bn1(x))
        return x

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_features(x)
        return self.maxpool(x) if self.maxpool is not None else x

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return stage(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str | None = None,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's contract: ``(final features, [maps of the levels in indices])``, or only the list.

        Levels as `feature_info` (0 = stem before its max-pool, k = stage k); ``indices`` is None (all), an
        int n (the last n) or a sequence; maps come in network order.  ``stop_early`` skips the stages past
        the last level taken (the final features are then that stage's output).  ``norm`` applies a
        pre-activation net's final BN → ReLU to the last stage's map.  ``output_fmt``: "NCHW" (2D) or
        "NCTHW" (3D), the only layouts.
        """
        expected = "NCHW" if self.dims == 2 else "NCTHW"
        if output_fmt not in (None, expected):
            raise ValueError(
                f"output_fmt must be {expected!r} for this {self.dims}D model, got {output_fmt!r}"
            )
        take, last = take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self._stem_features(x)
        if 0 in take:
            intermediates.append(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        stages = self.stage_names[:last] if stop_early else self.stage_names
        for level, name in enumerate(stages, 1):
            if level == 2 and self.stage1_pool is not None:
                x = self.stage1_pool(x)
            x = self._run_stage(getattr(self, name), x)
            if level in take:
                if norm and level == len(self.stage_names) and self.final_norm is not None:
                    intermediates.append(self.final_act(self.final_norm(x)))
                else:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stage_names) and self.final_norm is not None:
            x = self.final_act(self.final_norm(x))
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Remove the stages past the last level in ``indices`` (and the head, the final norm): timm's API.

        Returns the levels kept.  The model then has fewer feature levels; its state dict loses those keys.
        """
        take, last = take_indices(len(self.feature_info), indices)
        for name in self.stage_names[last:]:
            delattr(self, name)
        pruned_stages = last < len(self.stage_names)
        self.stage_names = self.stage_names[:last]
        self.feature_info = FeatureInfo(self.feature_info[: last + 1])
        if pruned_stages:
            self.num_features = self.feature_info[-1]["num_chs"]
        if prune_norm or pruned_stages:  # the final norm fits only the last stage's channels
            self.final_norm = self.final_act = None
        if prune_head or pruned_stages:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for level, name in enumerate(self.stage_names, 1):
            if level == 2 and self.stage1_pool is not None:
                x = self.stage1_pool(x)
            x = self._run_stage(getattr(self, name), x)
        if self.final_norm is not None:
            x = self.final_act(self.final_norm(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(2).mean(-1)  # global average over (T,) H, W
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---------------------------------------------------------------------------------- classifier

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` (0: the model returns pooled features)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
