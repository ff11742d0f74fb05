"""Frame-exact video readers behind one interface: decord, PyAV and (optionally) torchcodec.

``open_video(path, backend).get_frames(indices)`` returns uint8 ``(T, H, W, C)`` frames where frame ``i`` is
exactly the ``i``-th displayed frame, i.e. what decoding the whole video in order with PyAV gives.  Indices
mean *display order*, so every backend has to survive these traps:

* With B-frames, packets are stored out of display order and AVI files then start at pts 1, not 0: a reader
  that turns indices into timestamps with ``index / fps`` is off by one frame.
* A seek lands on a keyframe before the requested time (or after it: AVI indexes seeks by dts, so seeking to
  a B-frame AVI keyframe's pts lands on the next keyframe), so the decoder must run forward and match frames
  by pts, never by counting from where it thinks it landed.
* Container headers lie about the frame count (truncated files keep the original ``nb_frames``).

The PyAV and decord readers therefore work from a pts table built by demuxing the video packets once (cheap,
nothing is decoded): ``num_frames`` is the number of indexed packets and frame ``i`` has the ``i``-th
smallest pts; torchcodec's exact mode does the same scan itself.  Only the video stream is read: audio is
discarded by the demuxer, never decoded.  Frames come in display orientation (rotation metadata applied, as
decord and torchcodec >= 0.11 do); ``height`` and ``width`` are the displayed size.

Checking decord's index against the PyAV table costs more than decord's own open (measured on 10 s 320×240
H.264: 10 ms against 3.4 ms), so each process remembers, per file, what the check found (`OPEN_CACHE_SIZE`
files, least recently used dropped): a data-loader worker reopening a file in a later epoch opens it with
decord alone.  Files are identified by path, size, mtime and inode, so a rewritten file is checked again.
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
from collections.abc import Iterator, Sequence
from functools import cache
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
    "OPEN_CACHE_SIZE",
    "VideoDecodeError",
    "VideoReader",
    "clear_open_cache",
    "list_backends",
    "open_video",
]

BACKENDS = ("decord", "pyav", "torchcodec")
OPEN_CACHE_SIZE = 32768  # files per process; an entry is about 0.5 kB
_MODULES = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec.decoders"}

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


@cache
def _importable(backend: str) -> bool:
    try:
        importlib.import_module(_MODULES[backend])
    except (ImportError, OSError, RuntimeError):  # torchcodec raises RuntimeError when FFmpeg is missing
        return False
    return True


def list_backends() -> list[str]:
    """Backends whose library imports on this machine, in ``BACKENDS`` order."""
    return [backend for backend in BACKENDS if _importable(backend)]


class VideoReader(ABC):
    """Random access to the frames of one video; one subclass per backend.

    ``duration`` is ``num_frames / fps`` (exact for constant frame rate, the nominal length otherwise).
    Readers hold an open decoder: close them (or use ``with``) instead of keeping them around.
    """

    backend: str
    path: Path
    num_frames: int
    fps: float
    height: int
    width: int

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


def open_video(path: str | Path, backend: str = "decord", *, num_threads: int = 1) -> VideoReader:
    """Open ``path`` for frame-exact random access with ``backend`` (one of ``BACKENDS``).

    ``num_threads`` is the decoder's thread count (0 = FFmpeg's automatic choice); data-loader workers want 1.
    Raises FileNotFoundError for a missing path (or a dangling symbolic link), PermissionError for a file
    this process may not read (or a folder on its path it may not search), VideoDecodeError for a file
    without a decodable video stream (or a path that cannot be resolved, e.g. a symbolic link loop),
    ImportError when the backend's library is not installed.  Every error names the path.

    With ``backend="decord"`` the returned reader may be a PyAV one (``reader.backend == "pyav"``): decord
    builds its own frame index and seeks with it, and on files where that index disagrees with the PyAV
    packet table (e.g. MPEG-4 AVI with B-frames, where decord gets no pts for a third of the packets and then
    returns neighbouring frames) only PyAV is frame-exact.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0 = automatic), got {num_threads}")
    path = Path(path)
    stat = _stat(path)
    if not S_ISREG(stat.st_mode):
        raise VideoDecodeError(path, "not a regular file")
    if stat.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    # Checked here, not left to the decoders: they would report it as an undecodable file, and a decord open
    # of a file checked earlier in this process (the cache ignores permissions) as a decord failure.
    if not os.access(path, os.R_OK):
        raise PermissionError(errno.EACCES, "video file not readable (permission denied)", str(path))
    if backend == "torchcodec":
        return _open_torchcodec(path, stat, num_threads)
    if backend == "pyav":
        return PyAVReader(path, num_threads)
    return _open_decord(path, stat, num_threads)


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


class PyAVReader(VideoReader):
    """Decodes with PyAV, seeking only when a keyframe lies between the current position and the target.

    Requested frames are visited in ascending order: targets in the same GOP (or with no keyframe between
    them) are reached by decoding forward, a far or backward jump seeks to the last keyframe at or before
    the target.  Decoded frames are identified by pts, so wherever a seek lands the right frame comes out;
    if the target never appears (seek landed after it, decoder dropped it) decoding restarts from the first
    packet once before giving up with VideoDecodeError.
    """

    backend = "pyav"

    def __init__(self, path: Path, num_threads: int = 1):
        import av

        self.path = path
        try:
            self._container = av.open(str(path), metadata_errors="ignore")
        except (av.FFmpegError, OSError) as e:
            raise VideoDecodeError(path, f"cannot open container ({e})") from e
        try:
            self._stream = self._video_stream()
            self._stream.codec_context.thread_count = num_threads
            if num_threads != 1:
                self._stream.codec_context.thread_type = "AUTO"  # frame + slice threads
            self._build_index()
            self._frames: Iterator[tuple[int, av.VideoFrame]] | None = None
            self._pos = -1  # display index of the last frame the current decode pass produced
            first = self._first_frame()
        except BaseException:
            self._container.close()
            raise
        self._coded_size = (first.width, first.height)
        # Rotation is read from the first frame's side data (PyAV exposes no stream-level getter).
        self._quarter_turns = round(first.rotation / 90) % 4
        self.width, self.height = self._coded_size[:: 1 if self._quarter_turns % 2 == 0 else -1]
        self.fps = self._average_fps()

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

    def _build_index(self) -> None:
        """Demux the video packets once (no decoding) into the display-order pts table and keyframe list.

        A truncated file ends in a packet flagged corrupt.  With B-frames that packet is not the last one in
        display order, so the video is cut at the first corrupt frame: every frame kept is complete and
        frame ``i`` still has the ``i``-th pts.
        """
        import av

        pts: list[int] = []
        keyframes: list[tuple[int, int]] = []  # (pts, dts)
        start_ts: int | None = None  # smallest dts: where decoding the whole stream starts
        cut: float = float("inf")
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
                if ts is None:
                    raise VideoDecodeError(self.path, "video packets carry no timestamps")
                pts.append(ts)
                dts = packet.dts if packet.dts is not None else ts
                start_ts = dts if start_ts is None else min(start_ts, dts)
                if packet.is_keyframe:
                    keyframes.append((ts, dts))
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"demuxing failed ({e})") from e
        pts = sorted(p for p in pts if p < cut)
        if start_ts is None or not pts:
            raise VideoDecodeError(self.path, "video stream has no complete packets")
        self._start_ts = start_ts
        self._index_of = {p: i for i, p in enumerate(pts)}
        if len(self._index_of) != len(pts):
            raise VideoDecodeError(self.path, "video packets have duplicate timestamps")
        self._pts = pts
        self.num_frames = len(pts)
        keyframes = sorted(k for k in keyframes if k[0] < cut)
        self._key_index = [self._index_of[p] for p, _ in keyframes]
        self._key_pts = [p for p, _ in keyframes]
        self._key_dts = [d for _, d in keyframes]

    def _average_fps(self) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate
        if rate:
            return float(rate)
        if self.num_frames > 1 and self._stream.time_base:  # no header rate: derive it from the pts span
            return (self.num_frames - 1) / float((self._pts[-1] - self._pts[0]) * self._stream.time_base)
        return 0.0

    def _first_frame(self) -> av.VideoFrame:
        """Decode the first frame (proves the stream decodes, gives size and rotation); keep it for reuse."""
        import av

        try:
            frames = self._decode_from(0)
            first = next(frames, None)
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"decoding the first frame failed ({e})") from e
        if first is None:
            raise VideoDecodeError(self.path, "no frame could be decoded")
        self._frames = _prepend(first, frames)
        return first[1]

    def _decode_from(self, target: int | None) -> Iterator[tuple[int, av.VideoFrame]]:
        """Seek to the last keyframe at or before display index ``target`` (None: the first packet)."""
        k = bisect.bisect_right(self._key_index, target) - 1 if target is not None else -1
        self._pos = -1
        if k < 0:
            self._container.seek(self._start_ts, stream=self._stream, backward=True)
            return self._decoded(self._container.demux(self._stream))
        # MP4 indexes seeks by pts, AVI by dts.  Seeking by pts is exact for MP4 (by dts it lands one GOP
        # early) but in a B-frame AVI, where a keyframe's pts is the next keyframe's dts, it lands one GOP
        # late: check the first packet and fall back to the keyframe's dts.
        self._container.seek(self._key_pts[k], stream=self._stream, backward=True)
        packets = self._container.demux(self._stream)
        first = next(packets, None)
        if first is not None and first.dts is not None and first.dts > self._key_dts[k]:
            self._container.seek(self._key_dts[k], stream=self._stream, backward=True)
            packets = self._container.demux(self._stream)
        elif first is not None:
            packets = _prepend(first, packets)
        return self._decoded(packets)

    def _decoded(self, packets: Iterator[av.Packet]) -> Iterator[tuple[int, av.VideoFrame]]:
        for packet in packets:
            if packet.is_corrupt:
                # Not indexed, and feeding a truncated H.264 packet makes the decoder raise and lose the
                # frames it still buffers (the last frames before the cut of a truncated file).
                continue
            for frame in packet.decode():
                index = self._index_of.get(frame.pts if frame.pts is not None else frame.dts)
                if index is not None:  # frames of unindexed (corrupt, cut off) packets are not addressable
                    yield index, frame

    def _needs_seek(self, target: int) -> bool:
        if self._frames is None or target <= self._pos:
            return True
        k = bisect.bisect_right(self._key_index, target) - 1
        # A keyframe after the current position means seeking skips decoding the frames in between.
        return k >= 0 and self._key_index[k] > self._pos + 1

    def _decode_to(self, target: int) -> av.VideoFrame:
        import av

        for restart in (target, None):
            try:
                if restart is None or self._needs_seek(target):
                    self._frames = self._decode_from(restart)
                for index, frame in self._frames:
                    self._pos = index
                    if index == target:
                        return frame
                    if index > target:
                        break
            except av.FFmpegError as e:
                self._frames = None
                raise VideoDecodeError(self.path, f"decoding failed before frame {target} ({e})") from e
            self._frames = None  # the pass overshot or ended without the target
            _log.debug(
                "%s: frame %d not reached from its keyframe, decoding from the start", self.path, target
            )
        raise VideoDecodeError(self.path, f"frame {target} of {self.num_frames} could not be decoded")

    def _to_array(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = self._coded_size
        if (frame.width, frame.height) == (width, height):
            array = frame.to_ndarray(format="rgb24")  # naming the size would take swscale's slower path
        else:  # a mid-stream resolution change: rescale to the first frame's size, as decord does
            array = frame.to_ndarray(format="rgb24", width=width, height=height)
        # FFmpeg's display matrix angle is counter-clockwise, as is np.rot90 for positive k.
        return np.rot90(array, self._quarter_turns) if self._quarter_turns else array

    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        out = np.empty((len(indices), self.height, self.width, 3), dtype=np.uint8)
        decoded = {target: self._to_array(self._decode_to(target)) for target in sorted(set(indices))}
        for row, index in enumerate(indices):
            out[row] = decoded[index]
        return torch.from_numpy(out)

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


class _IndexCheck(NamedTuple):
    """What checking a file's decord or torchcodec index against the PyAV packet table found; the metadata
    is the PyAV reader's."""

    exact: bool
    num_frames: int
    fps: float
    height: int
    width: int


class DecordReader(VideoReader):
    """decord's ``get_batch`` on a file whose decord index matched the PyAV packet table (at this open or an
    earlier one in this process).

    ``get_batch`` keeps memory flat here (measured: < 1 MB RSS growth over 400 clips from one reader) and
    handles unsorted and repeated indices itself.  Frames are bit-identical to PyAV's (same libavcodec 62).
    """

    backend = "decord"

    def __init__(self, path: Path, vr, checked: _IndexCheck, key: _FileKey):
        self.path = path
        self._vr = vr
        self._checked, self._key = checked, key
        self.num_frames, self.fps = checked.num_frames, checked.fps
        self.height, self.width = checked.height, checked.width

    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        import decord

        try:
            # The torch bridge hands decord's buffer over without a copy, and pins the output type whatever
            # bridge the caller set (importing pytorchvideo sets the torch bridge for the whole thread).
            with decord.bridge.use_torch():
                return self._vr.get_batch(indices)
        except (decord.DECORDError, RuntimeError) as e:
            decord_error = e
        # decord 3.4 fails on some frame sizes that FFmpeg decodes fine ("The size must exactly match", e.g.
        # any side of 32 or 48 px): read the file with PyAV, now and at its later opens in this process.
        try:
            with PyAVReader(self.path) as fallback:
                frames = fallback._get_frames(indices)
        except VideoDecodeError as e:
            raise VideoDecodeError(
                self.path, f"decord failed to decode frames {indices} ({decord_error}), and PyAV: {e.reason}"
            ) from e
        _log.debug("%s: decord failed (%s), reading with PyAV", self.path, decord_error)
        _checked.put(self._key, self._checked._replace(exact=False))
        return frames

    @property
    def closed(self) -> bool:
        return self._vr is None

    def close(self) -> None:
        self._vr = None  # decord frees the native reader (and its decode thread) on deletion


_FileKey = tuple[str, str, int, int, int]  # backend checked, path, size, mtime (ns), inode


def _file_key(backend: str, path: Path, stat: os.stat_result) -> _FileKey:
    return (backend, str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


class _CheckCache:
    """`_IndexCheck` per (backend, file), bounded to ``maxsize`` entries (least recently used dropped);
    thread-safe."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._entries: OrderedDict[_FileKey, _IndexCheck] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _FileKey) -> _IndexCheck | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: _FileKey, value: _IndexCheck) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def pop(self, key: _FileKey) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_checked = _CheckCache(OPEN_CACHE_SIZE)


def clear_open_cache() -> None:
    """Forget every file's decord and torchcodec check in this process (to time cold opens; rewritten files
    need not: they are checked again)."""
    _checked.clear()


def _open_decord(path: Path, stat: os.stat_result, num_threads: int) -> VideoReader:
    key = _file_key("decord", path, stat)
    checked = _checked.get(key)
    if checked is not None and not checked.exact:
        return PyAVReader(path, num_threads)
    if checked is not None:
        vr = _decord_open(path, num_threads)
        if len(vr) == checked.num_frames:
            return DecordReader(path, vr, checked, key)
        _checked.pop(key)  # same size, mtime and inode but new content: check it again
    reference = PyAVReader(path, num_threads)
    if reference._quarter_turns % 2:
        # decord 3.4 transposes such frames but copies them into an untransposed buffer: every get_batch
        # fails with "The size must exactly match".
        _log.debug("%s: decord cannot read 90-degree rotated video, reading with PyAV", path)
        _checked.put(key, _check(False, reference))
        return reference
    try:
        vr = _decord_open(path, num_threads)
    except VideoDecodeError:
        reference.close()
        raise
    checked = _check(_decord_index_matches(vr, reference), reference)
    _checked.put(key, checked)
    if not checked.exact:
        _log.debug("%s: decord's frame index disagrees with the packet table, reading with PyAV", path)
        return reference
    reference.close()
    return DecordReader(path, vr, checked, key)


def _decord_open(path: Path, num_threads: int):
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
    except (decord.DECORDError, RuntimeError) as e:
        raise VideoDecodeError(path, f"decord cannot open it ({e})") from e


def _check(exact: bool, reference: PyAVReader) -> _IndexCheck:
    return _IndexCheck(exact, reference.num_frames, reference.fps, reference.height, reference.width)


def _decord_index_matches(vr, reference: PyAVReader) -> bool:
    """True if decord indexed the same frames at the same times as the PyAV packet table."""
    if len(vr) != reference.num_frames:
        return False
    stream = reference._stream
    # decord reports (pts - stream start_time) * time_base as float32 seconds.
    start = stream.start_time or 0
    ours = (np.asarray(reference._pts, dtype=np.float64) - start) * float(stream.time_base)
    theirs = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0]
    return bool(np.allclose(theirs, ours, rtol=0, atol=1e-3))


def _open_torchcodec(path: Path, stat: os.stat_result, num_threads: int) -> VideoReader:
    """A torchcodec reader where its frame index matches the PyAV packet table, else the PyAV reader.

    torchcodec 0.17's exact mode indexes MPEG-4 AVI files with B-frames wrongly (its key frames land two
    frames early and it returns neighbouring frames), and counts the incomplete last packet of a truncated
    file as a frame (reading it fails).  Both show as a different frame count or key-frame list; the check
    is remembered per file, as decord's is.
    """
    key = _file_key("torchcodec", path, stat)
    checked = _checked.get(key)
    if checked is not None and not checked.exact:
        return PyAVReader(path, num_threads)
    try:
        reader = TorchCodecReader(path, num_threads)
    except VideoDecodeError:
        reader = None  # PyAV may still read it (and if not, its error is the one every backend gives)
    if checked is not None and reader is not None and reader.num_frames == checked.num_frames:
        return reader._with_metadata(checked)
    reference = PyAVReader(path, num_threads)
    exact = (
        reader is not None
        and reader.num_frames == reference.num_frames
        and reader._key_frames() == reference._key_index
    )
    checked = _check(exact, reference)
    _checked.put(key, checked)
    if not exact:
        if reader is not None:
            reader.close()
        _log.debug("%s: torchcodec's frame index disagrees with the packet table, reading with PyAV", path)
        return reference
    reference.close()
    return reader._with_metadata(checked)


class TorchCodecReader(VideoReader):
    """torchcodec's ``VideoDecoder`` in exact seek mode (it scans the file, so its frame count is real).

    Opened through `open_video`, only on files whose index it gets right (see `_open_torchcodec`).
    torchcodec < 0.11 ignores rotation metadata and returns the stored orientation.
    """

    backend = "torchcodec"

    def __init__(self, path: Path, num_threads: int = 1):
        try:
            from torchcodec.decoders import VideoDecoder
        except (ImportError, OSError, RuntimeError) as e:
            raise ImportError(
                f"the torchcodec video backend needs torchcodec: pip install iresvid[torchcodec] ({e})"
            ) from e
        self.path = path
        try:
            self._decoder = VideoDecoder(
                str(path), dimension_order="NHWC", num_ffmpeg_threads=num_threads, seek_mode="exact"
            )
        except (RuntimeError, ValueError) as e:
            raise VideoDecodeError(path, f"torchcodec cannot open it ({e})") from e
        metadata = self._decoder.metadata
        self.num_frames = len(self._decoder)  # counted by the exact-mode scan, not read from the header
        self.fps = float(metadata.average_fps or 0.0)
        self.height, self.width = int(metadata.height), int(metadata.width)

    def _key_frames(self) -> list[int]:
        return self._decoder._get_key_frame_indices().tolist()

    def _with_metadata(self, checked: _IndexCheck) -> TorchCodecReader:
        """The PyAV reader's frame rate and displayed size: every backend reports the same for a file."""
        self.fps, self.height, self.width = checked.fps, checked.height, checked.width
        return self

    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        try:
            return self._decoder.get_frames_at(indices=indices).data.contiguous()
        except RuntimeError as e:
            raise VideoDecodeError(self.path, f"torchcodec failed to decode frames {indices} ({e})") from e

    @property
    def closed(self) -> bool:
        return self._decoder is None

    def close(self) -> None:
        self._decoder = None
