"""Video transforms.

Worker side (CPU, uint8): decode, then `resize_short_side`, and draw each sample's crop box and flip
(`CropFlipSampler`).  Everything else (the crops, flips and normalisation themselves: `GpuAugment`,
`EvalViews`) runs batched on the training device after the uint8 batch is transferred.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H', W') with the shorter side ``size`` and the aspect ratio kept, the longer side rounded."""
    scale = size / min(height, width)
    return (size, max(1, round(width * scale))) if height <= width else (max(1, round(height * scale)), size)


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 frames (T, H, W, C) so the shorter side equals ``size``; returns uint8 (T, H', W', C).

    Bilinear with antialiasing, computed on uint8 (torch has a fast uint8 path on CPU), keeping the aspect
    ratio; the longer side is rounded to the nearest integer.  ``size <= 0`` returns the frames unchanged.
    """
    if frames.ndim != 4 or frames.dtype != torch.uint8:
        raise ValueError(
            f"resize_short_side expects uint8 (T, H, W, C), got {frames.dtype} {tuple(frames.shape)}"
        )
    height, width = frames.shape[1:3]
    if size <= 0 or min(height, width) == size:
        return frames
    new_hw = _short_side_shape(height, width, size)
    # A channels-last view, not a copy: torch's fast uint8 antialiased kernel works on it directly, and its
    # output, permuted back, is already contiguous (5× faster than resizing a channels-first copy).
    x = frames.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=new_hw, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous()


# Normalisation constants in 0-1 units (applied to pixel / 255), as torchvision and pytorchvideo specify them.
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Normalize(nn.Module):
    """``(pixel / 255 - mean) / std`` folded into one multiply-add per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
        std_t = torch.tensor(std, dtype=torch.float64)
        self.register_buffer("scale", (1 / (255 * std_t)).float(), persistent=False)
        self.register_buffer(
            "shift", (-torch.tensor(mean, dtype=torch.float64) / std_t).float(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float (N, C, ...) in 0-255 units."""
        if x.shape[1] != self.scale.numel():
            raise ValueError(f"expected {self.scale.numel()} channels, got {x.shape[1]}")
        shape = (-1,) + (1,) * (x.ndim - 2)
        scale, shift = self.scale.to(x.device).view(shape), self.shift.to(x.device).view(shape)
        return torch.addcmul(shift, x, scale)


def _check_uint8_batch(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.ndim not in (4, 5):
        raise ValueError(f"expected uint8 (N, C, H, W) or (N, C, T, H, W), got {x.dtype} {tuple(x.shape)}")


def _to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return x
    return x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)


@dataclass(frozen=True)
class CropFlipParams:
    """Random parameters of one `GpuAugment` batch, on the CPU (drawn by `CropFlipSampler`).

    ``boxes``: int64 (N, 4) crop boxes ``(top, left, height, width)`` in input pixels (the argument order
    of torchvision's ``resized_crop``); ``flip``: bool (N,), horizontal flip after the crop.
    ``params[i]`` is sample ``i``'s parameters, for `GpuAugment.apply_reference`.
    """

    boxes: torch.Tensor
    flip: torch.Tensor

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, i: int) -> CropFlipParams:
        return CropFlipParams(self.boxes[i : i + 1], self.flip[i : i + 1])


def _per_sample(size: int | torch.Tensor, n: int) -> torch.Tensor:
    """A frame size, scalar or per sample, as float64 (N,) on the CPU."""
    size = torch.as_tensor(size, dtype=torch.float64).cpu()
    return size.expand(n) if size.ndim == 0 else size


def _uniform_below(u: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` from float64 uniforms ``u`` in [0, 1), one ``high`` per sample.
    The minimum only guards float rounding of ``u * high`` up to ``high``."""
    return torch.minimum((u * high).floor(), high - 1).long()


def _source_coords(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """grid_sample coordinates (N, out_size) that reproduce ``F.interpolate`` of each crop.

    ``F.interpolate(align_corners=False)`` reads output pixel ``j`` of a ``length``-pixel crop at source index
    ``(j + 0.5) * length / out_size - 0.5``, clamped to the crop: edge pixels repeat at the crop border
    instead of blending in pixels from outside it.  The result is mapped to grid_sample's normalised
    ``align_corners=False`` coordinates ``(2 * index + 1) / in_size - 1``.  Computed in float64 so that the
    float32 grid is accurate to ~1e-5 pixel.
    """
    j = torch.arange(out_size, dtype=torch.float64) + 0.5
    length = length.double()[:, None]
    index = (j * length / out_size - 0.5).clamp(min=0).minimum(length - 1) + start.double()[:, None]
    return (2 * index + 1) / in_size - 1


@dataclass(frozen=True)
class CropFlipSampler:
    """The random crop box (with scale jitter) and flip of each training sample, drawn on the CPU.

    The CPU half of the training augmentation: datasets hold it and draw every sample's parameters in the
    data-loader workers, from the sample's own generator; `GpuAugment` applies them on the device.  It holds
    settings only, no tensors, so it pickles into workers in a few bytes and never touches a device.

    Modes (``mode``):

    * ``"short_side_jitter"`` (SlowFast/pytorchvideo training): scale the short side to
      ``s ~ U[jitter_sizes]`` and take a random ``crop_size`` crop; drawn as a random square box of
      ``round(crop_size * short_side / s)`` input pixels, which `GpuAugment` resizes to ``crop_size``
      without resizing the frame.  ``jitter_sizes`` are in the units of the resized frame, so
      ``crop_size <= jitter_sizes[0]``.
    * ``"random_resized_crop"`` (Inception/torchvision): box area ``~ U[area_scale] * H * W``, aspect ratio
      (width / height) log-uniform in ``aspect_ratio``; 10 tries, then torchvision's centre-crop fallback.

    Parameters come from an optional CPU ``torch.Generator`` (a few numbers per sample), so a seed gives
    the same crops on every device and the device's RNG is left alone.
    """

    crop_size: int = 224
    _: KW_ONLY
    mode: Literal["short_side_jitter", "random_resized_crop"] = "short_side_jitter"
    jitter_sizes: tuple[int, int] = (256, 320)
    area_scale: tuple[float, float] = (0.08, 1.0)
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5

    def __post_init__(self):
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {self.crop_size}")
        if self.mode == "short_side_jitter":
            if not self.crop_size <= self.jitter_sizes[0] <= self.jitter_sizes[1]:
                raise ValueError(
                    "need crop_size <= jitter_sizes[0] <= jitter_sizes[1], "
                    f"got {self.crop_size}, {self.jitter_sizes}"
                )
        elif self.mode == "random_resized_crop":
            if not 0 < self.area_scale[0] <= self.area_scale[1] <= 1:
                raise ValueError(f"need 0 < area_scale[0] <= area_scale[1] <= 1, got {self.area_scale}")
            if not 0 < self.aspect_ratio[0] <= self.aspect_ratio[1]:
                raise ValueError(f"need 0 < aspect_ratio[0] <= aspect_ratio[1], got {self.aspect_ratio}")
        else:
            raise ValueError(f"mode must be 'short_side_jitter' or 'random_resized_crop', got {self.mode!r}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    def sample_params(
        self,
        n: int,
        height: int | torch.Tensor,
        width: int | torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> CropFlipParams:
        """Crop boxes and flips for ``n`` samples of ``height x width`` frames.

        ``height``/``width`` may be per-sample (N,) tensors: a padded batch of frames of different sizes
        (`iresvid.data.collate_clips`) gets boxes inside each sample's own frame.
        """
        height, width = _per_sample(height, n), _per_sample(width, n)
        if self.mode == "short_side_jitter":
            u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
            low, high = self.jitter_sizes
            short_side = low + (high - low) * u[:, 0]
            side = (self.crop_size * torch.minimum(height, width) / short_side).round().clamp(min=1)
            box_h = box_w = side
            top, left = _uniform_below(u[:, 1], height - side + 1), _uniform_below(u[:, 2], width - side + 1)
        else:
            u = torch.rand(n, 23, generator=generator, dtype=torch.float64)
            box_h, box_w, top, left = self._resized_crop_boxes(u[:, :22], height, width)
        boxes = torch.stack([top, left, box_h.long(), box_w.long()], dim=1)
        return CropFlipParams(boxes, u[:, -1] < self.flip_prob)

    def _resized_crop_boxes(
        self, u: torch.Tensor, height: torch.Tensor, width: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """torchvision's ``RandomResizedCrop.get_params``, vectorised: all 10 tries are drawn at once and
        each sample keeps its first valid one.  ``u``: (N, 22) uniforms (area, ratio for 10 tries; top; left);
        ``height``, ``width``: float64 (N,).
        """
        (s0, s1), (r0, r1) = self.area_scale, self.aspect_ratio
        area = (s0 + (s1 - s0) * u[:, :10]) * (height * width)[:, None]
        ratio = torch.exp(math.log(r0) + (math.log(r1) - math.log(r0)) * u[:, 10:20])
        w, h = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
        valid = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
        first = valid.long().argmax(dim=1, keepdim=True)  # index of the first True (0 if none)
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        # Fallback when all tries fail: the largest centred box whose aspect ratio is clamped into range.
        # (torchvision rounds with Python's round(): half to even, as torch.round.)
        frame_ratio = width / height
        fallback_w = torch.where(frame_ratio > r1, (height * r1).round(), width)
        fallback_h = torch.where(frame_ratio < r0, (width / r0).round(), height)
        found = valid.any(dim=1)
        w = torch.where(found, w, fallback_w)
        h = torch.where(found, h, fallback_h)
        top = torch.where(found, _uniform_below(u[:, 20], height - h + 1), (height - fallback_h) // 2)
        left = torch.where(found, _uniform_below(u[:, 21], width - w + 1), (width - fallback_w) // 2)
        return h, w, top.long(), left.long()


class GpuAugment(nn.Module):
    """Training augmentation of a uint8 batch on the training device: the crops and flips a
    `CropFlipSampler` drew, float conversion and normalisation, for all samples at once.

    Input: uint8 ``(N, C, T, H, W)`` clips or ``(N, C, H, W)`` images (all the same H, W).  Output: float32
    ``(N, C, T, crop_size, crop_size)`` (or ``(N, C, crop_size, crop_size)``), channels-last if asked.

    Every sample gets its own crop box and flip, shared by all T frames of its clip.  The crop is resampled
    bilinearly with ``align_corners=False`` (pixel centres at ``i + 0.5``, the ``F.interpolate`` and
    ``resize_short_side`` convention) and without antialiasing, i.e. exactly torchvision's
    ``resized_crop(..., antialias=False)`` of each clip, which `apply_reference` computes sample by sample.

    ``mean``/``std`` are in 0-1 units (applied to ``pixel / 255``); the default is pytorchvideo's Kinetics
    normalisation, pass ``IMAGENET_MEAN``/``IMAGENET_STD`` for ImageNet-pretrained weights (the trainer
    passes the model's, `iresvid.engine.build.norm_stats`).  Move the module to the training device
    (``.to(device)``) so its normalisation constants live there.
    """

    def __init__(
        self,
        sampler: CropFlipSampler,
        *,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        channels_last: bool = False,
    ):
        super().__init__()
        self.sampler = sampler
        self.mean, self.std = tuple(mean), tuple(std)
        self.channels_last = channels_last
        self.normalize = _Normalize(mean, std)

    @property
    def crop_size(self) -> int:
        return self.sampler.crop_size

    def apply(self, x: torch.Tensor, params: CropFlipParams) -> torch.Tensor:
        """Crop, flip and normalise the whole batch with one ``grid_sample``."""
        _check_uint8_batch(x)
        n, height, width, size = x.shape[0], x.shape[-2], x.shape[-1], self.crop_size
        if len(params) != n:
            raise ValueError(f"params are for {len(params)} samples, the batch has {n}")
        boxes = params.boxes
        gx = _source_coords(boxes[:, 1], boxes[:, 3], width, size)
        gy = _source_coords(boxes[:, 0], boxes[:, 2], height, size)
        # Flipping the output equals reading the columns right to left.
        gx = torch.where(params.flip[:, None], gx.flip(1), gx)
        # Only (2, N, size) coordinates go to the device; the (N, size, size, 2) grid is built there.
        # From pinned memory the copy is truly asynchronous: a copy from pageable memory may wait for all the
        # work queued on the stream (the previous training step), stalling the CPU that feeds the GPU.
        coords = torch.stack([gx, gy]).float()
        if x.device.type == "cuda":
            coords = coords.pin_memory()
        gx, gy = coords.to(x.device, non_blocking=True)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        # grid_sample resamples every channel plane alike: folding T into channels shares one crop and flip
        # across a clip's frames, and one call serves the whole batch.
        planes = x.reshape(n, -1, height, width).float()
        out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = self.normalize(out.view(*x.shape[:-2], size, size))
        return _to_memory_format(out, self.channels_last)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sampler.sample_params(x.shape[0], x.shape[-2], x.shape[-1], generator))

    def apply_reference(self, clip: torch.Tensor, params: CropFlipParams) -> torch.Tensor:
        """One uint8 clip ``(C, T, H, W)`` or image ``(C, H, W)`` with one sample's params (``params[i]``),
        through torchvision's functional ops: the slow, obviously right definition `apply` must match."""
        # Local import: torchvision takes over a second to import and data-loader workers import this module.
        import torchvision.transforms.v2.functional as TF

        ((top, left, height, width),), (flip,) = params.boxes.tolist(), params.flip.tolist()
        frames = clip.float().movedim(0, -3)  # torchvision wants channels third from last: (T, C, H, W)
        out = TF.resized_crop(frames, top, left, height, width, [self.crop_size] * 2, antialias=False)
        if flip:
            out = TF.horizontal_flip(out)
        out = TF.normalize(out / 255, list(self.mean), list(self.std))
        return out.movedim(-3, 0)


class EvalViews(nn.Module):
    """Test-time spatial views: resize the short side to ``size``, then take ``num_crops`` square crops of
    ``crop_size`` (default ``size``: SlowFast's full-height 256 crops; ImageNet's protocol is 256 → 224).

    ``num_crops=1``: the centre crop; ``num_crops=3``: start, centre and end of the long side
    (left/centre/right for landscape frames, top/centre/bottom for portrait), as SlowFast and pytorchvideo's
    ``uniform_crop``; the centre offset is ``ceil((side - size) / 2)`` on each axis.

    Input: uint8 ``(N, C, T, H, W)`` or ``(N, C, H, W)``.  Output: float32 ``(N * num_crops, C, [T,] size,
    size)``, normalised like `GpuAugment`, ordered sample-major: view ``k`` of sample ``n`` is row
    ``n * num_crops + k``, so ``logits.view(N, num_crops, -1).mean(1)`` averages a sample's views.

    Frames whose short side is already ``size`` (the usual case: workers call `resize_short_side`) are
    cropped without resampling; others are resized like `resize_short_side` (bilinear, antialiased).
    """

    def __init__(
        self,
        size: int = 224,
        num_crops: int = 3,
        *,
        crop_size: int | None = None,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        channels_last: bool = False,
    ):
        super().__init__()
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        crop_size = size if crop_size is None else crop_size
        if not 1 <= crop_size <= size:
            raise ValueError(f"need 1 <= crop_size <= size, got crop_size {crop_size} and size {size}")
        self.size = size
        self.crop_size = crop_size
        self.num_crops = num_crops
        self.channels_last = channels_last
        self.normalize = _Normalize(mean, std)

    def crop_offsets(self, height: int, width: int) -> list[tuple[int, int]]:
        """``(top, left)`` of each view in a frame whose short side is ``size``, in view order."""
        size = self.crop_size
        top, left = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
        if self.num_crops == 1:
            return [(top, left)]
        if width >= height:
            return [(top, 0), (top, left), (top, width - size)]
        return [(0, left), (top, left), (height - size, left)]

    def forward(self, x: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """``sizes``: optional (N, 2) frame sizes of a padded batch (`iresvid.data.collate_clips`); each
        sample's views are then taken from its own ``height x width`` frame."""
        _check_uint8_batch(x)
        if sizes is not None and not bool((sizes == torch.tensor(x.shape[-2:])).all()):
            return torch.cat([self(x[i : i + 1, ..., :h, :w]) for i, (h, w) in enumerate(sizes.tolist())])
        height, width = x.shape[-2:]
        if min(height, width) != self.size:
            new_hw = _short_side_shape(height, width, self.size)
            planes = x.reshape(x.shape[0], -1, height, width).float()
            planes = F.interpolate(planes, size=new_hw, mode="bilinear", antialias=True, align_corners=False)
            x = planes.view(*x.shape[:-2], *new_hw)
            height, width = new_hw
        s = self.crop_size
        views = torch.stack(
            [x[..., t : t + s, l : l + s] for t, l in self.crop_offsets(height, width)], dim=1
        )
        out = self.normalize(views.flatten(0, 1).float())
        return _to_memory_format(out, self.channels_last)


@dataclass(frozen=True)
class MixParams:
    """One batch's mix: ``lam`` is the weight of each sample's own label; ``box`` is the CutMix region
    ``(top, bottom, left, right)`` (rows ``top:bottom``, columns ``left:right``), None for Mixup / no mix."""

    lam: float
    box: tuple[int, int, int, int] | None


class MixupCutmix:
    """Mixup / CutMix of a normalised float batch ``(N, C, [T,] H, W)`` with soft targets, on any device.

    Same semantics as timm's ``Mixup`` in its default ``mode="batch"`` (one lambda per batch, each sample
    mixed with the batch flipped): with probability ``prob`` the batch is mixed, by CutMix with probability
    ``switch_prob`` when both alphas are positive, else by whichever alpha is positive; lambda ~
    Beta(alpha, alpha).  The CutMix box (timm's ``rand_bbox``: sides ``sqrt(1 - lambda)`` of the frame,
    centre uniform, clipped to the frame) is shared by all T frames, and lambda is corrected to the kept
    area (timm's ``correct_lam=True``).  Targets: ``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))`` with
    timm's label smoothing (off value ``smoothing / num_classes``), so each row sums to 1.

    Defaults are the DeiT/VideoMAE recipe.  The draws come from a NumPy generator seeded from the given
    CPU ``torch.Generator`` (torch has no seeded Beta sampler), so a seed fixes the mix.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
    ):
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("one of mixup_alpha, cutmix_alpha must be > 0")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None) -> MixParams:
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        if rng.random() >= self.prob:
            return MixParams(1.0, None)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        lam = float(rng.beta(*[self.cutmix_alpha if use_cutmix else self.mixup_alpha] * 2))
        if not use_cutmix:
            return MixParams(lam, None)
        ratio = math.sqrt(1 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        return MixParams(1 - (bottom - top) * (right - left) / (height * width), (top, bottom, left, right))

    def apply(
        self, x: torch.Tensor, target: torch.Tensor, params: MixParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the mixed batch and (N, num_classes) soft targets; ``x`` is never modified in place."""
        off = self.label_smoothing / self.num_classes
        one_hot = torch.full((len(target), self.num_classes), off, device=x.device)
        one_hot.scatter_(1, target.to(x.device).view(-1, 1), 1 - self.label_smoothing + off)
        soft_target = one_hot * params.lam + one_hot.flip(0) * (1 - params.lam)
        if params.box is not None:
            top, bottom, left, right = params.box
            mixed = x.clone()
            mixed[..., top:bottom, left:right] = x.flip(0)[..., top:bottom, left:right]
            return mixed, soft_target
        if params.lam < 1:
            return torch.lerp(x.flip(0), x, params.lam), soft_target
        return x, soft_target

    def __call__(
        self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(x, target, self.sample_params(x.shape[-2], x.shape[-1], generator))
