"""Video transforms.

Worker side (CPU, uint8): decode, then `resize_short_side`.  Everything else (crops, scale jitter, flips,
normalisation) runs batched on the training device after the uint8 batch is transferred.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 frames (T, H, W, C) so the shorter side equals ``size``; returns uint8 (T, H', W', C).

    Bilinear with antialiasing, computed on uint8 (torch has a fast uint8 path on CPU), keeping the aspect
    ratio; the longer side is rounded to the nearest integer.  ``size <= 0`` returns the frames unchanged.
    """
    if frames.ndim != 4 or frames.dtype != torch.uint8:
        raise ValueError(f"resize_short_side expects uint8 (T, H, W, C), got {frames.dtype} {tuple(frames.shape)}")
    height, width = frames.shape[1:3]
    if size <= 0 or min(height, width) == size:
        return frames
    scale = size / min(height, width)
    new_hw = (size, max(1, round(width * scale))) if height <= width else (max(1, round(height * scale)), size)
    x = frames.permute(0, 3, 1, 2)  # (T, C, H, W) for interpolate
    x = F.interpolate(x.contiguous(), size=new_hw, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous()
