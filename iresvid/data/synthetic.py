"""A synthetic motion dataset in the real UCF101 and Kinetics formats, so everything runs with no download.

Every class is defined by motion alone.  Classes come in time-reversal pairs (move right / move left, move
down / move up, rotate clockwise / counterclockwise, expand / shrink): a clip of the second class is drawn
exactly like one of the first and then played backwards.  Both members of a pair therefore show the same
distribution of frame SETS, so any order-invariant model (per-frame predictions averaged over time, a 2D
network) is at chance within each pair, while a model that sees temporal order (a 3D network) separates
them.  Textures, colours and noise never depend on the class, sizes only on the pair (a rotating bar is
longer), so nothing but frame order separates the two classes of a pair.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from iresvid.data.encode import write_video
from iresvid.files import WriteError, atomic_write, folder_in, output_dir

log = logging.getLogger(__name__)

# class name -> (motion, played backwards).  The second member of each pair is the first reversed in time.
# Rotation angles grow in image coordinates (x right, y down), which is clockwise on screen.
CLASS_MOTIONS: dict[str, tuple[str, bool]] = {
    "move right": ("horizontal", False),
    "move left": ("horizontal", True),
    "move down": ("vertical", False),
    "move up": ("vertical", True),
    "rotate clockwise": ("rotate", False),
    "rotate counterclockwise": ("rotate", True),
    "expand": ("scale", False),
    "shrink": ("scale", True),
}
DEMO_CLASSES = tuple(CLASS_MOTIONS)
LAYOUTS = ("ucf101", "kinetics")
_YOUTUBE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PATCH = 32  # resolution of the object's texture, resampled to its on-screen size every frame


@dataclass
class DemoData:
    """What `make_demo_data` wrote; ``classes`` are named as in the dataset and sorted (= class index)."""

    root: Path
    layout: str
    classes: list[str]
    video_root: Path
    counts: dict[str, int]
    annotation_files: dict[str, Path]
    seconds: float

    def summary(self) -> str:
        counts = ", ".join(f"{split} {n}" for split, n in self.counts.items())
        return (
            f"{self.layout} demo data in {self.root}: {len(self.classes)} classes, {counts} videos "
            f"({self.seconds:.1f} s)"
        )


def render_clip(
    class_name: str, rng: np.random.Generator, num_frames: int, size: tuple[int, int]
) -> np.ndarray:
    """One clip of ``class_name`` as uint8 (T, H, W, 3): a textured bar moving over a textured background.

    The random draws depend only on the motion, never on its direction, so for the same generator state the
    two classes of a pair give exactly the same frames in opposite orders.
    """
    if class_name not in CLASS_MOTIONS:
        raise ValueError(f"unknown demo class {class_name!r}; choose from {list(DEMO_CLASSES)}")
    if num_frames < 2:
        raise ValueError(f"render_clip needs at least 2 frames, got {num_frames}")
    motion, backwards = CLASS_MOTIONS[class_name]
    height, width = size
    short = min(height, width)

    # The background's blobs are larger and lower in contrast than the object's, so the object stands out.
    background = _texture(rng, height, width, cells=rng.uniform(3.0, 6.0), contrast=rng.uniform(60, 120))
    patch = _texture(rng, _PATCH, _PATCH, cells=rng.uniform(2.5, 4.0), contrast=rng.uniform(160, 240))
    noise_sigma = rng.uniform(2.0, 5.0)
    angle0 = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(1.8, 2.6)  # an elongated bar: its ends sweep far when it rotates
    t = np.linspace(0.0, 1.0, num_frames)

    # Sizes are the bar's length as a fraction of the shorter frame side.  Paths are linear in t and keep the
    # bar inside the frame: `reach`, its half-diagonal, bounds its extent from the centre at any angle.
    reach = math.hypot(1, 1 / aspect) / 2
    if motion in ("horizontal", "vertical"):
        length = np.full(num_frames, rng.uniform(0.3, 0.4) * short)
        margin = reach * length[0]
        along, across = (width, height) if motion == "horizontal" else (height, width)
        travel = rng.uniform(0.4, 0.5) * along
        mid = rng.uniform(margin + travel / 2, along - margin - travel / 2)
        path = mid - travel / 2 + travel * t
        fixed = np.full(num_frames, rng.uniform(margin, across - margin))
        cx, cy = (path, fixed) if motion == "horizontal" else (fixed, path)
        angle = np.full(num_frames, angle0)
    elif motion == "rotate":
        length = np.full(num_frames, rng.uniform(0.6, 0.75) * short)
        margin = reach * length[0]
        cx = np.full(num_frames, rng.uniform(margin, width - margin))
        cy = np.full(num_frames, rng.uniform(margin, height - margin))
        angle = angle0 + rng.uniform(np.pi, 4 * np.pi / 3) * t  # 180-240 degrees
    else:  # scale
        final = rng.uniform(0.55, 0.7) * short
        length = final / rng.uniform(2.0, 2.6) * (1 - t) + final * t
        margin = reach * final
        cx = np.full(num_frames, rng.uniform(margin, width - margin))
        cy = np.full(num_frames, rng.uniform(margin, height - margin))
        angle = np.full(num_frames, angle0)
    frames = _composite(
        background, patch, *(np.asarray(a, np.float32) for a in (cx, cy, angle, length)), aspect
    )
    frames += np.float32(noise_sigma) * rng.standard_normal(frames.shape, dtype=np.float32)
    clip = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(clip[::-1]) if backwards else clip


def _texture(
    rng: np.random.Generator, height: int, width: int, *, cells: float, contrast: float
) -> np.ndarray:
    """Smooth random blobs blending two random colours ``contrast`` apart, plus grain: float (H, W, 3)."""
    # Coarse Gaussian noise on a grid of about `cells` cells across the shorter side, bilinearly upsampled.
    step = min(height, width) / cells
    grid = rng.standard_normal((math.ceil(height / step) + 2, math.ceil(width / step) + 2))
    blobs = _resize_matrix(height, grid.shape[0]) @ grid @ _resize_matrix(width, grid.shape[1]).T
    blobs = (blobs - blobs.mean()) / (blobs.std() + 1e-6)
    weight = np.clip(0.5 + 0.4 * blobs, 0.0, 1.0)[..., None]
    # Two colours `contrast` apart along a random direction, placed so that neither leaves 0..255: clipping
    # would flatten the texture, and texture is what shows the motion inside the object.
    direction = rng.standard_normal(3)
    step_rgb = contrast * direction / np.linalg.norm(direction)
    colour_a = rng.uniform(np.maximum(0, -step_rgb), np.minimum(255, 255 - step_rgb))
    colour_b = colour_a + step_rgb
    grain = 8.0 * rng.standard_normal((height, width, 1))
    return (colour_a * (1 - weight) + colour_b * weight + grain).astype(np.float32)


def _resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix mapping a coarse grid onto n_out samples."""
    position = np.linspace(0, n_in - 1, n_out)
    low = np.minimum(position.astype(int), n_in - 2)
    frac = position - low
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), low] = 1 - frac
    matrix[np.arange(n_out), low + 1] = frac
    return matrix


def _composite(
    background: np.ndarray,
    patch: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    angle: np.ndarray,
    length: np.ndarray,
    aspect: float,
) -> np.ndarray:
    """Paint the textured bar (centre, angle, length per frame) over the still background: (T, H, W, 3)."""
    height, width = background.shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    dx = x[None] - cx[:, None, None]
    dy = y[None] - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    half_length = np.broadcast_to(length[:, None, None] / 2, dx.shape)
    # Inverse rotation: pixel offsets in the bar's own axes (along, across).
    along = cos * dx + sin * dy
    across = -sin * dx + cos * dy
    inside_px = np.minimum(half_length - np.abs(along), half_length / aspect - np.abs(across))
    covered = inside_px > -0.5  # only these pixels are touched, which is most of the speed
    inside_px, along, across = inside_px[covered], along[covered], across[covered]
    half_length = half_length[covered]
    alpha = np.clip(inside_px + 0.5, 0.0, 1.0)[:, None]  # one-pixel antialiased edge
    # A dark outline about a pixel wide keeps the bar visible whatever the two textures' colours.
    outline = np.clip(inside_px - np.maximum(1.0, 0.15 * half_length / aspect) + 0.5, 0.0, 1.0)[:, None]
    # The square texture spans the bar's length; the bar shows its middle band, undistorted.
    to_patch = _PATCH / (2 * half_length)
    colour = _bilinear(patch, (across * to_patch) + _PATCH / 2 - 0.5, (along * to_patch) + _PATCH / 2 - 0.5)
    colour = 20.0 * (1 - outline) + colour * outline
    frames = np.repeat(background[None], len(length), axis=0)
    frames[covered] = frames[covered] * (1 - alpha) + colour * alpha
    return frames


def _bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample ``image`` (h, w, C) at fractional, edge-clamped coordinates (any shape, C appended)."""
    h, w = image.shape[:2]
    rows = np.clip(rows, 0, h - 1)
    cols = np.clip(cols, 0, w - 1)
    r0 = np.minimum(rows.astype(np.int32), h - 2)
    c0 = np.minimum(cols.astype(np.int32), w - 2)
    fr = (rows - r0)[..., None]
    fc = (cols - c0)[..., None]
    top = image[r0, c0] * (1 - fc) + image[r0, c0 + 1] * fc
    bottom = image[r0 + 1, c0] * (1 - fc) + image[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def make_demo_data(
    root: str | os.PathLike,
    *,
    layout: str = "ucf101",
    seed: int = 0,
    videos_per_class: int = 24,
    num_frames: int = 32,
    size: tuple[int, int] = (64, 64),
    fps: float = 25.0,
    classes: list[str] | tuple[str, ...] | None = None,
) -> DemoData:
    """Write encoded videos and annotation files in the real UCF101 or Kinetics format under ``root``.

    ``layout="ucf101"``: ``videos/<ClassName>/v_<ClassName>_gXX_cYY.avi`` (MPEG-4 Part 2) and
    ``annotations/classInd.txt``, ``trainlist0{1,2,3}.txt``, ``testlist0{1,2,3}.txt`` (`ucf101_groups`).
    ``layout="kinetics"``: ``videos/<split>/<label>/{youtube_id}_{start:06d}_{end:06d}.mp4`` (H.264) and
    ``annotations/train.csv``, ``val.csv`` (official CSV), ``train.txt``, ``val.txt`` (path-label lists
    relative to ``videos/``) and ``classes.txt``; the last quarter of each class's videos is val.
    Odd-numbered videos have B-frames, which make AVI timestamps start at 1.  A video's content depends only
    on (seed, class, index), so both layouts hold the same clips whatever the order of generation.

    No existing file is ever replaced: ``root`` is a folder the user named, not its files, and it may be a
    real dataset's (whose ``annotations/train.csv`` the Kinetics layout would otherwise overwrite).  So when
    any file it would write exists already, nothing is written and a `iresvid.files.WriteError` names it;
    files of other names are left alone.  Each file is created under a new name and linked into place only
    while its name is free (`iresvid.files.atomic_write` with ``replace=False``), and a symlinked ``root``
    or folder inside it is refused, never written through.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    names = list(DEMO_CLASSES if classes is None else classes)
    unknown = [c for c in names if c not in CLASS_MOTIONS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct names from {list(DEMO_CLASSES)}, got {names}")
    minimum = 3 if layout == "ucf101" else 2  # every split needs a train and a test/val video per class
    if videos_per_class < minimum:
        raise ValueError(f"{layout} demo data needs videos_per_class >= {minimum}, got {videos_per_class}")
    height, width = size
    if height % 2 or width % 2 or min(height, width) < 16:
        raise ValueError(f"size must be even (yuv420p) and at least 16 px, got {size}")
    start = time.perf_counter()
    root = output_dir(root)
    plan = _plan_ucf101 if layout == "ucf101" else _plan_kinetics
    demo = plan(sorted(names), seed, videos_per_class)
    _refuse_existing(root, demo)
    # Every folder checked (a link refused) before the first video is rendered.
    annotation_dir = folder_in(root, ANNOTATIONS)
    folders = {
        rel: folder_in(root, rel)
        for rel in sorted({PurePosixPath(VIDEOS, v.rel).parent for v in demo.videos})
    }
    for video in demo.videos:
        path = folders[PurePosixPath(VIDEOS, video.rel).parent] / PurePosixPath(video.rel).name
        frames = render_clip(video.name, video_rngs(seed, video.name, video.index)[0], num_frames, size)
        write_video(path, frames, fps=fps, codec=video.codec, bframes=video.bframes, replace=False)
    # The annotation files last: a folder with them is a complete dataset.
    files = {
        key: atomic_write(annotation_dir / name, text, replace=False)
        for key, (name, text) in demo.texts.items()
    }
    data = DemoData(
        root, layout, demo.classes, root / VIDEOS, demo.counts, files, time.perf_counter() - start
    )
    log.info("%s", data.summary())
    return data


def ucf101_groups(videos_per_class: int) -> tuple[int, int, int]:
    """(clips per group, groups, test groups per split) of the demo's UCF101-style splits.

    UCF101 has 25 groups of clips per class and split k (1..3) tests groups 7(k-1)+1 .. 7k.  The demo keeps
    that rule, scaled to its size: at most 25 groups, ceil(videos / 25) clips per group, and split k tests
    the k-th block of round(7 * groups / 25) groups, so no group is in both the train and test list of a
    split, and 3 or more groups leave every split some training groups.
    """
    per_group = math.ceil(videos_per_class / 25)
    groups = math.ceil(videos_per_class / per_group)
    return per_group, groups, max(1, (7 * groups + 12) // 25)


def video_rngs(seed: int, class_name: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The (pixels, metadata) generators of a class's video ``index``: its frames, regenerated undecoded.

    Seeded from (seed, crc32(class), index): crc32, unlike hash(), is the same in every process.
    """
    sequence = np.random.SeedSequence([seed, zlib.crc32(class_name.encode()), index])
    pixels, metadata = sequence.spawn(2)
    return np.random.default_rng(pixels), np.random.default_rng(metadata)


def direction_pairs(classes: list[str]) -> list[tuple[int, int]]:
    """Index pairs ``(forward, reversed)`` of the time-reversal pairs among ``classes``.

    Accepts the dataset's class names in either layout ("MoveRight" in UCF101 style, "move right" in
    Kinetics style).  Used to score direction: only temporal order tells a pair's members apart.
    """
    index = {name.replace(" ", "").replace("_", "").lower(): i for i, name in enumerate(classes)}
    pairs = []
    for name, (motion, reverse) in CLASS_MOTIONS.items():
        if reverse:
            continue
        partner = next(n for n, (m, r) in CLASS_MOTIONS.items() if m == motion and r)
        a, b = (index.get(n.replace(" ", "").lower()) for n in (name, partner))
        if a is not None and b is not None:
            pairs.append((a, b))
    return pairs


def _camel(class_name: str) -> str:
    return "".join(word.capitalize() for word in class_name.split())


VIDEOS, ANNOTATIONS = "videos", "annotations"  # the two folders under a demo root


@dataclass(frozen=True)
class _Video:
    """One video to write: its path under ``videos/``, and what makes its frames and encoding."""

    rel: str
    name: str  # the demo class
    index: int  # within the class
    codec: str
    bframes: int


@dataclass
class _Plan:
    """Everything a layout writes, named before anything is written (so an existing name stops it first)."""

    classes: list[str]  # as named in the dataset, sorted
    counts: dict[str, int]  # videos per split
    videos: list[_Video]
    texts: dict[str, tuple[str, str]]  # key -> (file name under annotations/, its text)


def _refuse_existing(root: Path, plan: _Plan) -> None:
    paths = [root / VIDEOS / v.rel for v in plan.videos] + [
        root / ANNOTATIONS / n for n, _ in plan.texts.values()
    ]
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        more = f" (as do {len(existing) - 1} more of the demo's files)" if len(existing) > 1 else ""
        raise WriteError(
            existing[0], f"it exists already{more}; make-demo-data never replaces a file: choose a new folder"
        )


def _bframes(index: int) -> int:
    return 2 if index % 2 else 0


def _plan_ucf101(names: list[str], seed: int, per_class: int) -> _Plan:
    per_group, _, test_block = ucf101_groups(per_class)
    folders = {_camel(n): n for n in names}
    camel = sorted(folders)  # UCF101's classInd is alphabetical
    lists: dict[str, list[str]] = {f"{subset}list0{k}": [] for subset in ("train", "test") for k in (1, 2, 3)}
    videos = []
    for label, folder in enumerate(camel, 1):
        for index in range(per_class):
            group, clip = index // per_group + 1, index % per_group + 1
            rel = f"{folder}/v_{folder}_g{group:02d}_c{clip:02d}.avi"
            videos.append(_Video(rel, folders[folder], index, "mpeg4", _bframes(index)))
            for k in (1, 2, 3):
                if (k - 1) * test_block < group <= k * test_block:
                    lists[f"testlist0{k}"].append(rel)
                else:
                    lists[f"trainlist0{k}"].append(f"{rel} {label}")
    # CRLF line ends, as in the official ucfTrainTestlist files.
    class_lines = [f"{i} {c}" for i, c in enumerate(camel, 1)]
    texts = {"classInd": ("classInd.txt", _lines(class_lines, "\r\n"))}
    texts |= {name: (f"{name}.txt", _lines(lines, "\r\n")) for name, lines in lists.items()}
    counts = {f"{s}{k}": len(lists[f"{s}list0{k}"]) for k in (1, 2, 3) for s in ("train", "test")}
    return _Plan(camel, counts, videos, texts)


def _plan_kinetics(names: list[str], seed: int, per_class: int) -> _Plan:
    num_val = max(1, per_class // 4)
    rows: dict[str, list[list[str]]] = {"train": [], "val": []}
    lists: dict[str, list[str]] = {"train": [], "val": []}
    videos = []
    for label, name in enumerate(names):
        for index in range(per_class):
            split = "val" if index >= per_class - num_val else "train"
            metadata = video_rngs(seed, name, index)[1]
            youtube_id = "".join(metadata.choice(list(_YOUTUBE_ALPHABET), 11))
            start = int(metadata.integers(0, 300))
            end = start + 10  # Kinetics clips are 10 s cuts of a YouTube video
            rel = f"{split}/{name}/{youtube_id}_{start:06d}_{end:06d}.mp4"
            videos.append(_Video(rel, name, index, "libx264", _bframes(index)))
            rows[split].append([name, youtube_id, str(start), str(end), split])
            lists[split].append(f"{rel} {label}")
    texts = {"classes": ("classes.txt", _lines(names))}
    for split in ("train", "val"):
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerows(rows[split])
        texts[f"{split}_csv"] = (f"{split}.csv", text.getvalue())
        texts[f"{split}_list"] = (f"{split}.txt", _lines(lists[split]))
    return _Plan(names, {split: len(lines) for split, lines in lists.items()}, videos, texts)


def _lines(lines: list[str], newline: str = "\n") -> str:
    return "".join(line + newline for line in lines)
