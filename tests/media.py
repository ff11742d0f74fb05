"""Odd media files the video tests write: variable frame rate, display rotation, audio only, moov first."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_timed(
    path: Path, frames: np.ndarray, *, fps: int = 25, pts_ms: list[int] | None = None, rotation: int = 0
) -> Path:
    """H.264 MP4 with explicit millisecond timestamps (variable frame rate) and/or a display rotation."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts_ms is not None:
                video_frame.pts, video_frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def write_audio_only(path: Path, rate: int = 16000) -> Path:
    """One second of AAC and no video stream (what a failed video download sometimes leaves)."""
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=rate)
        sine = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)[None]
        for start in range(0, rate, 1024):
            samples = av.AudioFrame.from_ndarray(sine[:, start : start + 1024].copy(), "fltp", "mono")
            samples.sample_rate = rate
            container.mux(audio.encode(samples))
        container.mux(audio.encode())
    return path


def remux_faststart(src: Path, dst: Path) -> Path:
    """The same packets with the MP4 index (moov) first, as web videos have it: a truncated copy opens."""
    with av.open(str(src)) as source, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


def backend_params() -> list:
    """Every backend of the table as a test parameter; one that does not load here is skipped, saying why
    (CI installs all three and requires them: tests/test_video_io.py::test_list_backends)."""
    import pytest

    from iresvid.data.video_io import BACKENDS, list_backends

    loaded = list_backends()
    return [
        pytest.param(name, marks=pytest.mark.skipif(name not in loaded, reason=f"{name} does not load here"))
        for name in BACKENDS
    ]
