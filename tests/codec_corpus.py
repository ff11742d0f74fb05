"""The real-world codec mix in miniature: the codecs, containers and stream layouts public video sets ship.

Kinetics mixes H.264, HEVC, VP9, VP8 and AV1 in MP4, MKV and WebM (long GOPs, B-frames, open GOPs, NTSC
rates, 60 fps); UCF101 is MPEG-4 part 2 AVI; older sets carry MPEG-2 program and transport streams and
MJPEG; phones write 10-bit and 4:4:4.  Each entry is one small genuinely encoded file (tiny frames, few
frames, so the whole corpus encodes in seconds), written with the encoders PyAV's wheels carry.

Every frame carries its own index as three flat 16×16 blocks of base-8 digits (levels 16 + 28 d), which
survive any of these codecs at their settings here, above a moving texture that keeps predicted frames
predicted: a reader that returns a neighbouring frame is caught by the content, whatever the reference says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

DIGITS, BASE, LEVEL0, LEVEL_STEP = 3, 8, 16, 28  # frame ids up to 8**3 - 1 = 511


@dataclass(frozen=True)
class Codec:
    """One corpus file: ``frames`` frames of ``codec`` with ``bframes`` B-frames between references and a
    key frame every ``gop`` frames, in ``container`` (None: by the extension ``ext``)."""

    ext: str
    codec: str
    frames: int = 40
    size: tuple[int, int] = (48, 64)  # (H, W)
    fps: Fraction | int = 25
    pix_fmt: str = "yuv420p"
    gop: int = 12
    bframes: int = 0
    open_gop: bool = False
    interlaced: bool = False  # field-coded content (broadcast, DVD): H.264 MBAFF, MPEG-2 interlaced DCT
    container: str | None = None

    @property
    def decoder(self) -> str:
        """The codec name FFmpeg reports when reading the file."""
        names = {
            "libx264": "h264",
            "libx265": "hevc",
            "libvpx": "vp8",
            "libvpx-vp9": "vp9",
            "libsvtav1": "av1",
        }
        return names.get(self.codec, self.codec)

    def options(self) -> dict[str, str]:
        """Encoder options that force the GOP and B-frames (x264/x265 would otherwise adapt them)."""
        key, bf = f"keyint={self.gop}:min-keyint={self.gop}:scenecut=0", f"bframes={self.bframes}"
        b_adapt = ":b-adapt=0" if self.bframes else ""
        if self.codec == "libx264":
            params = f"{key}:{bf}{b_adapt}" + (":open-gop=1" if self.open_gop else "")
            params += ":interlaced=1:tff=1" if self.interlaced else ""
            return {"crf": "16", "preset": "veryfast", "x264-params": params}
        if self.codec == "libx265":
            params = f"{key}:{bf}{b_adapt}:open-gop={int(self.open_gop)}:log-level=error"
            return {"crf": "16", "preset": "ultrafast", "x265-params": params}
        if self.codec in ("libvpx", "libvpx-vp9"):  # alternate reference frames: hidden, reordered
            return {"deadline": "good", "cpu-used": "8", "crf": "10", "b": "0", "g": str(self.gop),
                    "lag-in-frames": "16", "auto-alt-ref": "1"}  # fmt: skip
        if self.codec == "libsvtav1":
            return {"preset": "12", "svtav1-params": f"keyint={self.gop}"}
        # MPEG-1/2/4: no extra key frames at "scene cuts"
        return {"sc_threshold": "1000000000"} | ({"flags": "+ildct+ilme"} if self.interlaced else {})


NTSC = Fraction(30000, 1001)

# name -> file.  Long GOPs need a long roll forward from their key frame; open GOPs leave broken leading
# pictures after a seek; "ts"/"mpg" are MPEG transport/program streams.
CORPUS: dict[str, Codec] = {
    "h264_mp4": Codec("mp4", "libx264"),
    "h264_mp4_bframes": Codec("mp4", "libx264", bframes=2),
    "h264_mp4_gop300": Codec("mp4", "libx264", frames=330, gop=300),
    "h264_mp4_gop250_bframes": Codec("mp4", "libx264", frames=300, gop=250, bframes=3),
    "h264_mkv_bframes_ntsc": Codec("mkv", "libx264", fps=NTSC, gop=15, bframes=2),
    "h264_mkv_open_gop_bframes": Codec("mkv", "libx264", frames=60, gop=16, bframes=3, open_gop=True),
    "h264_ts_bframes": Codec("ts", "libx264", bframes=2),
    "h264_mp4_60fps_bframes": Codec("mp4", "libx264", fps=60, frames=70, gop=30, bframes=2),
    "h264_mp4_yuv444p_odd_bframes": Codec("mp4", "libx264", size=(41, 71), pix_fmt="yuv444p", bframes=2),
    "h264_mp4_10bit_bframes": Codec("mp4", "libx264", pix_fmt="yuv420p10le", bframes=2),
    "h264_mp4_unaligned_bframes": Codec("mp4", "libx264", size=(58, 94), gop=10, bframes=1),
    "hevc_mp4": Codec("mp4", "libx265"),
    "hevc_mp4_open_gop_bframes": Codec("mp4", "libx265", frames=60, gop=24, bframes=3, open_gop=True),
    "hevc_mkv": Codec("mkv", "libx265"),
    "hevc_mkv_open_gop_bframes": Codec("mkv", "libx265", frames=100, gop=32, bframes=4, open_gop=True),
    "vp9_webm": Codec("webm", "libvpx-vp9", frames=50, gop=25),
    "vp8_webm": Codec("webm", "libvpx", frames=50, gop=25),
    "av1_mp4": Codec("mp4", "libsvtav1", frames=40, gop=20),
    "av1_webm": Codec("webm", "libsvtav1", frames=40, gop=16),
    "mpeg4_avi": Codec("avi", "mpeg4"),
    "mpeg4_avi_bframes": Codec("avi", "mpeg4", bframes=2),
    "mpeg4_avi_gop50_bframes": Codec("avi", "mpeg4", frames=120, gop=50, bframes=1),
    "mpeg4_avi_gop300_bframes": Codec("avi", "mpeg4", frames=330, gop=300, bframes=2),
    "mpeg4_mp4_bframes": Codec("mp4", "mpeg4", bframes=2),
    "mpeg2_mpg_bframes": Codec("mpg", "mpeg2video", frames=80, gop=15, bframes=2, container="mpeg"),
    "mpeg2_ts_bframes": Codec("ts", "mpeg2video", frames=80, gop=15, bframes=2, container="mpegts"),
    "mpeg2_ts_50fps_bframes": Codec(
        "ts", "mpeg2video", fps=50, frames=80, gop=24, bframes=3, container="mpegts"
    ),
    "mjpeg_avi": Codec("avi", "mjpeg", pix_fmt="yuvj420p", frames=30),
    # Elementary streams: no container, packets without any timestamp (the index comes from a decode).
    "h264_elementary_bframes": Codec("h264", "libx264", bframes=2, container="h264"),
    "hevc_elementary_bframes": Codec("hevc", "libx265", bframes=2, container="hevc"),
    "mpeg4_elementary_bframes": Codec("m4v", "mpeg4", bframes=2, container="m4v"),
    # Other containers met in the wild: DVD VOB (MPEG-2 PS), Flash, QuickTime, 3GPP phones, NUT.
    "mpeg2_vob_bframes": Codec("vob", "mpeg2video", frames=60, gop=15, bframes=2, container="vob"),
    "h264_flv_bframes": Codec("flv", "libx264", bframes=2, container="flv"),
    "h264_mov_bframes": Codec("mov", "libx264", bframes=2),
    "h264_3gp_bframes": Codec("3gp", "libx264", bframes=2, container="3gp"),
    "mpeg4_nut_bframes": Codec("nut", "mpeg4", bframes=2, container="nut"),
    # Interlaced broadcast material in transport streams.
    "h264_ts_interlaced_bframes": Codec("ts", "libx264", size=(64, 64), bframes=2, interlaced=True),
    "mpeg2_ts_interlaced_bframes": Codec(
        "ts", "mpeg2video", size=(64, 64), frames=60, gop=15, bframes=2, interlaced=True, container="mpegts"
    ),
}


def frame_pattern(index: int, height: int, width: int) -> np.ndarray:
    """Frame ``index``: its base-8 digits as flat blocks across the top, a moving texture below."""
    rng = np.random.default_rng(7)
    texture = rng.integers(40, 216, (height + 64, width + 64, 3), dtype=np.uint8)
    frame = np.ascontiguousarray(texture[index % 64 : index % 64 + height, 2 * index % 64 :][:, :width])
    for d in range(DIGITS):
        digit = index // BASE**d % BASE
        frame[:16, 16 * d : 16 * d + 16] = LEVEL0 + LEVEL_STEP * digit
    return frame


def frame_id(frame: np.ndarray) -> int:
    """The index a decoded RGB frame carries (see `frame_pattern`)."""
    total = 0
    for d in range(DIGITS):
        level = float(frame[3:13, 16 * d + 3 : 16 * d + 13].mean())
        total += min(BASE - 1, max(0, round((level - LEVEL0) / LEVEL_STEP))) * BASE**d
    return total


def write(path: Path, spec: Codec) -> Path:
    """Encode ``spec`` to ``path`` (its extension decides the container unless ``spec.container`` does)."""
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at level 3
    height, width = spec.size
    with av.open(str(path), "w", format=spec.container) as container:
        stream = container.add_stream(spec.codec, rate=spec.fps, options=spec.options())
        stream.width, stream.height, stream.pix_fmt = width, height, spec.pix_fmt
        stream.codec_context.gop_size = spec.gop
        stream.codec_context.max_b_frames = spec.bframes
        if spec.codec in ("mpeg4", "mpeg2video", "mjpeg"):
            stream.codec_context.bit_rate = 8_000_000
            stream.codec_context.qmax = 4  # near lossless: the id blocks stay flat
        for i in range(spec.frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, height, width), format="rgb24")
            container.mux(stream.encode(frame.reformat(format=spec.pix_fmt)))
        container.mux(stream.encode())
    return path


def write_corpus(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {name: write(root / f"{name}.{CORPUS[name].ext}", CORPUS[name]) for name in names or CORPUS}


def sequential_decode(path: Path) -> np.ndarray:
    """Every frame in display order, as one uninterrupted PyAV decode gives them: the reference."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])
