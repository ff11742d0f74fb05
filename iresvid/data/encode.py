"""Write real encoded videos with PyAV.

Used by the synthetic motion dataset, the demo and the tests: every video this project makes for itself
goes through `write_video`, so the decoders are always exercised on genuinely encoded files (H.264 in MP4,
MPEG-4 Part 2 in AVI), with or without B-frames.  A video is written as every other file is
(`iresvid.files.atomic_write`): PyAV's ``av.open(path, "w")`` would follow a symlink planted at ``path``,
so PyAV gets a new, exclusively created file object instead, renamed into place once complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from iresvid.files import atomic_write

# Container extension -> default video codec.  These two pairs are what Kinetics (.mp4, H.264) and
# UCF101 (.avi, MPEG-4 Part 2 / xvid) ship as.
DEFAULT_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".avi": "mpeg4", ".webm": "libvpx-vp9"}
# Container extension -> FFmpeg muxer: a file object carries no name to guess it from.
CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".avi": "avi", ".webm": "webm"}


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    *,
    fps: float = 25,
    codec: str | None = None,
    bframes: int = 0,
    gop_size: int = 12,
    crf: int = 18,
    replace: bool = True,
) -> Path:
    """Encode RGB uint8 frames (T, H, W, 3) to ``path``; returns the path.

    ``bframes > 0`` makes the encoder emit B-frames, so packets are stored out of display order (and AVI
    files then start at timestamp 1): the case that shifts naive frame-index readers.  Width and height
    must be even (yuv420p).  ``replace=False`` refuses an existing ``path`` (`iresvid.files.WriteError`).
    """
    path = Path(path)
    container = CONTAINERS.get(path.suffix.lower())
    if container is None:
        raise ValueError(f"write_video: cannot write {path}: the extension is not one of {list(CONTAINERS)}")
    codec = codec or DEFAULT_CODECS[path.suffix.lower()]
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"write_video: no frames given for {path}")
    first = np.asarray(first)
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"write_video: frames must be uint8 (H, W, 3), got {first.dtype} {first.shape}")
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"write_video: width and height must be even for yuv420p, got {width}x{height}")

    path.parent.mkdir(parents=True, exist_ok=True)

    def encode(file) -> None:
        _encode(file, container, _chain(first, frames), (height, width), fps, codec, bframes, gop_size, crf)

    return atomic_write(path, encode, replace=replace)


def _encode(file, container_format: str, frames, size, fps, codec, bframes, gop_size, crf) -> None:
    import av  # local: importing PyAV is slow and only the writers need it

    height, width = size
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(file, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop_size
        stream.codec_context.max_b_frames = bframes
        if codec == "libx264":
            # b-adapt=0 forces the requested B-frames even on content where x264 would choose none.
            stream.options = {
                "crf": str(crf),
                "preset": "veryfast",
                "bf": str(bframes),
                "x264-params": "b-adapt=0" if bframes else "bframes=0",
            }
        else:
            stream.codec_context.bit_rate = 4_000_000
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


def _chain(first, rest):
    yield first
    yield from rest
