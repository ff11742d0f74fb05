"""The manifest of a prepared set (``iresvid prepare``): one JSON line per listed video, ``manifest.jsonl``.

JSON Lines rather than CSV: a line is written as each video finishes, so a killed run loses at most the line
it was writing (a torn last line is ignored on reading); values nest (the key-frame list, the source's own
description) without a quoting convention; and labels with commas or quotes (Kinetics has them) need no
escaping rules that a spreadsheet and a parser might read differently.  Lines are sorted by path and hold
nothing that depends on when or where the set was prepared, so two runs that prepared the same set write
byte-identical manifests (a resumed run included, and shards once merged).

A line::

    {"path": "train/abseiling/x.mp4", "label": "abseiling", "status": "ok", "frames": 250, "fps": 25.0,
     "width": 455, "height": 256, "codec": "h264", "duration": 10.0, "gop": 16, "key_frames": [0, 16, ...],
     "size": 812345, "mtime_ns": ..., "decord": true, "index": {...},
     "source": {"path": "train/abseiling/x.webm", "size": ..., "mtime_ns": ..., "codec": "vp9", ...}}

``path`` is relative to the prepared root, ``source.path`` to the source root.  ``status`` is ``ok``,
``missing``, ``corrupt: <reason>`` or ``too short: <reason>``; only ``ok`` lines describe an output file
(``size``/``mtime_ns`` are the output's: a file whose size or mtime differs is not the one described).
``index`` is what the frame-exact reader needs to skip its first-open scan: the time base, the
presentation timestamps (``[start, step]`` when evenly spaced), the key frames' decode timestamps, the stream
start.  ``decord`` says whether decord reads the file exactly (checked when it was prepared; None: unknown).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from fractions import Fraction
from functools import partial
from pathlib import Path, PurePosixPath

from iresvid.data.annotations import Annotations
from iresvid.data.video_io import FrameIndex, KnownFile

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
OK, MISSING, CORRUPT, TOO_SHORT = "ok", "missing", "corrupt", "too short"


def status_kind(status: str) -> str:
    """``ok`` / ``missing`` / ``corrupt`` / ``too short``, without the reason."""
    return status.split(":", 1)[0]


def index_record(index: FrameIndex) -> dict:
    """The part of a `FrameIndex` a manifest line stores (``index``): enough to rebuild it exactly."""
    pts = index.pts
    steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
    compact = [pts[0], steps.pop() if steps else 0] if len(steps) <= 1 else None
    return {
        "time_base": f"{index.time_base.numerator}/{index.time_base.denominator}",
        "pts": compact if compact is not None else pts,
        "evenly_spaced": compact is not None,
        "key_dts": index.key_dts,
        "start_ts": index.start_ts,
        "source": index.source,
        "coded_size": list(index.coded_size),
        "quarter_turns": index.quarter_turns,
        "bits": index.bits,
    }


def frame_index(entry: dict) -> FrameIndex:
    """The `FrameIndex` of an ``ok`` manifest line (its ``index``, ``frames``, ``key_frames``, ``fps``)."""
    stored, n = entry["index"], entry["frames"]
    if stored["evenly_spaced"]:
        start, step = stored["pts"]
        pts = list(range(start, start + step * n, step)) if step else [start]
    else:
        pts = list(stored["pts"])
    keys = list(entry["key_frames"])
    return FrameIndex(
        pts,
        keys,
        [pts[k] for k in keys],
        list(stored["key_dts"]),
        stored["start_ts"],
        Fraction(stored["time_base"]),
        entry["fps"],
        stored["source"],
        tuple(stored["coded_size"]),
        stored["quarter_turns"],
        stored["bits"],
        entry["codec"],
    )


def parse_lines(path: str | os.PathLike) -> Iterator[tuple[dict, bytes]]:
    """Each line of a manifest (or of a journal being written) as (entry, its bytes).  A torn last line (a
    killed writer) is ignored; any other bad line is an error naming the file and line."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entry["path"]  # noqa: B018 — every line names its video
        except (ValueError, KeyError, TypeError) as e:
            if lineno == len(lines):  # no newline after it: the line was being written
                log.warning("%s:%d: ignoring an incomplete last line", path, lineno)
                continue
            raise ValueError(f"{path}:{lineno}: not a manifest line ({e})") from e
        yield entry, line + b"\n"


def read_manifest(path: str | os.PathLike) -> dict[str, dict]:
    """The entries of a manifest by path; a later line for the same path replaces an earlier one."""
    return {entry["path"]: entry for entry, _ in parse_lines(path)}


def dump_line(entry: dict) -> bytes:
    return (json.dumps(entry, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode()


def manifest_bytes(lines: dict[str, bytes]) -> bytes:
    """The manifest file: one line per video, sorted by path (deterministic)."""
    return b"".join(lines[path] for path in sorted(lines))


_read: dict[tuple, Manifest] = {}  # the last manifest read, by (path, size, mtime)


class Manifest:
    """A prepared set's manifest, as datasets use it: which listed videos are usable, and what is known about
    each (`known_file`), so that no file is checked or probed at start-up.

    Looked up by the video's path under ``root``; an entry stays trusted only while its file's size and
    mtime are the recorded ones (`KnownFile`).  Lines are kept as their bytes and parsed when a file is
    opened: Kinetics-400's 240k parsed entries took 1.9 GB, and data-loader workers would copy them all.
    """

    def __init__(self, root: str | os.PathLike, path: str | os.PathLike):
        self.root = Path(root)
        self.source = str(path)
        self._lines: dict[str, bytes] = {}
        self._frames: dict[str, int] = {}  # usable videos' frame counts
        self._unusable: dict[str, str] = {}  # the other videos' statuses
        for entry, line in parse_lines(path):
            rel = entry["path"]
            self._lines[rel] = line
            self._frames.pop(rel, None)
            self._unusable.pop(rel, None)
            if entry["status"] == OK:
                self._frames[rel] = entry["frames"]
            else:
                self._unusable[rel] = entry["status"]
        self._by_stem = {str(PurePosixPath(p).with_suffix("")): s for p, s in self._unusable.items()}

    @classmethod
    def find(cls, root: str | os.PathLike, name: str | None = MANIFEST_NAME) -> Manifest | None:
        """The manifest ``root/name`` if it exists, else None."""
        if not name:
            return None
        path = Path(root) / name
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        # Read once per process and file version: a run loads train and val (and val the train classes).
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _read:
            _read.clear()
            _read[key] = cls(root, path)
        return _read[key]

    def __len__(self) -> int:
        return len(self._lines)

    def entry(self, path: str | os.PathLike) -> dict | None:
        """The line for the video at ``path`` (under the root); None if not listed."""
        line = self._lines.get(self._relative(path) or "")
        return None if line is None else json.loads(line)

    def status(self, path: str | os.PathLike) -> str | None:
        rel = self._relative(path) or ""
        return OK if rel in self._frames else self._unusable.get(rel)

    def frames(self, path: str | os.PathLike) -> int | None:
        """A usable video's frame count; None for any other."""
        return self._frames.get(self._relative(path) or "")

    def known_file(self, path: str | os.PathLike) -> KnownFile | None:
        if self.frames(path) is None:
            return None
        entry = self.entry(path)
        return KnownFile(entry["size"], entry["mtime_ns"], partial(frame_index, entry), entry.get("decord"))

    def apply(self, annotations: Annotations) -> Annotations:
        """``annotations`` without the videos the manifest says are not usable (listed once, here, before
        any epoch), and carrying the manifest for the datasets' opens.  A video the manifest does not list
        is kept and checked when first read, as without a manifest."""
        kept, left_out, unlisted = [], [], 0
        for record in annotations.records:
            status = self.status(record.path)
            if status is not None and status != OK:
                left_out.append(record)
                continue
            unlisted += status is None
            kept.append(record)
        reasons = self.statuses([r.path for r in [*left_out, *annotations.missing]])
        if left_out or annotations.missing:
            log.warning(
                "%s: %d listed videos are left out, as %s says: %s",
                annotations.source,
                len(left_out) + len(annotations.missing),
                self.source,
                ", ".join(f"{count} {status}" for status, count in sorted(reasons.items())),
            )
        if unlisted:
            log.warning(
                "%s: %d videos are not in %s (added after it was written?): checked when first read",
                annotations.source,
                unlisted,
                self.source,
            )
        if not kept:
            raise FileNotFoundError(f"{annotations.source}: {self.source} marks every listed video unusable")
        return replace(annotations, records=kept, missing=[*annotations.missing, *left_out], manifest=self)

    def statuses(self, paths: Iterable[Path]) -> Counter:
        """How many of ``paths`` (listed videos not found) the manifest explains, by status; a path it does
        not list counts as ``unknown``.  Matched without the extension: a listing names the source's."""
        counts: Counter = Counter()
        for path in paths:
            rel = self._relative(path)
            status = self._by_stem.get(str(PurePosixPath(rel).with_suffix(""))) if rel else None
            counts[status_kind(status) if status else "unknown"] += 1
        return counts

    def _relative(self, path: str | os.PathLike) -> str | None:
        """``path`` under the root, as the manifest writes it; None for a path elsewhere."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None
