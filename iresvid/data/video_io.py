"""Frame-exact video readers behind one backend table: PyAV, decord and (where FFmpeg loads) torchcodec.

``open_video(path, backend).get_frames(indices)`` returns uint8 ``(T, H, W, C)`` frames where frame ``i`` is
exactly the ``i``-th frame of an uninterrupted decode of the whole video, in display order and orientation.

Exact by construction, not by metadata.  Real files break every shortcut: B-frames store packets out of
display order (and AVI then starts at pts 1), seeks land a GOP early or late (AVI seeks by dts, MPEG program
streams by bytes), a seek into an MPEG program stream hands the key frame the timestamp of a later packet,
headers miscount frames, open GOPs leave broken leading pictures after a seek.  So:

* The *index* (frame number -> presentation timestamp, key frames) is what the demuxer yields, packet by
  packet; where packets carry no usable timestamps (some MPEG-PS/TS and AVI muxers) it is what a full
  decode yields instead (`FrameIndex.source`).
* Every PyAV decode pass after a seek is proven against the index as it runs: the first frame must be a key
  frame of the index, then each frame must be the next index entry by timestamp (skipped non-reference
  frames excepted).  A pass that disagrees is never returned: the read is redone by the *exact path* — one
  sequential decode from the file's first byte, frames counted as they come, which is the definition above
  — and the file is marked so that this process never seeks in it again (logged once per file, counted in
  ``reader.rereads`` for the epoch report).
* torchcodec returns presentation timestamps: every batch is compared with the index, and a mismatch is
  re-read through the exact path.  decord returns none: a file is read with decord only after a probe
  decodes a few frames with both decord and the exact PyAV reader and finds them identical.

The fast path seeks to the key frame before a wanted frame, decodes non-reference frames only where they
are wanted (FFmpeg's ``skip_frame``), stops after the last wanted frame and converts to RGB only what it
returns.  Each process remembers per file (path, size, mtime, inode: a rewritten file is looked at again)
its index and each backend's verdict, so later opens skip the demux scan and the probe.
"""

from __future__ import annotations

import bisect
import errno
import importlib
import logging
import operator
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from stat import S_ISREG
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    import av

__all__ = [
    "BACKENDS",
    "Backend",
    "DEFAULT_BACKEND",
    "FrameIndex",
    "KnownFile",
    "OPEN_CACHE_SIZE",
    "VideoDecodeError",
    "VideoReader",
    "clear_open_cache",
    "list_backends",
    "open_video",
]

OPEN_CACHE_SIZE = 32768  # backend verdicts per process; an entry is about 0.5 kB
INDEX_CACHE_SIZE = 2048  # frame indexes per process; a 10 s clip's is about 4 kB
DECORD_MAX_PIXELS = 1920 * 1088  # larger frames are read with PyAV (see `_open_decord`)
PROBE_TOLERANCE = 2  # |difference| in RGB levels decord may show against PyAV on the probe frames

_log = logging.getLogger(__name__)


class VideoDecodeError(RuntimeError):
    """The file exists but yields no (or not all) frames: empty, truncated, not a video, audio only, or its
    path cannot be resolved (a symbolic link loop)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")

    def __reduce__(self):
        # Default exception pickling would call __init__(message) and fail in DataLoader worker round-trips.
        return type(self), (self.path, self.reason)


class _Mismatch(Exception):
    """A decode pass yielded a frame the index does not expect there: its result must not be returned."""


# ------------------------------------------------------------------------------------------------ readers


class VideoReader(ABC):
    """Random access to the frames of one video; one subclass per backend.

    ``duration`` is ``num_frames / fps`` (exact for constant frame rate, the nominal length otherwise).
    ``rereads`` counts the reads this reader redid through the exact path because what the backend returned
    was not the frame asked for.  Readers hold an open decoder: close them (or use ``with``).
    """

    backend: str
    path: Path
    num_frames: int
    fps: float
    height: int
    width: int
    rereads: int = 0

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``(T, H, W, 3)``: the frames at ``indices`` in the order asked (repeats allowed)."""
        if self.closed:
            raise ValueError(f"get_frames on a closed reader for {self.path}")
        wanted = [self._check_index(i) for i in indices]
        if not wanted:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8)
        return self._get_frames(wanted)

    def _check_index(self, index: int) -> int:
        index = operator.index(index)
        if index < 0:
            raise IndexError(
                f"negative frame index {index} for {self.path} (num_frames={self.num_frames}): "
                f"indices must be in [0, {self.num_frames - 1}], negative indexing is not supported"
            )
        if index >= self.num_frames:
            raise IndexError(
                f"frame index {index} out of range for {self.path} (num_frames={self.num_frames}, "
                f"valid indices are 0..{self.num_frames - 1})"
            )
        return index

    @abstractmethod
    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        """``indices`` are validated; may be unsorted and repeat."""

    @property
    @abstractmethod
    def closed(self) -> bool: ...

    @abstractmethod
    def close(self) -> None:
        """Release the decoder; idempotent."""

    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, num_frames={self.num_frames}, fps={self.fps:.3f}, "
            f"size={self.width}x{self.height})"
        )


@dataclass
class FrameIndex:
    """What a file's video stream really holds: display-order timestamps and key frames, size and rotation.

    ``source`` says where the timestamps come from: ``"packets"`` (the demuxer's, checked against the
    decoder on every read), ``"decoded"`` (a full decode, for streams whose packets lack them) or
    ``"ordinal"`` (no usable timestamps at all: every read is the sequential exact path).
    ``seek_trusted`` turns False, for the rest of the process, once a seek in the file went wrong.
    """

    pts: list[int]
    key_index: list[int]  # display indices of the key frames
    key_pts: list[int]
    key_dts: list[int]
    start_ts: int  # where decoding the whole stream starts (smallest dts)
    time_base: Fraction
    fps: float
    source: str
    coded_size: tuple[int, int] = (0, 0)  # (width, height) as decoded
    quarter_turns: int = 0  # display rotation, counter-clockwise
    bits: int = 8  # per sample, as decoded
    codec: str = ""
    seek_trusted: bool = True
    _index_of: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index_of = {p: i for i, p in enumerate(self.pts)}
        self._keys = set(self.key_index)
        if self.source == "ordinal":
            self.seek_trusted = False

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) as displayed."""
        width, height = self.coded_size
        return (width, height) if self.quarter_turns % 2 else (height, width)

    def index_of(self, ts: int | None) -> int | None:
        return self._index_of.get(ts)

    def is_key(self, index: int) -> bool:
        return index in self._keys

    def seconds(self, indices: Sequence[int]) -> np.ndarray:
        return np.asarray([self.pts[i] for i in indices], dtype=np.float64) * float(self.time_base)


class PyAVReader(VideoReader):
    """PyAV, with every seek pass proven against the `FrameIndex` and the sequential exact path behind it.

    Requested frames are visited in ascending order: frames in the same GOP (or with no key frame between
    them) are reached by decoding forward, a far or backward jump seeks to the last key frame at or before
    the target.  Non-reference frames that no request wants are not decoded (``skip_frame``), which is
    where rolling forward through a long GOP with B-frames spends most of its time.
    """

    backend = "pyav"

    def __init__(self, path: Path, num_threads: int = 1, index: FrameIndex | None = None):
        from av.video.reformatter import VideoReformatter

        self.path, self._threads = path, num_threads
        self._container = None
        self._open_container()
        self._frames: Iterator[tuple[int, av.VideoFrame]] | None = None
        self._pos = -1  # display index of the last frame the current decode pass produced
        self._wanted: set[int] = set()  # frames the current request returns: never skipped
        self._skipped: set[int] = set()  # frames of the current pass whose decoding was skipped
        self._reformatter = VideoReformatter()
        try:
            self.index = index if index is not None else self._index_file()
        except BaseException:
            self.close()
            raise
        self.num_frames = self.index.num_frames
        self.fps = self.index.fps
        self.height, self.width = self.index.size

    def describe(self) -> dict:
        """The file as found: its codec (FFmpeg's canonical name, "av1" rather than the decoder "libdav1d"),
        its container and whether it carries audio."""
        return {
            "codec": self._stream.codec_context.codec.canonical_name,
            "container": self._container.format.name,
            "audio": bool(self._container.streams.audio),
        }

    def _open_container(self) -> None:
        import av

        if self._container is not None:
            self._container.close()
        try:
            self._container = av.open(str(self.path), metadata_errors="ignore")
        except (av.FFmpegError, OSError) as e:
            raise VideoDecodeError(self.path, f"cannot open container ({e})") from e
        try:
            self._stream = self._video_stream()
        except BaseException:
            self.close()
            raise
        self._stream.codec_context.thread_count = self._threads
        if self._threads != 1:
            self._stream.codec_context.thread_type = "AUTO"  # frame + slice threads

    def _video_stream(self) -> av.VideoStream:
        import av

        video = [
            s for s in self._container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
        ]
        if not video:
            kinds = sorted({s.type for s in self._container.streams}) or ["none"]
            raise VideoDecodeError(self.path, f"no video stream (streams: {', '.join(kinds)})")
        stream = video[0]
        for other in self._container.streams:
            if other is not stream:
                other.discard = av.stream.Discard.all  # the demuxer skips their packets: audio is never read
        return stream

    # -------------------------------------------------------------------------------------------- indexing

    def _index_file(self) -> FrameIndex:
        """Index the video from its packets, or by decoding it where packets carry no usable timestamps."""
        index = self._index_packets()
        if index is None:
            return self._index_decoded()
        self.index = index
        self._wanted = {0}
        first = self._first_frame()
        index.coded_size = (first.width, first.height)
        # Rotation is read from the first frame's side data (PyAV exposes no stream-level getter).
        index.quarter_turns = round(first.rotation / 90) % 4
        index.bits = first.format.components[0].bits
        return index

    def _index_packets(self) -> FrameIndex | None:
        """Demux the video packets once (nothing decoded); None if their timestamps cannot index frames.

        A truncated file ends in a packet flagged corrupt.  With B-frames that packet is not the last one in
        display order, so the video is cut at the first corrupt frame: every frame kept is complete and
        frame ``i`` still has the ``i``-th pts.
        """
        import av

        pts: list[int] = []
        keyframes: list[tuple[int, int]] = []  # (pts, dts)
        start_ts: int | None = None
        cut: float = float("inf")
        untimed = False
        packets = 0
        try:
            for packet in self._container.demux(self._stream):
                # Empty packets are PyAV's end-of-stream flush; discard-flagged ones lie before an MP4 edit
                # list's start and are never shown.
                if packet.size == 0 or packet.is_discard:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if packet.is_corrupt:
                    cut = min(cut, ts if ts is not None else cut)
                    continue
                packets += 1
                untimed |= packet.pts is None
                if ts is None:
                    continue
                pts.append(ts)
                dts = packet.dts if packet.dts is not None else ts
                start_ts = dts if start_ts is None else min(start_ts, dts)
                if packet.is_keyframe:
                    keyframes.append((ts, dts))
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"demuxing failed ({e})") from e
        if not packets:
            raise VideoDecodeError(self.path, "video stream has no complete packets")
        pts = sorted(p for p in pts if p < cut)
        if untimed or not pts or len(set(pts)) != len(pts):
            return None  # a dts is no display time, and equal times name no frame
        keyframes = sorted(k for k in keyframes if k[0] < cut)
        key_index = [bisect.bisect_left(pts, p) for p, _ in keyframes]
        return FrameIndex(
            pts,
            key_index,
            [p for p, _ in keyframes],
            [d for _, d in keyframes],
            start_ts,
            self._stream.time_base,
            self._average_fps(pts),
            "packets",
            codec=self._stream.codec_context.name,
        )

    def _index_decoded(self) -> FrameIndex:
        """Decode every frame once and index what the decoder yields (its timestamps, else its order)."""
        import av

        self._open_container()
        timed: list[tuple[int | None, bool]] = []
        first = None
        try:
            for packet in self._container.demux(self._stream):
                if packet.is_corrupt:
                    continue
                for frame in packet.decode():
                    first = frame if first is None else first
                    timed.append((frame.pts, bool(frame.key_frame)))
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"decoding failed after {len(timed)} frames ({e})") from e
        if first is None:
            raise VideoDecodeError(self.path, "no frame could be decoded")
        pts = [ts for ts, _ in timed]
        ordered = None not in pts and all(a < b for a, b in zip(pts, pts[1:], strict=False))
        if not ordered:  # no usable times: frame i is the i-th frame decoded, nothing else is known
            pts, keys = list(range(len(timed))), [0]
        else:
            keys = [i for i, (_, key) in enumerate(timed) if key] or [0]
        index = FrameIndex(
            pts,
            keys,
            [pts[i] for i in keys],
            [pts[i] for i in keys],
            pts[0],
            self._stream.time_base,
            self._average_fps(pts if ordered else []),
            "decoded" if ordered else "ordinal",
            (first.width, first.height),
            round(first.rotation / 90) % 4,
            first.format.components[0].bits,
            self._stream.codec_context.name,
        )
        self._open_container()  # decoded to the end: start the next read afresh
        return index

    def _average_fps(self, pts: list[int]) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate
        if rate:
            return float(rate)
        if len(pts) > 1 and self._stream.time_base:  # no header rate: derive it from the pts span
            return (len(pts) - 1) / float((pts[-1] - pts[0]) * self._stream.time_base)
        return 0.0

    def _first_frame(self) -> av.VideoFrame:
        """Decode the first frame (proves the stream decodes, gives size and rotation)."""
        import av

        try:
            try:
                return self._decode_to(0)
            except _Mismatch as e:
                self._distrust_seeking(e)
                return self._sequential([0])[0]
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"decoding the first frame failed ({e})") from e

    # --------------------------------------------------------------------------------------------- reading

    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        targets = sorted(set(indices))
        decoded = None
        if self.index.seek_trusted:
            try:
                decoded = self._read_seeking(targets)
            except _Mismatch as e:
                self._distrust_seeking(e)
        if decoded is None:
            decoded = {i: self._to_array(frame) for i, frame in self._sequential(targets).items()}
        out = np.empty((len(indices), self.height, self.width, 3), dtype=np.uint8)
        for row, index in enumerate(indices):
            out[row] = decoded[index]
        return torch.from_numpy(out)

    def _read_seeking(self, targets: list[int]) -> dict[int, np.ndarray]:
        import av

        self._wanted = set(targets)
        try:
            return {target: self._to_array(self._decode_to(target)) for target in targets}
        except av.FFmpegError as e:
            self._frames = None
            raise VideoDecodeError(self.path, f"decoding failed ({e})") from e

    def _distrust_seeking(self, mismatch: _Mismatch) -> None:
        """Never seek in this file again in this process; this read is redone by the exact path."""
        self._frames = None
        self.rereads += 1
        if self.index.seek_trusted:
            self.index.seek_trusted = False
            _log.warning(
                "%s: a seek returned other frames than the index says (%s); reading the file sequentially",
                self.path,
                mismatch,
            )

    def _decode_to(self, target: int) -> av.VideoFrame:
        if self._needs_seek(target):
            self._frames = self._pass(bisect.bisect_right(self.index.key_index, target) - 1, target)
        for index, frame in self._frames:
            self._pos = index
            if index == target:
                return frame
            if index > target:
                break
        self._frames = None
        raise _Mismatch(f"frame {target} did not come out of its decode pass")

    def _needs_seek(self, target: int) -> bool:
        if self._frames is None or target <= self._pos or target in self._skipped:
            return True
        k = bisect.bisect_right(self.index.key_index, target) - 1
        # A key frame after the current position means seeking skips decoding the frames in between.
        return k >= 0 and self.index.key_index[k] > self._pos + 1

    def _seek_packets(self, k: int) -> Iterator[av.Packet]:
        """Packets from the ``k``-th key frame on (``k < 0``: from the first packet)."""
        index = self.index
        if k < 0:
            self._container.seek(index.start_ts, stream=self._stream, backward=True)
            return self._container.demux(self._stream)
        # MP4 indexes seeks by pts, AVI by dts.  Seeking by pts is exact for MP4 (by dts it lands one GOP
        # early) but in a B-frame AVI, where a key frame's pts is the next key frame's dts, it lands one GOP
        # late: check the first packet and fall back to the key frame's dts.
        self._container.seek(index.key_pts[k], stream=self._stream, backward=True)
        packets = self._container.demux(self._stream)
        first = next(packets, None)
        if first is not None and first.dts is not None and first.dts > index.key_dts[k]:
            self._container.seek(index.key_dts[k], stream=self._stream, backward=True)
            return self._container.demux(self._stream)
        return _prepend(first, packets) if first is not None else iter(())

    def _pass(self, k: int, target: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """Decode from the ``k``-th key frame, yielding ``(display index, frame)`` as proven by the index.

        Raises `_Mismatch` as soon as the decoder disagrees with the index: the first frame (open-GOP
        leading pictures aside) is not a key frame at or before ``target``, a frame has a time the index
        does not know, or frames come out of order or with a gap that skipping does not explain.
        """
        index, context = self.index, self._stream.codec_context
        earliest = index.key_index[k] if k >= 0 else 0
        self._pos, self._skipped = -1, set()
        expected: int | None = None  # the next display index; None until the first frame proved the seek
        for packet in self._seek_packets(k):
            if packet.is_corrupt:
                # Not indexed, and feeding a truncated H.264 packet makes the decoder raise and lose the
                # frames it still buffers (the last frames before the cut of a truncated file).
                continue
            shown = index.index_of(packet.pts)
            skip = shown is not None and shown not in self._wanted
            if skip:
                self._skipped.add(shown)
            context.skip_frame = "NONREF" if skip else "DEFAULT"
            for frame in packet.decode():
                position = self._frame_position(frame)
                if position is None:
                    continue
                if expected is None:
                    if position < earliest and not index.is_key(position):
                        continue  # a leading picture of an open GOP, decoded without its references
                    start = position == 0 if k < 0 else index.is_key(position) and position <= target
                    if not start:
                        raise _Mismatch(f"decoding from key frame {earliest} began at frame {position}")
                    expected = position
                if position < expected:
                    raise _Mismatch(f"frame {position} came after frame {expected - 1}")
                missing = [i for i in range(expected, position) if i not in self._skipped]
                if missing:
                    raise _Mismatch(f"frame {missing[0]} missing: the decoder went on to frame {position}")
                expected = position + 1
                yield position, frame
        context.skip_frame = "DEFAULT"

    def _frame_position(self, frame: av.VideoFrame) -> int | None:
        """The display index of a decoded frame; None for frames outside the index (before its first
        frame: edit-list pre-roll; after its last: past the cut of a truncated file)."""
        ts = frame.pts
        if ts is None:
            raise _Mismatch("the decoder returned a frame without a timestamp")
        pts = self.index.pts
        if ts < pts[0] or ts > pts[-1]:
            return None
        position = self.index.index_of(ts)
        if position is None:
            raise _Mismatch(f"the decoder returned a frame at time {ts}, which the index does not hold")
        return position

    def _sequential(self, targets: list[int]) -> dict[int, av.VideoFrame]:
        """The exact path: decode from the file's first byte and count frames; frame ``i`` is the i-th."""
        wanted, last = set(targets), max(targets)
        out: dict[int, av.VideoFrame] = {}
        for count, frame in enumerate(self._decode_from_start(last + 1)):
            if count in wanted:
                out[count] = frame
        return out

    def _decode_from_start(self, stop: int) -> Iterator[av.VideoFrame]:
        """Frames ``0 .. stop-1`` of one decode from the file's first byte, counted as they come."""
        import av

        self._frames = None
        self._open_container()
        count = 0
        try:
            for packet in self._container.demux(self._stream):
                if packet.is_corrupt:
                    continue
                for frame in packet.decode():
                    yield frame
                    count += 1
                    if count == stop:
                        return
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"decoding failed after {count} frames ({e})") from e
        raise VideoDecodeError(
            self.path,
            f"frame {stop - 1} of {self.index.num_frames} could not be decoded (it ends at {count})",
        )

    def iter_frames(self) -> Iterator[av.VideoFrame]:
        """Every frame in display order, as decoded (not converted): what re-encoding a whole file needs.

        The frames are the ones `get_frames` would return, proven the same way: one pass from the start
        checked against the index, else the exact sequential path.  A disagreement found after frames were
        already yielded cannot be taken back: it raises `VideoDecodeError`, and the file is then marked so
        that iterating again takes the exact path from the start.
        """
        n = self.index.num_frames
        if self.index.seek_trusted:
            self._wanted = set(range(n))  # nothing is skipped
            count = 0
            try:
                for position, frame in self._pass(-1, 0):
                    if position != count:
                        raise _Mismatch(f"frame {count} missing: the decoder went on to frame {position}")
                    yield frame
                    count += 1
                    if count == n:
                        self._frames = None
                        return
                raise _Mismatch(f"the decode ended after {count} of {n} frames")
            except _Mismatch as e:
                self._distrust_seeking(e)
                if count:
                    raise VideoDecodeError(
                        self.path, f"frames after {count} disagree with the index ({e}); iterate again"
                    ) from e
        yield from self._decode_from_start(n)

    def _to_array(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = self.index.coded_size
        # One reformatter per reader keeps its swscale context: ``frame.to_ndarray(format=...)`` builds one
        # per frame (measured: 1.7 against 0.1 ms a 64×64 frame, 0.57 against 0.34 at 340×256; same pixels).
        # swscale's threads follow the decoder's: its automatic choice starts a thread pool that, on one
        # 340×256 frame, costs 6× the single-threaded conversion (0.20 against 0.03 ms; same pixels), and
        # data-loader workers already use every core.
        threads = self._threads
        if (frame.width, frame.height) == (width, height):  # naming the size: swscale's slower path
            rgb = self._reformatter.reformat(frame, format="rgb24", threads=threads)
        else:  # a mid-stream resolution change: rescale to the first frame's size, as decord does
            rgb = self._reformatter.reformat(
                frame, format="rgb24", width=width, height=height, threads=threads
            )
        array = rgb.to_ndarray()
        # FFmpeg's display matrix angle is counter-clockwise, as is np.rot90 for positive k.
        turns = self.index.quarter_turns
        return np.rot90(array, turns) if turns else array

    @property
    def closed(self) -> bool:
        return self._container is None

    def close(self) -> None:
        if self._container is not None:
            self._frames = None
            self._container.close()
            self._container = None


def _prepend(item, rest: Iterator) -> Iterator:
    yield item
    yield from rest


class DecordReader(VideoReader):
    """decord's ``get_batch`` on a file where its probe frames equalled the exact PyAV reader's.

    ``get_batch`` keeps memory flat here (measured: < 1 MB RSS growth over 400 clips from one reader); it
    is given each frame once in ascending order.  decord returns no timestamps, so its reads cannot be
    checked one by one: the probe at the first open (`_decord_agrees`) is what admits a file.
    """

    backend = "decord"

    def __init__(self, path: Path, vr, verdict: _Verdict, key: _FileKey):
        self.path, self._vr = path, vr
        self._verdict, self._key = verdict, key
        self.num_frames, self.fps = verdict.num_frames, verdict.fps
        self.height, self.width = verdict.height, verdict.width

    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        import decord

        # decord seeks back for every index below its last one: the clips of an evaluation overlap, and
        # asked in clip order they would be decoded once per clip.  Ask each frame once, ascending.
        ascending = sorted(set(indices))
        try:
            # The torch bridge hands decord's buffer over without a copy, and pins the output type whatever
            # bridge the caller set (importing pytorchvideo sets the torch bridge for the whole thread).
            with decord.bridge.use_torch():
                frames = self._vr.get_batch(ascending)
            if ascending == indices:
                return frames
            rows = {index: row for row, index in enumerate(ascending)}
            return frames[[rows[index] for index in indices]]
        except (decord.DECORDError, RuntimeError) as e:
            decord_error = e
        # decord 3.4 fails on some frame sizes that FFmpeg decodes fine ("The size must exactly match", e.g.
        # any side of 32 or 48 px): read the file with PyAV, now and at its later opens in this process.
        try:
            with _pyav_reader(self.path, self._key[1:]) as fallback:
                frames = fallback._get_frames(indices)
        except VideoDecodeError as e:
            raise VideoDecodeError(
                self.path, f"decord failed to decode frames {indices} ({decord_error}), and PyAV: {e.reason}"
            ) from e
        _log.debug("%s: decord failed (%s), reading with PyAV", self.path, decord_error)
        _verdicts.put(self._key, self._verdict._replace(exact=False))
        return frames

    @property
    def closed(self) -> bool:
        return self._vr is None

    def close(self) -> None:
        self._vr = None  # decord frees the native reader (and its decode thread) on deletion


class TorchCodecReader(VideoReader):
    """torchcodec's ``VideoDecoder`` (exact seek mode), each batch's timestamps checked against the index.

    torchcodec 0.17 indexes MPEG-4 AVI with B-frames and MPEG-2 streams wrongly (neighbouring frames, a
    GOP off) and fails on the last frames of some; a batch whose ``pts_seconds`` differ from the index's, or
    that fails, is read again by the exact PyAV reader, which then reads the file for good.
    """

    backend = "torchcodec"

    def __init__(self, path: Path, num_threads: int, index: FrameIndex, key: _FileKey):
        from torchcodec.decoders import VideoDecoder

        self.path, self._threads, self.index, self._key = path, num_threads, index, key
        self._fallback: PyAVReader | None = None
        try:
            self._decoder = VideoDecoder(
                str(path), dimension_order="NHWC", num_ffmpeg_threads=num_threads, seek_mode="exact"
            )
        except (RuntimeError, ValueError) as e:
            raise VideoDecodeError(path, f"torchcodec cannot open it ({e})") from e
        self.num_frames, self.fps = index.num_frames, index.fps
        self.height, self.width = index.size
        self._counted = len(self._decoder)  # by the exact-mode scan

    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        if self._fallback is None:
            try:
                batch = self._decoder.get_frames_at(indices=indices)
            except RuntimeError as e:
                problem = f"torchcodec failed on frames {indices} ({str(e).splitlines()[0]})"
            else:
                times, expected = batch.pts_seconds.numpy(), self.index.seconds(indices)
                wrong = np.flatnonzero(np.abs(times - expected) > 1e-4)
                if not wrong.size:
                    return batch.data.contiguous()
                i = wrong[0]
                problem = f"frame {indices[i]} is at {expected[i]:.4f} s, torchcodec gave {times[i]:.4f} s"
            self.rereads += 1
            _log.warning("%s: %s; reading it with PyAV's exact reader", self.path, problem)
            _verdicts.put(self._key, _verdict(False, self.index))
            self._fallback = PyAVReader(self.path, self._threads, self.index)
        return self._fallback._get_frames(indices)

    @property
    def closed(self) -> bool:
        return self._decoder is None

    def close(self) -> None:
        self._decoder = None
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None


# ----------------------------------------------------------------------------------- per-process memory


_FileKey = tuple[str, str, int, int, int]  # backend, path, size, mtime (ns), inode


class _Verdict(NamedTuple):
    """Whether a backend reads a file exactly (else PyAV reads it), and the file's metadata (PyAV's)."""

    exact: bool
    num_frames: int
    fps: float
    height: int
    width: int


@dataclass(frozen=True)
class KnownFile:
    """What a prepared set's manifest recorded about one file, trusted only while the file is that file.

    `open_video` takes it in place of the first-open work (the demux scan, decord's probe) when the file's
    size and modification time are still ``size`` and ``mtime_ns``; otherwise the file changed since it
    was recorded, and it is looked at afresh (logged once per file).  Even a trusted index is still
    checked on every read, like any other.  ``decord_exact`` is decord's verdict (None: not recorded).
    """

    size: int
    mtime_ns: int
    index: Callable[[], FrameIndex]  # built on first use: a manifest holds many files, a worker reads few
    decord_exact: bool | None = None


_changed_warned: set[str] = set()


def _trust(known: KnownFile, path: Path, stat: os.stat_result, file: tuple[str, int, int, int]) -> bool:
    """Seed this process's memory with ``known`` if it still describes the file at ``path``."""
    if (stat.st_size, stat.st_mtime_ns) != (known.size, known.mtime_ns):
        if str(path) not in _changed_warned:
            _changed_warned.add(str(path))
            _log.warning(
                "%s changed since its manifest entry was written (size %d, mtime %d; recorded %d, %d): "
                "checking the file itself",
                path,
                stat.st_size,
                stat.st_mtime_ns,
                known.size,
                known.mtime_ns,
            )
        return False
    if _indexes.get(file) is None:
        _indexes.put(file, known.index())
    if known.decord_exact is not None and _verdicts.get(("decord", *file)) is None:
        _verdicts.put(("decord", *file), _verdict(known.decord_exact, _indexes.get(file)))
    return True


class _LRU:
    """A bounded mapping, least recently used dropped first; thread-safe."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def pop(self, key) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_verdicts = _LRU(OPEN_CACHE_SIZE)  # (backend, file) -> _Verdict
_indexes = _LRU(INDEX_CACHE_SIZE)  # file -> FrameIndex


def clear_open_cache() -> None:
    """Forget every file's index and backend verdicts in this process (to time cold opens; rewritten files
    need not: they are looked at again)."""
    _verdicts.clear()
    _indexes.clear()


def _pyav_reader(path: Path, file: tuple[str, int, int, int], num_threads: int = 1) -> PyAVReader:
    """A PyAV reader with the file's index from this process's memory, or a fresh one (then remembered)."""
    index = _indexes.get(file)
    reader = PyAVReader(path, num_threads, index)
    if index is None:
        _indexes.put(file, reader.index)
    return reader


def _verdict(exact: bool, index: FrameIndex) -> _Verdict:
    return _Verdict(exact, index.num_frames, index.fps, *index.size)


# ---------------------------------------------------------------------------------------------- openers


def _open_pyav(path: Path, key: _FileKey, num_threads: int) -> VideoReader:
    return _pyav_reader(path, key[1:], num_threads)


def _open_decord(path: Path, key: _FileKey, num_threads: int) -> VideoReader:
    verdict = _verdicts.get(key)
    if verdict is not None and not verdict.exact:
        return _pyav_reader(path, key[1:], num_threads)
    if verdict is not None:
        vr = _decord_open(path, num_threads)
        if len(vr) == verdict.num_frames:
            return DecordReader(path, vr, verdict, key)
        _verdicts.pop(key)  # same size, mtime and inode but new content: look again
        _indexes.pop(key[1:])
    reference = _pyav_reader(path, key[1:], num_threads)
    height, width = reference.index.size
    # decord 3.4 transposes 90-degree rotated frames but copies them into an untransposed buffer: every
    # get_batch fails with "The size must exactly match".  Above 1080p the probe would hold two decoders'
    # reference frames at once (4K: 629 MB peak, against 191 MB for PyAV alone), for little gain.
    if reference.index.quarter_turns % 2 or height * width > DECORD_MAX_PIXELS:
        _log.debug("%s: not a file for decord (rotated 90 degrees, or above 1080p), reading with PyAV", path)
        _verdicts.put(key, _verdict(False, reference.index))
        return reference
    try:
        vr = _decord_open(path, num_threads)
    except VideoDecodeError as e:  # e.g. an MPEG-4 elementary stream (.m4v): "Failed to measure duration"
        _log.debug("%s: %s; reading with PyAV", path, e.reason)
        _verdicts.put(key, _verdict(False, reference.index))
        return reference
    # The exact reader's probe frames first, and its decoder closed before decord's runs: two decoders of a
    # 4K stream at once hold twice the reference frames (measured: 629 MB peak against 240 MB).
    index, probes = reference.index, _probe_frames(reference.index)
    expected = [reference.get_frames(indices) for indices in probes]
    reference.close()
    exact = _decord_agrees(vr, index, probes, expected)
    _verdicts.put(key, _verdict(exact, index))
    if not exact:
        _log.debug("%s: decord's frames differ from the exact reader's, reading with PyAV", path)
        return PyAVReader(path, num_threads, index)
    return DecordReader(path, vr, _verdicts.get(key), key)


def _decord_open(path: Path, num_threads: int):
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
    except (decord.DECORDError, RuntimeError) as e:
        raise VideoDecodeError(path, f"decord cannot open it ({e})") from e


def _probe_frames(index: FrameIndex) -> list[list[int]]:
    """The frames decord must get right before it reads a file, in one request that jumps as clips do.

    Right after the middle GOP's key frame (the B-frames reordered there are where decord's seeks go wrong
    on open GOPs, MPEG-2 and MPEG-4 in MP4), then forward into the last GOP, then back to the start.  Each
    lies a frame or two after a key frame, so the exact reader decodes only a few frames, whatever the GOP.
    Chosen on the codec corpus (tests/codec_corpus.py): this request rejects every file there that decord
    reads wrong, as the longer two-request probe it replaced did, at about half of decord's cost.
    """
    n, keys = index.num_frames, index.key_index
    middle, last = keys[len(keys) // 2], keys[-1]
    return [[min(n - 1, middle + 1), min(n - 1, last + 2), min(n - 1, 1)]]


def _decord_agrees(vr, index: FrameIndex, probes: list[list[int]], expected: list[torch.Tensor]) -> bool:
    """True if decord indexes the same frames at the same times (cheap: nothing decoded), and returns the
    exact reader's pixels on the probe frames (its times alone let wrong frames through: HEVC in MKV)."""
    import decord

    if len(vr) != index.num_frames:
        return False
    if index.source == "packets":
        # decord reports (pts - stream start) * time_base as float32 seconds.
        ours = (np.asarray(index.pts, dtype=np.float64) - index.pts[0]) * float(index.time_base)
        theirs = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0]
        if not np.allclose(theirs - theirs[0], ours, rtol=0, atol=1e-3):
            return False
    for indices, ours in zip(probes, expected, strict=True):
        try:
            with decord.bridge.use_torch():
                theirs = vr.get_batch(indices)
        except (decord.DECORDError, RuntimeError):
            return False
        if theirs.shape != ours.shape:
            return False
        if (theirs.to(torch.int16) - ours.to(torch.int16)).abs().max() > PROBE_TOLERANCE:
            return False
    return True


_TORCHCODEC_CRASHES_ON = {"av1", "libdav1d"}


def _open_torchcodec(path: Path, key: _FileKey, num_threads: int) -> VideoReader:
    """A torchcodec reader where it counts the index's frames, else (and where it erred before) PyAV.

    Two kinds of stream go to PyAV.  More than 8 bits per sample: torchcodec converts them to RGB in its own
    way (measured: up to 30 levels from FFmpeg's swscale on 10-bit H.264), so its frames differ from the
    sequential decode although they are the right ones.  AV1: torchcodec 0.17 on the system's FFmpeg 5.1
    (libdav1d 6) died with SIGSEGV on a 40-frame AV1 MP4 in a process that had decoded it with PyAV.
    """
    file, verdict = key[1:], _verdicts.get(key)
    if verdict is not None and not verdict.exact:
        return _pyav_reader(path, file, num_threads)
    index = _indexes.get(file)
    if index is None:
        with _pyav_reader(path, file, num_threads) as reference:
            index = reference.index
    reader = None
    if index.bits <= 8 and index.codec not in _TORCHCODEC_CRASHES_ON:
        try:
            reader = TorchCodecReader(path, num_threads, index, key)
        except VideoDecodeError as e:
            _log.debug("%s: %s; reading with PyAV", path, e.reason)
    if reader is None or reader._counted != index.num_frames:
        if reader is not None:
            reader.close()
        _verdicts.put(key, _verdict(False, index))
        return PyAVReader(path, num_threads, index)
    if verdict is None:
        _verdicts.put(key, _verdict(True, index))
    return reader


# ------------------------------------------------------------------------------------- the backend table


@dataclass(frozen=True)
class Backend:
    """One video backend: how it opens a file, how its frames are proven, what it needs to load."""

    name: str
    open: Callable[[Path, _FileKey, int], VideoReader]
    proof: str
    module: str  # imported to use it
    install: str  # what to install when it does not load
    loads_check: Callable[[object], bool] = lambda module: True  # given the imported module

    def loads(self) -> bool:
        """Whether the backend really works here (not only imports): asked afresh each time."""
        try:
            module = importlib.import_module(self.module)
        except (ImportError, OSError, RuntimeError):
            return False
        return bool(self.loads_check(module))


def _torchcodec_has_ffmpeg(module) -> bool:
    # torchcodec imports without FFmpeg and fails at the first decoder; it records whether the libraries
    # loaded (``ffmpeg_major_version`` is None where they did not).
    import torchcodec

    return torchcodec.ffmpeg_major_version is not None


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            "decord",
            _open_decord,
            "probe frames decoded by decord and by the exact PyAV reader are identical at the first open",
            "decord",
            "pip install decord2",
        ),
        Backend(
            "pyav",
            _open_pyav,
            "every frame's timestamp is the index's for its position; else the sequential exact path",
            "av",
            "pip install av",
        ),
        Backend(
            "torchcodec",
            _open_torchcodec,
            "every batch's pts_seconds equal the index's; else the exact PyAV reader",
            "torchcodec.decoders",
            "pip install iresvid[torchcodec], and FFmpeg's shared libraries (Debian: apt-get install "
            "libavdevice59)",
            _torchcodec_has_ffmpeg,
        ),
    )
}


# The default: PyAV's fast path is exact on every read and, skipping the non-reference frames no clip needs,
# at least as fast as decord's get_batch on B-frame files (the data benchmark: 1.2x at 340x256 and 720p),
# within a few percent without B-frames, and its first open needs no probe.
DEFAULT_BACKEND = "pyav"


def list_backends() -> list[str]:
    """The backends that really load on this machine, in `BACKENDS` order."""
    return [name for name, backend in BACKENDS.items() if backend.loads()]


def open_video(
    path: str | Path,
    backend: str = DEFAULT_BACKEND,
    *,
    num_threads: int = 1,
    known: KnownFile | None = None,
) -> VideoReader:
    """Open ``path`` for frame-exact random access with ``backend`` (a key of `BACKENDS`).

    ``num_threads`` is the decoder's thread count (0 = FFmpeg's automatic choice); data-loader workers want 1.
    Raises FileNotFoundError for a missing path (or a dangling symbolic link), PermissionError for a file
    this process may not read (or a folder on its path it may not search), VideoDecodeError for a file
    without a decodable video stream (or a path that cannot be resolved, e.g. a symbolic link loop),
    ImportError when the backend does not load here.  Every error names the path.

    The reader returned may be PyAV's (``reader.backend == "pyav"``) where the backend asked for is not
    exact on this file (see each `Backend.proof`).  ``known`` is what a manifest recorded about the file
    (`KnownFile`): it spares the first open's checks while the file is unchanged.
    """
    spec = BACKENDS.get(backend)
    if spec is None:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {tuple(BACKENDS)}")
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0 = automatic), got {num_threads}")
    if not spec.loads():
        raise ImportError(f"the {backend} video backend does not load here; it needs {spec.install}")
    path = Path(path)
    stat = _stat(path)
    if not S_ISREG(stat.st_mode):
        raise VideoDecodeError(path, "not a regular file")
    if stat.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    # Checked here, not left to the decoders: they would report it as an undecodable file, and an open of a
    # file checked earlier in this process (the memory ignores permissions) would succeed.
    if not os.access(path, os.R_OK):
        raise PermissionError(errno.EACCES, "video file not readable (permission denied)", str(path))
    key = (backend, str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if known is not None:
        _trust(known, path, stat, key[1:])
    return spec.open(path, key, num_threads)


def _stat(path: Path) -> os.stat_result:
    """``path``'s status, following symbolic links, with the failure said in words that name the path."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        what = "dangling symbolic link" if path.is_symlink() else "video file not found"
        raise FileNotFoundError(errno.ENOENT, what, str(path)) from None
    except PermissionError:
        # stat needs no permission on the file itself, only search permission on every folder above it.
        raise PermissionError(errno.EACCES, "a folder on the path cannot be searched", str(path)) from None
    except OSError as e:  # a symbolic link loop (ELOOP), a name too long, an I/O error
        raise VideoDecodeError(path, f"cannot resolve the path ({e.strerror})") from e
