"""Frame-exact readers of iresvid.data.video_io, checked on genuinely encoded files.

The reference for frame ``i`` is always the ``i``-th frame of a full sequential PyAV decode of the file.  Each
synthetic frame also carries its own index as the intensity of two large flat halves (16 + 5 i and its
mirror), so a reader that is off by one frame fails even if the reference were wrong in the same way.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import random
import sys
from pathlib import Path

import av
import numpy as np
import psutil
import pytest
import torch
from media import backend_params, remux_faststart, write_audio_only, write_timed

from iresvid.data import video_io
from iresvid.data.encode import write_video
from iresvid.data.video_io import BACKENDS, VideoDecodeError, list_backends, open_video

AVAILABLE = list_backends()
BACKEND_PARAMS = backend_params()
N, H, W, FPS = 48, 48, 64, 25
STEP = 5  # intensity step between neighbouring frames in the flat halves
MAIN = ("mp4", "mp4_bframes", "avi", "avi_bframes")
# Largest allowed |difference| to the sequential PyAV decode.  decord2 3.4 bundles the same libavcodec 62.28
# and libswscale 9.5 as PyAV 18.1 and is bit-identical (measured), so both must match exactly.  torchcodec
# links the system FFmpeg, whose RGB conversion may round differently; 2 levels stays well below STEP.
TOLERANCE = {"pyav": 0, "decord": 0}


def pattern(n: int, h: int = H, w: int = W) -> np.ndarray:
    """Frame i: left half 16 + STEP*i, right half the reverse ramp, and a small square moving 1 px a frame."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, :, : w // 2] = 16 + STEP * i
        frames[i, :, w // 2 :] = 16 + STEP * (n - 1 - i)
        x = i % (w - 8)
        frames[i, h // 2 - 4 : h // 2 + 4, x : x + 8] = (255, 64, 0)
    return frames


def frame_id(frame: np.ndarray) -> int:
    return round((float(frame[2:12, 2 : frame.shape[1] // 2 - 2].mean()) - 16) / STEP)


def sequential_decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def assert_frames(got: torch.Tensor, expected: np.ndarray, backend: str) -> None:
    assert got.dtype == torch.uint8 and got.shape == expected.shape and got.is_contiguous()
    diff = np.abs(got.numpy().astype(np.int16) - expected.astype(np.int16)).max(initial=0)
    assert diff <= TOLERANCE.get(backend, 2), f"max abs difference {diff} to the sequential PyAV decode"


def write_with_audio(path: Path, frames: np.ndarray, rate: int = 16000) -> Path:
    """H.264 video plus an interleaved AAC sine track."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        t = np.arange(rate * len(frames) // FPS) / rate
        sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        chunk, sent = 1024, 0
        for i, frame in enumerate(frames):
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            while sent < sine.shape[1] and sent <= (i + 1) * rate // FPS:
                samples = av.AudioFrame.from_ndarray(sine[:, sent : sent + chunk].copy(), "fltp", "mono")
                samples.sample_rate = rate
                container.mux(audio.encode(samples))
                sent += chunk
        container.mux(video.encode())
        container.mux(audio.encode())
    return path


def first_half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video_io")
    frames = pattern(N)
    files = {
        "mp4": write_video(root / "plain.mp4", frames, fps=FPS),
        "mp4_bframes": write_video(root / "bframes.mp4", frames, fps=FPS, bframes=2),
        "avi": write_video(root / "plain.avi", frames, fps=FPS),
        "avi_bframes": write_video(root / "bframes.avi", frames, fps=FPS, bframes=2),
        "one_mp4": write_video(root / "one.mp4", frames[:1], fps=FPS),
        "one_avi": write_video(root / "one.avi", frames[:1], fps=FPS),
        "with_audio": write_with_audio(root / "with_audio.mp4", frames[:30]),
        "vfr": write_timed(
            root / "vfr.mp4", frames[:12], pts_ms=[0, 40, 80, 160, 180, 220, 340, 380, 420, 480, 520, 560]
        ),
        "rot90": write_timed(root / "rot90.mp4", frames[:10], rotation=90),
        "rot180": write_timed(root / "rot180.mp4", frames[:10], rotation=180),
        "audio_only": write_audio_only(root / "audio_only.m4a"),
        "random": root / "random.mp4",
        "zero": root / "zero.mp4",
    }
    files["random"].write_bytes(np.random.default_rng(0).bytes(40_000))
    files["zero"].touch()
    files["truncated_mp4"] = first_half(files["mp4_bframes"], root / "truncated.mp4")
    files["truncated_avi"] = first_half(files["avi_bframes"], root / "truncated.avi")
    faststart = remux_faststart(files["mp4_bframes"], root / "faststart.mp4")
    files["truncated_faststart_mp4"] = first_half(faststart, root / "truncated_faststart.mp4")
    return files


@pytest.fixture(scope="session")
def reference(media):
    cache: dict[str, np.ndarray] = {}

    def get(kind: str) -> np.ndarray:
        if kind not in cache:
            cache[kind] = sequential_decode(media[kind])
        return cache[kind]

    return get


def test_list_backends():
    """Only backends that really load are listed: torchcodec imports without FFmpeg's shared libraries and
    fails at its first decoder, so it counts only where they loaded."""
    import torchcodec

    assert {"pyav", "decord"} <= set(AVAILABLE) <= set(BACKENDS)
    assert ("torchcodec" in AVAILABLE) == (torchcodec.ffmpeg_major_version is not None)
    # CI installs torchcodec (and FFmpeg's libraries) and requires it here: without them every torchcodec
    # case of the video tests would quietly drop out of the parametrisation.
    required = {b for b in os.environ.get("IRESVID_REQUIRE_BACKENDS", "").split(",") if b}
    assert required <= set(AVAILABLE), f"IRESVID_REQUIRE_BACKENDS={sorted(required)}, available: {AVAILABLE}"


@pytest.mark.parametrize("kind", MAIN)
def test_generated_files_have_the_traps(media, reference, kind):
    """The premise of the other tests: the reference is right and the B-frame files are reordered."""
    assert [frame_id(f) for f in reference(kind)] == list(range(N))
    with av.open(str(media[kind])) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    pts = [p.pts for p in packets]
    assert len(packets) == N
    assert (pts != sorted(pts)) == kind.endswith("bframes")  # stored out of display order
    if kind == "avi_bframes":
        assert min(pts) == 1  # AVI + B-frames starts at pts 1: index i is not pts i


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("kind", MAIN)
def test_metadata(media, backend, kind):
    with open_video(media[kind], backend) as reader:
        assert (reader.num_frames, len(reader), reader.height, reader.width) == (N, N, H, W)
        assert reader.fps == pytest.approx(FPS)
        assert reader.duration == pytest.approx(N / FPS)
        assert reader.path == media[kind]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("kind", MAIN)
def test_frame_exact(media, reference, backend, kind):
    expected = reference(kind)
    last = N - 1
    index_lists = [
        [0, 5, 40, 3, last],  # far forward then far backward jumps
        [last],
        [7, 7, 7],
        [12, 13, 14, 15, 16],  # across a keyframe (GOP 12)
        [last, 0, last],
        [30, 2, 30, 17, 11, 12],
        list(range(N)),
        list(range(last, -1, -1)),
    ]
    with open_video(media[kind], backend) as reader:  # one reader: every list starts where the last ended
        for indices in index_lists:
            got = reader.get_frames(indices)
            assert_frames(got, expected[indices], backend)
            assert [frame_id(f) for f in got.numpy()] == indices


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("kind", MAIN)
def test_random_clips(media, reference, backend, kind):
    expected, rng = reference(kind), random.Random(kind)
    with open_video(media[kind], backend) as reader:
        for _ in range(25):
            stride = rng.choice([1, 2, 4])
            start = rng.randrange(N - 7 * stride)
            indices = list(range(start, start + 8 * stride, stride))
            if rng.random() < 0.3:
                rng.shuffle(indices)
            assert_frames(reader.get_frames(indices), expected[indices], backend)


@pytest.mark.parametrize("num_threads", [0, 2])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_threaded_decoding_is_exact(media, reference, backend, num_threads):
    indices = [40, 3, 3, 25, 47, 0]
    with open_video(media["mp4_bframes"], backend, num_threads=num_threads) as reader:
        assert_frames(reader.get_frames(indices), reference("mp4_bframes")[indices], backend)


@pytest.mark.parametrize("kind", ["mp4", "mp4_bframes", "avi"])
def test_decord_backend_uses_decord_where_it_is_exact(media, kind):
    with open_video(media[kind], "decord") as reader:
        assert reader.backend == "decord"


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_index_types_and_empty_request(media, reference, backend):
    with open_video(media["mp4"], backend) as reader:
        expected = reference("mp4")[[4, 2, 4]]
        for indices in ([4, 2, 4], np.array([4, 2, 4]), torch.tensor([4, 2, 4]), (np.int64(4), 2, 4)):
            assert_frames(reader.get_frames(indices), expected, backend)
        assert reader.get_frames([]).shape == (0, H, W, 3)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("bad", [N, N + 100, -1, -N])
def test_out_of_range_index(media, backend, bad):
    with open_video(media["mp4"], backend) as reader, pytest.raises(IndexError) as info:
        reader.get_frames([0, bad])
    message = str(info.value)
    assert str(media["mp4"]) in message and str(bad) in message and f"num_frames={N}" in message


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_non_integer_index(media, backend):
    with open_video(media["mp4"], backend) as reader, pytest.raises(TypeError):
        reader.get_frames([1.5])


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("kind", ["zero", "truncated_mp4", "random", "audio_only"])
def test_undecodable_files(media, backend, kind):
    with pytest.raises(VideoDecodeError) as info:
        open_video(media[kind], backend)
    error = info.value
    assert error.path == media[kind] and error.reason and str(media[kind]) in str(error)
    clone = pickle.loads(pickle.dumps(error))  # crosses DataLoader worker boundaries intact
    assert (type(clone), clone.path, clone.reason) == (VideoDecodeError, error.path, error.reason)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_missing_file(tmp_path, backend):
    missing = tmp_path / "nope" / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        open_video(missing, backend)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("kind", ["truncated_avi", "truncated_faststart_mp4"])
def test_truncated_file_counts_only_complete_frames(media, reference, backend, kind):
    """The header still claims N frames; only the packets before the cut (minus the cut one) are real."""
    with av.open(str(media[kind])) as container:
        assert container.streams.video[0].frames == N
    original = reference(kind.replace("truncated_", "").replace("faststart_", "") + "_bframes")
    with open_video(media[kind], backend) as reader:
        assert 0 < reader.num_frames < N
        indices = [reader.num_frames - 1, 0, reader.num_frames // 2, reader.num_frames - 1]
        # Frames before the cut are complete, so they equal the untruncated file's.
        assert_frames(reader.get_frames(indices), original[indices], backend)
        with pytest.raises(IndexError):
            reader.get_frames([reader.num_frames])


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("kind", ["one_mp4", "one_avi"])
def test_one_frame_video(media, reference, backend, kind):
    with open_video(media[kind], backend) as reader:
        assert reader.num_frames == 1
        assert_frames(reader.get_frames([0, 0]), reference(kind)[[0, 0]], backend)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_audio_stream_is_ignored(media, reference, backend):
    expected = reference("with_audio")
    with av.open(str(media["with_audio"])) as container:
        assert len(container.streams.audio) == 1
    with open_video(media["with_audio"], backend) as reader:
        assert reader.num_frames == len(expected) == 30
        indices = [29, 0, 14, 15, 3, 29]
        assert_frames(reader.get_frames(indices), expected[indices], backend)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_variable_frame_rate(media, reference, backend):
    expected = reference("vfr")
    with open_video(media["vfr"], backend) as reader:
        assert reader.num_frames == 12
        assert reader.duration == pytest.approx(0.6, abs=0.05)  # 560 ms span + one 40 ms frame
        indices = [11, 0, 6, 5, 3, 11]
        got = reader.get_frames(indices)
        assert_frames(got, expected[indices], backend)
        assert [frame_id(f) for f in got.numpy()] == indices


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("degrees", [90, 180])
def test_rotation_metadata_is_applied(media, reference, backend, degrees):
    # The display matrix angle is counter-clockwise, like np.rot90 with positive k.
    expected = np.ascontiguousarray(np.rot90(reference(f"rot{degrees}"), degrees // 90, axes=(1, 2)))
    with open_video(media[f"rot{degrees}"], backend) as reader:
        assert (reader.height, reader.width) == expected.shape[1:3]
        indices = [9, 2, 2, 5]
        assert_frames(reader.get_frames(indices), expected[indices], backend)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_memory_stays_bounded(tmp_path, backend):
    """Many clips from one reader, and many short-lived readers, must not grow the process (decord caches)."""
    yy, xx = np.mgrid[0:96, 0:128]
    frames = np.stack(
        [
            np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx // 8 + yy // 8 + i) % 2 * 255], -1)
            for i in range(90)
        ]
    ).astype(np.uint8)
    path = write_video(tmp_path / "texture.mp4", frames, fps=FPS, bframes=2, gop_size=15)
    starts = np.random.default_rng(0).integers(0, 90 - 16, 180).tolist()
    clips = [list(range(start, start + 16, 2)) for start in starts]  # 8 frames, stride 2, anywhere
    process = psutil.Process()
    with open_video(path, backend) as reader:
        for indices in clips[:20]:  # warm-up: codec tables, allocator pools
            reader.get_frames(indices)
        gc.collect()
        before = process.memory_info().rss
        for indices in clips[20:]:
            reader.get_frames(indices)
    for indices in clips[:40]:
        with open_video(path, backend) as reader:
            reader.get_frames(indices)
    gc.collect()
    grown = (process.memory_info().rss - before) / 2**20
    assert grown < 50, f"RSS grew by {grown:.1f} MB"


def test_reader_lifecycle(media):
    reader = open_video(media["mp4"], "pyav")
    with reader:
        assert not reader.closed and "num_frames=48" in repr(reader)
    assert reader.closed
    reader.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        reader.get_frames([0])


def test_argument_errors(media):
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(media["mp4"], "opencv")
    with pytest.raises(ValueError, match="num_threads"):
        open_video(media["mp4"], "pyav", num_threads=-1)
    with pytest.raises(VideoDecodeError, match="not a regular file"):
        open_video(media["mp4"].parent, "pyav")


def test_torchcodec_missing_names_the_extra(media, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # an import of it raises ImportError
    with pytest.raises(ImportError, match=r"pip install iresvid\[torchcodec\]"):
        open_video(media["mp4"], "torchcodec")


def test_torchcodec_without_ffmpeg_is_not_listed_and_says_what_to_install(media, monkeypatch):
    """What a machine without FFmpeg's shared libraries sees (torchcodec then imports, with no version)."""
    import torchcodec

    monkeypatch.setattr(torchcodec, "ffmpeg_major_version", None)
    assert "torchcodec" not in list_backends() and {"decord", "pyav"} <= set(list_backends())
    with pytest.raises(ImportError, match=r"torchcodec.*libavdevice"):
        open_video(media["mp4"], "torchcodec")


def test_cached_open_skips_the_check_and_stays_exact(media, reference, monkeypatch):
    """A file already checked in this process opens with decord alone, with the same metadata and frames."""
    video_io.clear_open_cache()
    indices = [40, 3, 3, 25, 47, 0]
    with open_video(media["mp4_bframes"], "decord") as reader:
        first = (reader.backend, reader.num_frames, reader.fps, reader.height, reader.width)

    def no_pyav(*args, **kwargs):
        raise AssertionError("a cached decord open built the PyAV packet table")

    monkeypatch.setattr(video_io, "PyAVReader", no_pyav)
    with open_video(media["mp4_bframes"], "decord") as reader:
        assert (reader.backend, reader.num_frames, reader.fps, reader.height, reader.width) == first
        assert_frames(reader.get_frames(indices), reference("mp4_bframes")[indices], "decord")


# Files a backend cannot read exactly (its probe fails, it cannot read them, or it counts other frames):
# the reader is PyAV's from the first open on.
FALLBACKS = [
    ("decord", "avi_bframes"), ("decord", "rot90"), ("decord", "truncated_avi"),
    ("torchcodec", "truncated_avi"), ("torchcodec", "truncated_faststart_mp4"),
]  # fmt: skip
_BACKEND_OPEN = {"decord": "_decord_open", "torchcodec": "TorchCodecReader"}
_ORIGINAL = {"truncated_avi": "avi_bframes", "truncated_faststart_mp4": "mp4_bframes"}


@pytest.mark.parametrize("backend, kind", [f for f in FALLBACKS if f[0] in AVAILABLE])
def test_cached_fallback_to_pyav_skips_the_backend(media, reference, monkeypatch, backend, kind):
    video_io.clear_open_cache()
    with open_video(media[kind], backend) as reader:
        assert reader.backend == "pyav"
        first = (reader.num_frames, reader.height, reader.width)

    def not_again(*args, **kwargs):
        raise AssertionError(f"a file known to need PyAV was opened with {backend} again")

    monkeypatch.setattr(video_io, _BACKEND_OPEN[backend], not_again)
    with open_video(media[kind], backend) as reader:
        assert (reader.backend, reader.num_frames, reader.height, reader.width) == ("pyav", *first)
        indices = [reader.num_frames - 1, 0, reader.num_frames // 2]
        expected = reference(_ORIGINAL.get(kind, kind))
        if kind == "rot90":
            expected = np.rot90(expected, 1, axes=(1, 2))
        assert_frames(reader.get_frames(indices), np.ascontiguousarray(expected[indices]), "pyav")


@pytest.mark.skipif("torchcodec" not in AVAILABLE, reason="torchcodec does not load here")
def test_torchcodec_timestamps_that_disagree_are_reread_exactly(media, reference, monkeypatch, caplog):
    """torchcodec 0.17 returns neighbouring frames of a B-frame AVI; its pts_seconds give it away: the batch
    is read again by the exact PyAV reader (counted, logged once), and so is the file from then on."""
    video_io.clear_open_cache()
    indices = [47, 0, 13, 12, 30]
    log = caplog.at_level(logging.WARNING, "iresvid.data.video_io")
    with log, open_video(media["avi_bframes"], "torchcodec") as reader:
        assert reader.backend == "torchcodec"
        assert_frames(reader.get_frames(indices), reference("avi_bframes")[indices], "pyav")
        assert_frames(reader.get_frames([5, 6]), reference("avi_bframes")[[5, 6]], "pyav")
        assert reader.rereads == 1
    [warning] = [r.getMessage() for r in caplog.records if str(media["avi_bframes"]) in r.getMessage()]
    assert "torchcodec gave" in warning
    monkeypatch.setattr(video_io, "TorchCodecReader", lambda *a: pytest.fail("torchcodec opened again"))
    with open_video(media["avi_bframes"], "torchcodec") as reader:
        assert reader.backend == "pyav"


def test_open_cache_is_a_bounded_lru(media, monkeypatch):
    cache = video_io._LRU(2)
    monkeypatch.setattr(video_io, "_verdicts", cache)
    for kind in ("mp4", "avi", "mp4_bframes"):
        open_video(media[kind], "decord").close()
    assert len(cache) == 2
    assert {key[:2] for key in cache._entries} == {
        ("decord", str(media["avi"])),
        ("decord", str(media["mp4_bframes"])),
    }
    open_video(media["avi"], "decord").close()  # a hit makes it the most recently used...
    open_video(media["mp4"], "decord").close()  # ...so this evicts mp4_bframes
    assert [key[1] for key in cache._entries] == [str(media["avi"]), str(media["mp4"])]


def test_rewritten_file_is_checked_again(tmp_path, media, reference):
    """The cache key has the file's size and mtime: new content at the same path is not read as the old."""
    path = tmp_path / "video.mp4"
    path.write_bytes(media["mp4_bframes"].read_bytes())
    with open_video(path, "decord") as reader:
        assert reader.backend == "decord"
    path.write_bytes(media["avi_bframes"].read_bytes())  # decord's index is wrong for this one
    with open_video(path, "decord") as reader:
        assert reader.backend == "pyav"
        indices = [47, 0, 13, 12]
        assert_frames(reader.get_frames(indices), reference("avi_bframes")[indices], "pyav")


def test_decord_frames_whatever_the_callers_bridge(media, reference):
    """Importing pytorchvideo switches decord to its torch bridge; our reader must not depend on that."""
    import decord

    indices = [5, 30, 5]
    with open_video(media["mp4"], "decord") as reader, decord.bridge.use_torch():
        assert reader.backend == "decord"
        assert_frames(reader.get_frames(indices), reference("mp4")[indices], "decord")


class _FailingBatches:
    """A decord reader whose ``get_batch`` fails as decord 3.4's does on some frame widths (32, 48, 96 px):
    "The size must exactly match" (seen on this project's CI for a 32×32 file, but not at every run, so
    the failure is made here rather than waited for)."""

    def __init__(self, vr):
        self._vr = vr

    def __len__(self):
        return len(self._vr)

    def __getattr__(self, name):
        return getattr(self._vr, name)

    def get_batch(self, indices):
        import decord

        raise decord.DECORDError("Check failed: ... The size must exactly match")


@pytest.mark.parametrize("when", ["probe", "read"])
def test_decord_decode_failure_falls_back_to_pyav(tmp_path, monkeypatch, when):
    """decord failing to decode, at the open's probe or at a later read, gives PyAV's exact frames, and the
    file's later opens in this process go straight to PyAV."""
    video_io.clear_open_cache()
    path = write_video(tmp_path / "small.mp4", pattern(12, H, W), fps=FPS)
    expected = sequential_decode(path)
    indices = [11, 0, 5, 5]
    real_open = video_io._decord_open
    if when == "probe":
        monkeypatch.setattr(video_io, "_decord_open", lambda *a: _FailingBatches(real_open(*a)))
    with open_video(path, "decord") as reader:
        if when == "read":
            assert reader.backend == "decord"
            reader._vr = _FailingBatches(reader._vr)
        else:
            assert reader.backend == "pyav"
        assert_frames(reader.get_frames(indices), expected[indices], "pyav")
    monkeypatch.setattr(video_io, "_decord_open", real_open)
    with open_video(path, "decord") as reader:  # remembered: the next open goes straight to PyAV
        assert reader.backend == "pyav"
        assert_frames(reader.get_frames(indices), expected[indices], "pyav")


def test_the_public_data_api_is_what_the_readme_shows(media):
    """`iresvid.data` exports the readers, datasets, samplers and transforms (lazily, each the real one)."""
    import iresvid.data as data
    from iresvid.config.schema import DataConfig
    from iresvid.data import datasets, sampling, transforms

    with data.open_video(media["mp4"]) as reader:
        assert reader.get_frames([0]).shape == (1, H, W, 3)
    assert data.list_backends() == AVAILABLE and data.VideoDecodeError is VideoDecodeError
    assert (data.ClipDataset, data.uniform_clips, data.GpuAugment) == (
        datasets.ClipDataset,
        sampling.uniform_clips,
        transforms.GpuAugment,
    )
    assert all(getattr(data, name) is not None for name in data.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        data.nope  # noqa: B018
    # The config's backend choices are the table's keys: adding a backend touches one place.
    assert DataConfig.__dataclass_fields__["backend"].metadata["choices"] == tuple(BACKENDS)


def test_the_readme_data_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    [snippet] = [b for b in blocks if b.startswith("from iresvid.data import")]
    write_video(tmp_path / "video.mp4", pattern(N), fps=FPS, bframes=2)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(AVAILABLE)
    assert printed[1] == "pyav 25.0 torch.Size([24, 128, 171, 3]) 0"  # 48x64 frames, short side 128
