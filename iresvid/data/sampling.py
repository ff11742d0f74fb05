"""Clip samplers: which frame indices to decode.

Pure functions on integers, so a dataset can ask the decoder for exactly the frames it needs.

Conventions shared by every sampler:

* A clip of ``num_frames`` frames taken every ``frame_stride`` frames spans
  ``span = (num_frames - 1) * frame_stride + 1`` frames of the video.
* Short videos are padded by repeating their LAST frame: an index past the end is clamped to
  ``num_video_frames - 1``.  The clip keeps its length (the model needs a fixed T) and never asks the
  decoder for a frame that does not exist: 4 frames at stride 2 from 5 frames are ``[0, 2, 4, 4]``.
* Random draws use the given CPU ``torch.Generator`` (``None``: torch's global RNG, which data-loader workers
  seed per worker), so indices are reproducible.
* ``num_video_frames <= 0`` and counts/strides below 1 raise ``ValueError`` naming the offending argument.
"""

from __future__ import annotations

import torch


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _clip(start: int, num_video_frames: int, num_frames: int, frame_stride: int) -> list[int]:
    last = num_video_frames - 1
    return [min(start + i * frame_stride, last) for i in range(num_frames)]


def _max_start(num_video_frames: int, num_frames: int, frame_stride: int) -> int:
    """Largest start whose clip fits in the video; 0 when even the first clip needs padding."""
    _check_positive(num_video_frames=num_video_frames, num_frames=num_frames, frame_stride=frame_stride)
    return max(num_video_frames - ((num_frames - 1) * frame_stride + 1), 0)


def random_clip(
    num_video_frames: int, num_frames: int, frame_stride: int, *, generator: torch.Generator | None = None
) -> list[int]:
    """Training clip: ``num_frames`` indices ``frame_stride`` apart, start uniform over all valid starts.

    The start is drawn uniformly from ``0 .. max(num_video_frames - span, 0)`` inclusive, so every frame of a
    long-enough video can be covered.
    """
    max_start = _max_start(num_video_frames, num_frames, frame_stride)
    start = int(torch.randint(max_start + 1, (1,), generator=generator))
    return _clip(start, num_video_frames, num_frames, frame_stride)


def uniform_clips(
    num_video_frames: int, num_frames: int, frame_stride: int, num_clips: int
) -> list[list[int]]:
    """Test clips: ``num_clips`` clips with evenly spaced starts, in temporal order.

    With ``max_start = max(num_video_frames - span, 0)``, clip ``i`` starts at
    ``i * max_start // (num_clips - 1)`` (so the first clip starts at frame 0 and the last ends on the last
    frame), and a single clip starts at ``max_start // 2`` (the centre clip).  This is SlowFast's
    multi-view test sampling (``i * floor(max_start / (num_clips - 1))``, centre for one view) with the
    floor taken after the product, so the last clip really reaches the end.
    """
    max_start = _max_start(num_video_frames, num_frames, frame_stride)
    _check_positive(num_clips=num_clips)
    if num_clips == 1:
        starts = [max_start // 2]
    else:
        starts = [i * max_start // (num_clips - 1) for i in range(num_clips)]
    return [_clip(s, num_video_frames, num_frames, frame_stride) for s in starts]


def segment_indices(
    num_video_frames: int,
    num_segments: int,
    *,
    frames_per_segment: int = 1,
    train: bool,
    generator: torch.Generator | None = None,
) -> list[int]:
    """TSN sampling: one snippet of ``frames_per_segment`` consecutive frames from each of ``num_segments``
    equal segments; returns ``num_segments * frames_per_segment`` indices, segment by segment.

    The ``n = max(num_video_frames - frames_per_segment + 1, 1)`` possible snippet starts are split into
    equal real intervals ``[k * n / S, (k + 1) * n / S)``.  Segment ``k`` starts at
    ``floor((k + u_k) * n / S)`` with ``u_k ~ U[0, 1)`` in training and ``u_k = 0.5`` (the centre) in testing,
    which is TSN's test formula ``int(n / S * (k + 0.5))``.  When there are fewer starts than segments
    (``n < S``), neighbouring segments share frames rather than leaving part of the video unseen.
    """
    _check_positive(
        num_video_frames=num_video_frames, num_segments=num_segments, frames_per_segment=frames_per_segment
    )
    num_starts = max(num_video_frames - frames_per_segment + 1, 1)
    if train:
        k = torch.arange(num_segments, dtype=torch.float64)
        u = torch.rand(num_segments, generator=generator, dtype=torch.float64)
        # The clamp only guards float rounding: (S - 1 + u) can round up to S when u is within 2**-53 of 1.
        starts = ((k + u) * num_starts / num_segments).floor().long().clamp_(max=num_starts - 1).tolist()
    else:
        starts = [(2 * k + 1) * num_starts // (2 * num_segments) for k in range(num_segments)]
    return [index for s in starts for index in _clip(s, num_video_frames, frames_per_segment, 1)]
