"""Fault corpus for the video pipeline: every broken, odd or hostile file decodes exactly or is skipped and
reported, on every installed backend, with no crash, hang or stray exception type.

The corpus is generated here with `write_video` and PyAV, so each case is a genuinely encoded file.  Backends
are `list_backends()`: decord and PyAV here, torchcodec too wherever it is installed.  Every frame of a video
carries its label as the level of its blue channel (which survives rotation and resizing), so a batch can be
checked to carry the label of the clip actually decoded.

No fault may take the process down, so decoders only run in child processes: `open_video` sweeps the corpus in
one subprocess per backend (a segfault is an exit status, a hang a timeout, and the file being decoded is
named either way), and the dataset checks go through `build_loader` with 2 workers, where a crashing decoder
surfaces as a dead worker and a hang as the loader's timeout.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media import backend_params, remux_faststart, write_audio_only, write_timed

from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.datasets import ClipDataset
from iresvid.data.encode import write_video
from iresvid.data.loader import build_loader
from iresvid.data.transforms import resize_short_side
from iresvid.data.video_io import VideoDecodeError, list_backends, open_video

AVAILABLE = list_backends()
BACKEND_PARAMS = backend_params()
N, H, W, FPS = 36, 48, 64, 25
GOP = 12
CUT_FRAME = 17  # truncated files end inside the packet of this display frame, in the second GOP
BLUE0, BLUE_STEP = 20, 10  # blue level of a video with label k: BLUE0 + BLUE_STEP * k
HUGE = (3, 2160, 3840)
HUGE_RSS_LIMIT_MB = 512  # decoding 3 frames of 4K, then resizing: measured 191 MB (PyAV), 240 MB (decord)
# Largest allowed |difference| to the sequential PyAV decode: decord and PyAV share libavcodec and libswscale
# (bit-identical); torchcodec links the system FFmpeg, whose RGB conversion may round differently.
TOLERANCE = {"pyav": 0, "decord": 0}
SWEEP_TIMEOUT_S = 180
LOADER_TIMEOUT_S = 120
NOBODY = 65534


@dataclass(frozen=True)
class Expect:
    """What every backend must do with one file: decode it exactly (``error`` None) or raise ``error``, whose
    message names the file and contains ``reason``.  A truncated file decodes the frames before the cut."""

    error: type[Exception] | None = None
    reason: str = ""
    truncated: bool = False
    quarter_turns: int = 0  # display rotation, counter-clockwise


EXPECT = {
    "zero_byte": Expect(VideoDecodeError, "empty file"),
    "truncated_mp4": Expect(VideoDecodeError, "cannot open container"),  # the index (moov) was at the end
    "truncated_mp4_bframes": Expect(VideoDecodeError, "cannot open container"),
    "truncated_faststart_mp4": Expect(truncated=True),
    "truncated_faststart_mp4_bframes": Expect(truncated=True),
    "truncated_avi": Expect(truncated=True),
    "truncated_avi_bframes": Expect(truncated=True),
    "mp4_named_avi": Expect(),
    "avi_named_mp4": Expect(),
    "mp4_named_txt": Expect(),
    "audio_only_mp4": Expect(VideoDecodeError, "no video stream"),
    "audio_only_m4a": Expect(VideoDecodeError, "no video stream"),
    "one_frame": Expect(),
    "huge_4k": Expect(),
    "variable_frame_rate": Expect(),
    "rotated_90": Expect(quarter_turns=1),
    "rotated_180": Expect(quarter_turns=2),
    "rotated_270": Expect(quarter_turns=3),
    "avi_bframes": Expect(),
    "symlink_loop": Expect(VideoDecodeError, "cannot resolve the path"),
    "dangling_symlink": Expect(FileNotFoundError, "dangling symbolic link"),
    "spaces_and_unicode_path": Expect(),
}
LABELS = {name: label for label, name in enumerate(EXPECT)}
BAD = [name for name, expect in EXPECT.items() if expect.error is not None]


@dataclass(frozen=True)
class Fault:
    path: Path
    label: int
    expect: Expect
    source: Path  # the file whose sequential decode is the reference (the untruncated original)


# ----------------------------------------------------------------------------------------------- writing


def labeled_frames(label: int, n: int = N, height: int = H, width: int = W) -> np.ndarray:
    """Blue is the label; red ramps with the frame index; green is a fixed texture with a moving square.

    The texture makes intra frames cost more than predicted ones, so x264 keeps its GOPs instead of placing a
    keyframe every other frame on flat content.
    """
    frames = np.zeros((n, height, width, 3), np.uint8)
    frames[..., 0] = (16 + 6 * np.arange(n))[:, None, None]
    frames[..., 1] = np.random.default_rng(0).integers(0, 96, (height, width))
    frames[..., 2] = BLUE0 + BLUE_STEP * label
    for i in range(n):
        x = 2 * i % (width - 8)
        frames[i, 8:16, x : x + 8, 1] = 255
    return frames


def packet_table(path: Path) -> list[tuple[int, int, int, bool]]:
    """(pts, byte position, size, keyframe) of the video packets, in display order."""
    with av.open(str(path)) as container:
        packets = [
            (p.pts, p.pos, p.size, p.is_keyframe)
            for p in container.demux(container.streams.video[0])
            if p.size
        ]
    return sorted(packets)


def cut_inside_gop(src: Path, dst: Path) -> Path:
    """``src`` up to the middle of display frame CUT_FRAME's packet: a cut inside a GOP and inside a frame."""
    pts, pos, size, keyframe = packet_table(src)[CUT_FRAME]
    assert not keyframe and pos > 0
    dst.write_bytes(src.read_bytes()[: pos + size // 2])
    return dst


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Fault]:
    root = tmp_path_factory.mktemp("corpus")
    sources = root / "sources"
    sources.mkdir()
    paths: dict[str, Path] = {}
    origin: dict[str, Path] = {}

    def frames(name: str, **size) -> np.ndarray:
        return labeled_frames(LABELS[name], **size)

    (root / "zero.mp4").touch()
    paths["zero_byte"] = root / "zero.mp4"
    for ext in ("mp4", "avi"):
        for suffix, bframes in (("", 0), ("_bframes", 2)):
            name = f"truncated_{ext}{suffix}"
            whole = write_video(
                sources / f"{name}.{ext}", frames(name), fps=FPS, bframes=bframes, gop_size=GOP
            )
            if ext == "mp4":
                faststart_name = f"truncated_faststart_mp4{suffix}"
                origin[faststart_name] = write_video(
                    sources / f"{faststart_name}.mp4", frames(faststart_name), bframes=bframes, gop_size=GOP
                )
                remuxed = remux_faststart(origin[faststart_name], sources / f"{faststart_name}_faststart.mp4")
                paths[faststart_name] = cut_inside_gop(remuxed, root / f"{faststart_name}.mp4")
            paths[name], origin[name] = cut_inside_gop(whole, root / f"{name}.{ext}"), whole
    # Containers are probed, never guessed from the extension.
    paths["mp4_named_avi"] = write_video(root / "h264.mp4", frames("mp4_named_avi"), bframes=2).rename(
        root / "h264.avi"
    )
    paths["avi_named_mp4"] = write_video(root / "mpeg4.avi", frames("avi_named_mp4"), bframes=2).rename(
        root / "mpeg4.mp4"
    )
    paths["mp4_named_txt"] = write_video(root / "video.mp4", frames("mp4_named_txt")).rename(
        root / "video.txt"
    )
    paths["audio_only_mp4"] = write_audio_only(root / "audio_only.mp4")
    paths["audio_only_m4a"] = write_audio_only(root / "audio_only.m4a")
    paths["one_frame"] = write_video(root / "one_frame.mp4", frames("one_frame", n=1))
    huge_n, huge_h, huge_w = HUGE
    paths["huge_4k"] = write_video(
        root / "huge.mp4", frames("huge_4k", n=huge_n, height=huge_h, width=huge_w)
    )
    paths["variable_frame_rate"] = write_timed(
        root / "vfr.mp4",
        frames("variable_frame_rate", n=10),
        pts_ms=[0, 33, 40, 120, 125, 300, 301, 400, 433, 500],
    )
    for degrees in (90, 180, 270):
        name = f"rotated_{degrees}"
        paths[name] = write_timed(root / f"{name}.mp4", frames(name, n=10), rotation=degrees)
    paths["avi_bframes"] = write_video(root / "bframes.avi", frames("avi_bframes"), bframes=2, gop_size=GOP)
    (root / "loop_a.mp4").symlink_to("loop_b.mp4")
    (root / "loop_b.mp4").symlink_to("loop_a.mp4")
    paths["symlink_loop"] = root / "loop_a.mp4"
    (root / "dangling.mp4").symlink_to("deleted.mp4")
    paths["dangling_symlink"] = root / "dangling.mp4"
    paths["spaces_and_unicode_path"] = write_video(
        root / "vidéo été" / "clip 1 – ü.mp4", frames("spaces_and_unicode_path"), bframes=2
    )
    assert paths.keys() == EXPECT.keys()
    return {
        name: Fault(path, LABELS[name], EXPECT[name], origin.get(name, path)) for name, path in paths.items()
    }


@pytest.fixture(scope="module")
def reference(corpus) -> Callable[[str], np.ndarray]:
    """The frames a reader must return: a sequential PyAV decode of the source, in display orientation."""
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            fault = corpus[name]
            with av.open(str(fault.source)) as container:
                decoded = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
            cache[name] = np.ascontiguousarray(
                np.rot90(np.stack(decoded), fault.expect.quarter_turns, (1, 2))
            )
        return cache[name]

    return get


def test_the_corpus_has_its_traps(corpus):
    """The premises, so no test below passes on a file that lost its fault."""
    for name in (name for name in EXPECT if name.startswith("truncated")):
        table = packet_table(corpus[name].source)
        keyframes = [i for i, (_, _, _, keyframe) in enumerate(table) if keyframe]
        assert len(table) == N and max(k for k in keyframes if k <= CUT_FRAME) == GOP < CUT_FRAME  # mid-GOP
        assert corpus[name].path.stat().st_size < corpus[name].source.stat().st_size
    with av.open(str(corpus["truncated_faststart_mp4_bframes"].source)) as container:
        stored = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    assert stored != sorted(stored)  # B-frames: stored out of display order
    assert packet_table(corpus["avi_bframes"].path)[0][0] == 1  # B-frame AVI starts at pts 1
    for name, container_format in (
        ("mp4_named_avi", "mov"),
        ("avi_named_mp4", "avi"),
        ("mp4_named_txt", "mov"),
    ):
        with av.open(str(corpus[name].path)) as container:
            assert container_format in container.format.name
    for name in ("audio_only_mp4", "audio_only_m4a"):
        with av.open(str(corpus[name].path)) as container:
            assert not container.streams.video and container.streams.audio
    pts = [p[0] for p in packet_table(corpus["variable_frame_rate"].path)]
    assert len(set(np.diff(pts))) > 3  # irregular frame durations
    for degrees in (90, 180, 270):
        with av.open(str(corpus[f"rotated_{degrees}"].path)) as container:
            rotation = next(container.decode(video=0)).rotation
        assert rotation % 360 == degrees
    with av.open(str(corpus["huge_4k"].path)) as container:
        stream = container.streams.video[0]
        assert (stream.frames, stream.height, stream.width) == HUGE
    assert corpus["symlink_loop"].path.is_symlink() and corpus["dangling_symlink"].path.is_symlink()


def clip_label(clip: torch.Tensor) -> int:
    """The label a (C, T, H, W) clip's frames carry in their blue level."""
    return round((float(clip[2].float().median()) - BLUE0) / BLUE_STEP)


# --------------------------------------------------------------------------------- open_video, every backend


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _outcome(call: Callable[[], dict]) -> dict:
    """``call()``'s result, or the exception it raised as data the parent can judge (type, bases, message)."""
    try:
        return {"outcome": "frames", **call()}
    except Exception as e:  # noqa: BLE001 — any type is reported; the parent decides which are allowed
        mro = [f"{cls.__module__}.{cls.__qualname__}" for cls in type(e).__mro__]
        return {"outcome": "error", "type": type(e).__name__, "mro": mro, "message": str(e)}


def _decode_all(path: Path, backend: str, out: Path) -> dict:
    """Every frame, asked for in a shuffled order (seeks both ways), saved in display order."""
    before = _peak_rss_mb()
    with open_video(path, backend) as reader:
        order = np.random.default_rng(0).permutation(reader.num_frames).tolist()
        got = reader.get_frames(order)
        frames = torch.empty_like(got)
        frames[order] = got
        resized = resize_short_side(frames, 32)
        np.save(out, frames.numpy())
        return {
            "reader": reader.backend,
            "num_frames": reader.num_frames,
            "resized": list(resized.shape),
            "rss_growth_mb": _peak_rss_mb() - before,
        }


def _sweep_child(backend: str, out: Path) -> None:
    """Child process: decode every file named on stdin ({name: path}), one JSON line per event on stdout."""
    for name, path in json.load(sys.stdin).items():
        print(json.dumps({"event": "start", "name": name}), flush=True)
        result = _outcome(lambda path=path, name=name: _decode_all(Path(path), backend, out / f"{name}.npy"))
        print(json.dumps({"event": "done", "name": name, **result}), flush=True)


def _events(stdout: str | bytes | None) -> Iterator[dict]:
    text = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout or ""
    yield from (json.loads(line) for line in text.splitlines() if line.startswith("{"))


def _last_started(stdout: str | bytes | None) -> str:
    started = [e["name"] for e in _events(stdout) if e["event"] == "start"]
    return started[-1] if started else "(none: the process died before the first file)"


def _run_child(args: list[str], stdin: str, timeout: float, what: str, script: str = __file__) -> list[dict]:
    """Run ``script`` (this file) as a child with ``args``; a crash or a hang fails the test, naming the file
    at fault (the last ``{"event": "start", "name": ...}`` line the child printed)."""
    try:
        proc = subprocess.run(
            [sys.executable, script, *args], input=stdin, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"{what} hung: no result within {timeout} s; last file started: {_last_started(e.stdout)}"
        )
    if proc.returncode != 0:
        status = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else proc.returncode
        pytest.fail(
            f"{what} died ({status}) while decoding {_last_started(proc.stdout)}:\n{proc.stderr[-3000:]}"
        )
    return list(_events(proc.stdout))


@pytest.fixture(scope="module")
def sweep(corpus, tmp_path_factory) -> Callable[[str], tuple[dict[str, dict], Path]]:
    """``sweep(backend)``: each file's outcome in a child process, and the folder of the decoded frames."""
    cache: dict[str, tuple[dict[str, dict], Path]] = {}

    def get(backend: str) -> tuple[dict[str, dict], Path]:
        if backend not in cache:
            out = tmp_path_factory.mktemp(f"frames_{backend}")
            listing = json.dumps({name: str(fault.path) for name, fault in corpus.items()})
            events = _run_child(
                ["sweep", backend, str(out)], listing, SWEEP_TIMEOUT_S, f"the {backend} sweep"
            )
            cache[backend] = {e["name"]: e for e in events if e["event"] == "done"}, out
        return cache[backend]

    return get


def assert_error(result: dict, error: type[Exception], path: Path, reason: str) -> None:
    assert result["outcome"] == "error", f"expected {error.__name__}, but it decoded: {result}"
    assert f"{error.__module__}.{error.__qualname__}" in result["mro"], (
        f"raised {result['type']} ({result['message']}), not a {error.__name__}"
    )
    assert str(path) in result["message"] and reason in result["message"], result["message"]


@pytest.mark.parametrize("name", list(EXPECT))
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_open_video_decodes_exactly_or_fails_cleanly(corpus, sweep, reference, backend, name):
    fault = corpus[name]
    results, frames_dir = sweep(backend)
    result = results[name]
    if fault.expect.error is not None:
        assert_error(result, fault.expect.error, fault.path, fault.expect.reason)
        return
    assert result["outcome"] == "frames", f"{backend} failed on {name}: {result['type']}: {result['message']}"
    got, expected = np.load(frames_dir / f"{name}.npy"), reference(name)
    if fault.expect.truncated:
        # Only frames after the cut are lost: every complete GOP before it is kept.
        assert GOP <= result["num_frames"] <= CUT_FRAME, result
        expected = expected[: result["num_frames"]]
    assert got.shape == expected.shape
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16)).max(initial=0)
    assert diff <= TOLERANCE.get(backend, 2), f"max abs difference {diff} to the sequential PyAV decode"


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_huge_frames_decode_and_resize_within_memory(sweep, backend):
    result = sweep(backend)[0]["huge_4k"]
    assert result["outcome"] == "frames" and result["num_frames"] == HUGE[0]
    assert result["resized"] == [HUGE[0], 32, round(32 * HUGE[2] / HUGE[1]), 3]
    assert result["rss_growth_mb"] < HUGE_RSS_LIMIT_MB, f"peak RSS grew by {result['rss_growth_mb']:.0f} MB"


# ------------------------------------------------------------------------------------ datasets and loaders


def corpus_annotations(corpus: dict[str, Fault]) -> Annotations:
    records = [VideoRecord(fault.path, fault.label, name) for name, fault in corpus.items()]
    return Annotations(records, list(corpus), [], "fault corpus", "one class per file")


def loader_batches(dataset: ClipDataset, *, shuffle: bool) -> Iterator[dict]:
    loader = build_loader(dataset, batch_size=4, shuffle=shuffle, num_workers=2)
    loader.timeout = LOADER_TIMEOUT_S  # a hung decoder fails the test instead of stalling it
    yield from loader


def assert_reported(failures: list[tuple[str, str]], corpus: dict[str, Fault]) -> None:
    """Each failure names a bad file and its error: the exception type, the file's path and the reason."""
    by_path = {str(corpus[name].path): corpus[name].expect for name in BAD}
    for path, reason in failures:
        expect = by_path[path]
        assert reason.startswith(f"{expect.error.__name__}: ") and expect.reason in reason, (path, reason)
        assert path in reason, (path, reason)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_training_skips_and_reports_bad_files_and_batches_carry_the_decoded_label(corpus, backend):
    annotations = corpus_annotations(corpus)
    records = annotations.records
    dataset = ClipDataset(
        annotations,
        mode="train",
        num_frames=4,
        frame_stride=2,
        short_side=32,
        backend=backend,
        max_retries=30,
    )
    bad_paths = {str(corpus[name].path) for name in BAD}
    decoded, failures = [], []
    for batch in loader_batches(dataset, shuffle=True):
        failures += batch["failures"]
        for i, (index, label) in enumerate(
            zip(batch["index"].tolist(), batch["label"].tolist(), strict=True)
        ):
            height, width = batch["size"][i].tolist()
            assert str(records[index].path) not in bad_paths
            assert label == records[index].label == clip_label(batch["input"][i, ..., :height, :width])
            assert min(height, width) == 32 and batch["valid"][i]
            decoded.append(index)
    assert len(decoded) == len(records)  # one sample per item: nothing dropped
    assert {path for path, _ in failures} == bad_paths  # every bad file was met, and reported
    assert_reported(failures, corpus)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_evaluation_marks_bad_files_invalid_and_never_replaces_them(corpus, backend):
    annotations = corpus_annotations(corpus)
    records = annotations.records
    dataset = ClipDataset(
        annotations, mode="eval", num_frames=4, frame_stride=2, num_clips=2, short_side=32, backend=backend
    )
    bad_paths = {str(corpus[name].path) for name in BAD}
    videos, failures = [], []
    for batch in loader_batches(dataset, shuffle=False):
        failures += batch["failures"]
        for i, video in enumerate(batch["video_index"].tolist()):
            height, width = batch["size"][i].tolist()
            bad = str(records[video].path) in bad_paths
            assert bool(batch["valid"][i]) is not bad and batch["label"][i] == records[video].label
            if not bad:
                assert clip_label(batch["input"][i, ..., :height, :width]) == records[video].label
            videos.append(video)
    assert videos == [v for v in range(len(records)) for _ in range(2)]  # every clip of every video, once
    assert sorted(path for path, _ in failures) == sorted(2 * list(bad_paths))  # each of its clips reported
    assert_reported(failures, corpus)


# ------------------------------------------------------------------------------------ unreadable permissions


def _drop_privileges() -> str:
    """Become uid/gid 65534 (nobody) if running as root; '' on success, else why not."""
    if os.geteuid() != 0:
        return ""
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    except OSError as e:
        return f"cannot drop root privileges to uid {NOBODY}: {e}"
    return ""


PERMISSION_FILES = ("readable.mp4", "locked.mp4", "locked folder/hidden.mp4")


def _permissions_child(folder: Path) -> None:
    """Child process: read the files of ``folder`` without the right to, on every backend and in datasets.

    Privileges are dropped here rather than before exec, because the interpreter and its standard library may
    live where uid 65534 cannot reach them (under /root).  So the whole workload runs once before the drop,
    which imports every module it loads lazily; as root that also records the locked file as readable in
    decord's per-process check cache, so the cached open path has to notice the permission too.
    """
    paths = [folder / name for name in PERMISSION_FILES]
    _permission_workload(paths)  # warm-up, results discarded
    problem = _drop_privileges()
    for path, should_read in zip(paths, (True, False, False), strict=True):
        try:
            path.open("rb").close()
            readable_now = True
        except PermissionError:
            readable_now = False
        if readable_now != should_read and not problem:
            problem = f"uid {os.geteuid()} {'can' if readable_now else 'cannot'} read {path}"
    if problem:
        print(json.dumps({"event": "environment", "problem": problem}), flush=True)
        return
    for event in _permission_workload(paths):
        print(json.dumps(event), flush=True)


def _permission_workload(paths: list[Path]) -> list[dict]:
    """Open each file on every backend, and sample them through training and evaluation datasets."""
    events = []
    records = [VideoRecord(path, label, path.stem) for label, path in enumerate(paths)]
    annotations = Annotations(records, [path.stem for path in paths], [], "permissions", "test")
    for backend in AVAILABLE:
        for path in paths:
            result = _outcome(lambda path=path, backend=backend: _frame_count(path, backend))
            events.append({"event": "open", "backend": backend, "path": str(path), **result})
        options = dict(num_frames=4, frame_stride=2, short_side=32, backend=backend)
        train = ClipDataset(annotations, mode="train", **options)
        evaluation = ClipDataset(annotations, mode="eval", **options)
        samples = [train[(i, 0)] for i in range(len(paths))] + [evaluation[i] for i in range(len(paths))]
        keys = ("index", "label", "valid", "failures")
        summary = [{key: sample[key] for key in keys} for sample in samples]
        events.append({"event": "datasets", "backend": backend, "samples": summary})
    return events


def _frame_count(path: Path, backend: str) -> dict:
    with open_video(path, backend) as reader:
        return {"num_frames": len(reader.get_frames(range(reader.num_frames)))}


@pytest.fixture
def world_searchable_dir() -> Iterator[Path]:
    """A folder uid 65534 can reach: pytest's own temporary folders are private to their owner."""
    folder = Path(tempfile.mkdtemp(prefix="iresvid-permissions-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for name in PERMISSION_FILES[1:]:  # the locked file and folder, or rmtree cannot remove them
            locked = folder / Path(name).parts[0]
            if locked.exists():
                locked.chmod(0o755)
        shutil.rmtree(folder)


def test_unreadable_files_fail_with_permission_error_and_are_skipped(world_searchable_dir):
    """chmod 000 does not stop root, so the reads happen in a child that drops to uid 65534 (nobody)."""
    readable, locked, hidden = paths = [world_searchable_dir / name for name in PERMISSION_FILES]
    for path in paths:
        write_video(path, labeled_frames(0)).chmod(0o644)
    locked.chmod(0)
    hidden.parent.chmod(0)
    events = _run_child(["permissions", str(readable.parent)], "", SWEEP_TIMEOUT_S, "the permissions check")
    problems = [e["problem"] for e in events if e["event"] == "environment"]
    if problems:
        pytest.fail(f"this environment cannot test unreadable files for real: {problems[0]}")
    opened = {(e["backend"], e["path"]): e for e in events if e["event"] == "open"}
    datasets = {e["backend"]: e["samples"] for e in events if e["event"] == "datasets"}
    assert set(datasets) == set(AVAILABLE)
    for backend in AVAILABLE:
        assert opened[backend, str(readable)]["outcome"] == "frames"
        assert opened[backend, str(readable)]["num_frames"] == N
        assert_error(opened[backend, str(locked)], PermissionError, locked, "not readable")
        assert_error(opened[backend, str(hidden)], PermissionError, hidden, "cannot be searched")
        train, evaluation = datasets[backend][:3], datasets[backend][3:]
        assert train[0] == evaluation[0] == {"index": 0, "label": 0, "valid": True, "failures": []}
        for item, path in ((1, locked), (2, hidden)):
            # Training: replaced by the only readable video, with its label; each unreadable one met reported.
            assert (train[item]["index"], train[item]["label"], train[item]["valid"]) == (0, 0, True)
            assert train[item]["failures"][0][0] == str(path)
            for failed, reason in train[item]["failures"]:
                assert failed in {str(locked), str(hidden)} and failed in reason
                assert reason.startswith("PermissionError: ")
            # Evaluation: kept in place, marked invalid, reported.
            assert (evaluation[item]["index"], evaluation[item]["label"], evaluation[item]["valid"]) == (
                item,
                item,
                False,
            )
            [(failed, reason)] = evaluation[item]["failures"]
            assert failed == str(path) and reason.startswith("PermissionError: ")


if __name__ == "__main__":  # the child processes above
    if sys.argv[1] == "sweep":
        _sweep_child(sys.argv[2], Path(sys.argv[3]))
    elif sys.argv[1] == "permissions":
        _permissions_child(Path(sys.argv[2]))
