"""Parse the annotation formats real video datasets ship with, and find their video files.

Pure parsing and file discovery, nothing is decoded.  Strict where a mistake would silently corrupt training
(shifted class indices, out-of-range labels, unknown class names, unlabeled splits) and tolerant of what the
real files contain (CRLF line ends, a UTF-8 byte-order mark, trailing spaces, blank lines, duplicate entries,
videos that failed to download).

Class names are compared as text, so two spellings of one name would make two classes without a word: the
same name in two Unicode normalisations (``Café`` typed as one code point, or as ``e`` plus a combining
accent, as macOS file names and some editors write it), or in two cases (``Shrink`` and ``shrink``).  Both
are errors naming the two spellings and where each was read (`check_class_names`).
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iresvid.data.manifest import Manifest

log = logging.getLogger(__name__)

KINETICS_EXTENSIONS = (".mp4", ".webm", ".mkv")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi")
_SHOWN = 5  # how many missing / duplicate names a log message lists before "..."
_INT = re.compile(r"[+-]?\d+")
_NUMBERED_LINE = re.compile(r"(\d+)\s+(\S.*)")
_NAME_MAX = 255  # bytes in one file or folder name (ext4, XFS, APFS, NTFS): a longer label is no folder


@dataclass(frozen=True)
class VideoRecord:
    """One video and its label; ``start``/``end`` are the clip's span (seconds) in its source, when known."""

    path: Path
    label: int
    video_id: str
    start: float | None = None
    end: float | None = None


@dataclass
class Annotations:
    """The videos found (``records``), the listed ones not on disk (``missing``, with their labels: a tool
    that reports them needs them), and the class list.

    ``class_source`` says where the class index came from (a class-index file, or sorted names), because a
    class index derived differently for train and val is the classic silent failure.  ``manifest`` is the
    prepared set's (`iresvid.data.manifest.Manifest.apply`), when there is one.
    """

    records: list[VideoRecord]
    classes: list[str]
    missing: list[VideoRecord]
    source: str
    class_source: str = ""
    manifest: Manifest | None = None

    def summary(self) -> str:
        return (
            f"{len(self.records)} entries, {len(self.missing)} missing, {len(self.classes)} classes "
            f"from {self.source} (class index: {self.class_source})"
        )


def read_class_index(path: str | os.PathLike) -> list[str]:
    """Class names in index order, from a class-index file.

    Accepted formats: JSON, either ``{name: index}`` (pytorchvideo's kinetics_classnames.json, whose keys keep
    their CSV quotes) or a list of names; text with ``<index> <name>`` lines numbered 0..K-1 or 1..K (UCF101's
    classInd.txt, 1-based); otherwise text with one name per line, line order = index (mmaction2 label maps).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        names = _json_class_names(path)
    else:
        lines = [line for _, line in _read_lines(path)]
        matches = [_NUMBERED_LINE.fullmatch(line) for line in lines]
        if lines and all(matches):
            numbers = [int(m.group(1)) for m in matches]
            first = min(numbers)
            if first not in (0, 1) or sorted(numbers) != list(range(first, first + len(numbers))):
                raise ValueError(
                    f"{path}: numbered class lines must be numbered 0..K-1 or 1..K without gaps or repeats"
                )
            by_number = {n: m.group(2).strip() for n, m in zip(numbers, matches, strict=True)}
            names = [by_number[n] for n in sorted(by_number)]
        else:
            names = lines
    if not names:
        raise ValueError(f"{path}: no class names")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{path}: class names listed more than once: {repeated[:_SHOWN]}")
    check_class_names(names, str(path), {name: f"{path}, class {i}" for i, name in enumerate(names)})
    return names


def check_class_names(names: Sequence[str], origin: str, where: Mapping[str, str] | None = None) -> None:
    """Refuse class names that differ only in Unicode normalisation (NFC / NFD) or in case; ``where`` says
    where each name was read (a file and line), else ``origin`` is named.

    Both are errors, not warnings.  NFC and NFD spellings are one name to a reader, so keeping two classes
    splits one class's videos between two labels, and merging them silently would change the class index a
    model was trained with; the fix is one spelling in the files, which only the user can make.  A case-only
    difference (``Shrink`` / ``shrink``) is, in every dataset format read here, a typo in one line rather
    than two real classes (Kinetics labels are lower case, UCF101's are one CamelCase each), and on a
    case-insensitive file system (macOS, Windows) the two class folders are one, so videos would be found
    under both labels; a warning scrolled past would leave a near-empty class and shifted indices.
    """
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(unicodedata.normalize("NFC", name).casefold(), name)
        if other == name:
            continue
        at = where or {}
        first, second = f"{other!r} ({at.get(other, origin)})", f"{name!r} ({at.get(name, origin)})"
        if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", name):
            raise ValueError(
                f"class names {ascii(other)} ({at.get(other, origin)}) and {ascii(name)} "
                f"({at.get(name, origin)}) are the same name in two Unicode normalisations "
                f"({_normal_form(other)} and {_normal_form(name)}), which would make two classes; "
                "write it one way (NFC) in every file"
            )
        raise ValueError(
            f"class names {first} and {second} differ only in case, which would make two classes (and one "
            "folder on a case-insensitive file system); write the name one way in every file"
        )


def _normal_form(name: str) -> str:
    return next(
        (form for form in ("NFC", "NFD") if unicodedata.is_normalized(form, name)), "neither NFC nor NFD"
    )


def kinetics_csv(
    csv_path: str | os.PathLike,
    video_root: str | os.PathLike,
    *,
    split: str | None = None,
    classes_file: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    extensions: Sequence[str] = KINETICS_EXTENSIONS,
    require_labels: bool = True,
) -> Annotations:
    """The official Kinetics-400/600/700 CSV (``label,youtube_id,time_start,time_end,split[,is_cc]``).

    Videos are ``{youtube_id}_{time_start:06d}_{time_end:06d}{ext}``, flat in ``video_root`` or in class
    folders named by the label or by the label with spaces replaced by underscores.  The class index comes
    from ``classes_file`` or ``classes`` (pass ``train.classes`` when reading val; given both, they must
    agree) or else is the sorted label names of the whole CSV (before ``split`` filtering).  Test CSVs
    without a label column raise unless ``require_labels=False``, which lists their videos with label -1:
    not usable for training.
    """
    csv_path, video_root = Path(csv_path), Path(video_root)
    _require_dir(video_root, csv_path)
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)  # the csv module, because labels may hold commas inside quotes
        rows = [(reader.line_num, [cell.strip() for cell in row]) for row in reader]
    rows = [(lineno, row) for lineno, row in rows if any(row)]
    if not rows:
        raise ValueError(f"{csv_path}: empty CSV")
    header = rows[0][1]
    column = {name: i for i, name in enumerate(header)}
    absent = [c for c in ("youtube_id", "time_start", "time_end") if c not in column]
    if absent:
        raise ValueError(
            f"{csv_path}: header {header} lacks {absent}; expected label,youtube_id,time_start,time_end,split"
        )
    labeled = "label" in column
    if require_labels and not labeled:
        raise ValueError(
            f"{csv_path} has no label column (an unlabeled test split?); labels are required for training, "
            "pass require_labels=False to list its videos with label -1"
        )
    if split is not None and "split" not in column:
        raise ValueError(f"{csv_path}: split={split!r} requested but the CSV has no split column")
    body = []
    first_line: dict[str, str] = {}  # label -> where it first appears (named by `check_class_names`)
    for lineno, row in rows[1:]:
        if len(row) != len(header):
            raise ValueError(f"{csv_path}:{lineno}: {len(row)} fields but the header has {len(header)}")
        body.append((f"{csv_path}:{lineno}", row))
        if labeled:
            first_line.setdefault(row[column["label"]], f"{csv_path}:{lineno}")

    names, origin = _given_classes(classes_file, classes)
    if names is None and labeled:
        names = sorted(label for label in first_line if label)
        origin = f"sorted label names of {csv_path.name}"
        check_class_names(names, origin, first_line)
    elif names is None:
        names, origin = [], "none (unlabeled CSV)"
    index = _ClassIndex(names, origin)

    if split is not None:
        selected = [(where, row) for where, row in body if row[column["split"]] == split]
        if not selected:
            present = sorted({row[column["split"]] for _, row in body})
            raise ValueError(f"{csv_path}: no rows with split {split!r}; splits present: {present}")
        body = selected

    listing = _Listing()
    entries, no_folder = [], {}
    for where, row in body:
        label_name = row[column["label"]] if labeled else ""
        if label_name:
            label = index.index(label_name, where)
        elif require_labels:
            raise ValueError(f"{where}: empty label")
        else:
            label = -1
        start, end = _seconds(row[column["time_start"]], where), _seconds(row[column["time_end"]], where)
        stem = f"{row[column['youtube_id']]}_{start:06d}_{end:06d}"
        spellings = dict.fromkeys([label_name, label_name.replace(" ", "_")] if label_name else [])
        folders = [video_root / name for name in spellings if _folder_name(name)]
        if spellings and not folders:
            no_folder.setdefault(label_name, where)
        path = _find_kinetics_video(stem, [*folders, video_root], extensions, listing)
        entries.append(VideoRecord(path, label, stem, float(start), float(end)))
    if no_folder:
        # Such a label cannot have been a class folder, so a download can only have put its videos flat.
        log.warning(
            "%s: %d labels cannot be folder names (over %d bytes, or holding '/'); their videos are looked "
            "for directly in %s: %s",
            csv_path,
            len(no_folder),
            _NAME_MAX,
            video_root,
            _some([f"{where} ({len(os.fsencode(label))} bytes)" for label, where in no_folder.items()]),
        )
    return _finish(entries, names, origin, str(csv_path), video_root, listing)


def _folder_name(name: str) -> bool:
    """Whether ``name`` can be one folder's name: not too long, not a path, not ``.`` or ``..``."""
    return (
        len(os.fsencode(name)) <= _NAME_MAX
        and name not in (".", "..")
        and not {"/", "\0", os.sep, os.altsep} & set(name)
    )


def _given_classes(
    classes_file: str | os.PathLike | None, classes: Sequence[str] | None
) -> tuple[list[str] | None, str]:
    """The class names a caller fixed (a class-index file, a list, or both in agreement) and where from;
    (None, "") when neither was given."""
    if classes_file is not None:
        names = read_class_index(classes_file)
        if classes is not None and list(classes) != names:
            raise ValueError(
                f"the classes given differ from those of {classes_file}: the labels would be permuted"
            )
        return names, f"class-index file {classes_file}"
    if classes is not None:
        return list(classes), "the class list given"
    return None, ""


def path_label_list(
    list_file: str | os.PathLike,
    video_root: str | os.PathLike | None = None,
    *,
    classes_file: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> Annotations:
    """``<path> <label>`` list files (pytorchvideo, mmaction2): one video per line, integer label.

    The label is after the LAST whitespace, so paths may contain spaces.  Relative paths are resolved against
    ``video_root``, else the list file's folder.  Class names come from ``classes_file`` or ``classes`` (pass
    ``train.classes`` when reading val: a val list without the highest labels still has every class; given
    both, they must agree), else are ``str(label)`` for labels 0..``num_classes``-1 (or 0..max label).
    """
    list_file = Path(list_file)
    root = Path(video_root) if video_root is not None else list_file.parent
    _require_dir(root, list_file)
    names, origin = _given_classes(classes_file, classes)
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise ValueError(f"num_classes={num_classes} but {origin} lists {len(names)} classes")
    if names is not None:
        check_class_names(names, origin)
    limit = len(names) if names is not None else num_classes
    entries = []
    for lineno, line in _read_lines(list_file):
        where = f"{list_file}:{lineno}"
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not _INT.fullmatch(parts[1]):
            raise ValueError(f"{where}: expected '<path> <integer label>', got {line!r}")
        rel, label = parts[0], int(parts[1])
        if label < 0 or (limit is not None and label >= limit):
            bound = f"0..{limit - 1}" if limit is not None else "non-negative"
            raise ValueError(f"{where}: label {label} out of range ({bound})")
        entries.append(VideoRecord(root / rel, label, PurePosixPath(rel).with_suffix("").as_posix()))
    if not entries:
        raise ValueError(f"{list_file}: no entries")
    if names is None:
        if limit is None:
            limit = max(r.label for r in entries) + 1
            origin = f"integer labels 0..{limit - 1} (max label in {list_file.name})"
        else:
            origin = f"integer labels 0..{limit - 1} (num_classes)"
        names = [str(i) for i in range(limit)]
    return _finish(entries, names, origin, str(list_file), root, _Listing())


def ucf101(
    video_root: str | os.PathLike,
    annotation_dir: str | os.PathLike,
    *,
    split: int = 1,
    subset: str = "train",
) -> Annotations:
    """UCF101's official split files: ``classInd.txt``, ``trainlist0{1,2,3}.txt``, ``testlist0{1,2,3}.txt``.

    Labels are 1-based in the files and 0-based here.  The class is read from each entry's folder (test
    lists carry no label); where a label is listed it must agree with the folder, else the line is named.
    """
    if split not in (1, 2, 3):
        raise ValueError(f"ucf101: split must be 1, 2 or 3, got {split!r}")
    if subset not in ("train", "test"):
        raise ValueError(f"ucf101: subset must be 'train' or 'test', got {subset!r}")
    video_root, annotation_dir = Path(video_root), Path(annotation_dir)
    class_file = annotation_dir / "classInd.txt"
    list_file = annotation_dir / f"{subset}list0{split}.txt"
    _require_dir(video_root, list_file)
    names = read_class_index(class_file)
    index = _ClassIndex(names, str(class_file))
    entries = []
    for lineno, line in _read_lines(list_file):
        where = f"{list_file}:{lineno}"
        parts = line.split()
        # UCF101 paths hold no spaces: a second field is the label, and it must be an integer (anything else
        # read as part of the path would turn a typo into a "missing" video).
        if len(parts) > 2 or (len(parts) == 2 and not _INT.fullmatch(parts[1])):
            raise ValueError(f"{where}: expected '<ClassName>/<video>.avi [<integer label>]', got {line!r}")
        rel, listed = parts[0], int(parts[1]) if len(parts) == 2 else None
        folders = PurePosixPath(rel).parts
        if len(folders) < 2:
            raise ValueError(f"{where}: expected '<ClassName>/<video>.avi', got {rel!r}")
        # The class comes from the folder, not the file name: UCF101's HandstandPushups folder holds files
        # named v_HandStandPushups_*.
        label = index.index(folders[-2], where)
        if listed is not None:
            if not 1 <= listed <= len(names):
                raise ValueError(f"{where}: label {listed} out of range 1..{len(names)} of {class_file}")
            if listed - 1 != label:
                raise ValueError(
                    f"{where}: label {listed} is {names[listed - 1]!r} in {class_file.name} but the video "
                    f"is in folder {folders[-2]!r} (label {label + 1})"
                )
        entries.append(VideoRecord(video_root / rel, label, PurePosixPath(rel).stem))
    if not entries:
        raise ValueError(f"{list_file}: no entries")
    return _finish(entries, names, f"class-index file {class_file}", str(list_file), video_root, _Listing())


def folder_per_class(
    video_root: str | os.PathLike,
    *,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    classes: Sequence[str] | None = None,
) -> Annotations:
    """``video_root/<class>/<video>``: the class index is the sorted folder names, empty folders included.

    With ``classes`` (pass ``train.classes`` when reading val) folders are matched to that index by name
    instead, so a split without some classes' folders keeps every other class's index; a folder that is not
    one of ``classes`` is an error naming it.
    """
    root = Path(video_root)
    if not root.is_dir():
        raise FileNotFoundError(f"video root {root} is not a directory")
    wanted = {e.lower() for e in extensions}
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=str)
    if classes is None:
        names, origin = [p.name for p in class_dirs], f"sorted folder names of {root}"
    else:
        names, origin = list(classes), "the class list given"
    index = _ClassIndex(names, origin, {p.name: f"class folder {p}" for p in class_dirs})
    entries, empty, found = [], [], set()
    for folder in class_dirs:
        label = index.index(folder.name, f"class folder {folder}")
        found.add(label)
        videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted)
        if not videos:
            empty.append(folder.name)
        entries += [VideoRecord(p, label, f"{folder.name}/{p.stem}") for p in videos]
    if not entries:
        raise FileNotFoundError(f"no {'/'.join(extensions)} videos in the class folders of {root}")
    if empty:
        # Kept: dropping them would shift the indices of every later class.
        log.warning("%s: %d class folders hold no videos: %s", root, len(empty), _some(empty))
    absent = [name for i, name in enumerate(names) if i not in found]
    if absent:
        log.warning(
            "%s: no folder for %d of the %d classes (their indices are kept): %s",
            root,
            len(absent),
            len(names),
            _some(absent),
        )
    return _finish(entries, names, origin, str(root), root, _Listing())


class _ClassIndex:
    """Class name -> index; a name also matches with spaces and underscores swapped (folder-name variants).
    Names that differ only in Unicode normalisation or case are refused (`check_class_names`)."""

    def __init__(self, names: Sequence[str], origin: str, where: Mapping[str, str] | None = None):
        check_class_names(names, origin, where)
        self.names, self.origin = list(names), origin
        self._exact = {name: i for i, name in enumerate(self.names)}
        loose: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            loose.setdefault(name.replace("_", " "), []).append(i)
        self._loose = {key: ids[0] for key, ids in loose.items() if len(ids) == 1}

    def index(self, name: str, where: str) -> int:
        i = self._exact.get(name, self._loose.get(name.replace("_", " ")))
        if i is None:
            raise ValueError(
                f"{where}: unknown class {name!r}, not one of the {len(self.names)} in {self.origin}"
                + self._near(name)
            )
        return i

    def _near(self, name: str) -> str:
        """A known name that ``name`` spells otherwise (normalisation, case), as a hint; else ""."""
        key = unicodedata.normalize("NFC", name).casefold()
        for known in self.names:
            if unicodedata.normalize("NFC", known).casefold() == key:
                if unicodedata.normalize("NFC", known) == unicodedata.normalize("NFC", name):
                    return (
                        f" (it is {ascii(known)} in another Unicode normalisation: "
                        f"{_normal_form(name)} here, {_normal_form(known)} there; write it one way, NFC)"
                    )
                return f" (it differs from {known!r} only in case)"
        return ""


class _Listing:
    """Cached directory listings: one listdir per folder instead of a stat per (video, candidate) pair."""

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}

    def contains(self, folder: Path, name: str) -> bool:
        names = self._names.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                names = frozenset()
            except OSError as e:
                if e.errno != errno.ENAMETOOLONG:  # a name no file system holds: nothing is there
                    raise
                names = frozenset()
            self._names[folder] = names
        return name in names

    def exists(self, path: Path) -> bool:
        return self.contains(path.parent, path.name)


def _find_kinetics_video(
    stem: str, folders: list[Path], extensions: Sequence[str], listing: _Listing
) -> Path:
    """The first existing candidate; if none exists, the path the video should have (for the missing list)."""
    for folder in folders:
        for ext in extensions:
            if listing.contains(folder, stem + ext):
                return folder / (stem + ext)
    expected = next((f for f in folders if listing.contains(f.parent, f.name)), folders[-1])
    return expected / (stem + extensions[0])


def _finish(
    entries: list[VideoRecord],
    classes: list[str],
    class_source: str,
    source: str,
    root: Path,
    listing: _Listing,
) -> Annotations:
    """Drop duplicates (first kept), split found from missing videos, log, and refuse an all-missing list."""
    seen: dict[str, VideoRecord] = {}
    duplicates, conflicting = [], 0
    records, missing = [], []
    for record in entries:
        first = seen.get(record.video_id)
        if first is not None:
            duplicates.append(record.video_id)
            conflicting += first.label != record.label
            continue
        seen[record.video_id] = record
        (records if listing.exists(record.path) else missing).append(record)
    if duplicates:
        log.warning(
            "%s: %d duplicate entries ignored, the first of each kept (%d with a different label): %s",
            source,
            len(duplicates),
            conflicting,
            _some(duplicates),
        )
    if not records:
        raise FileNotFoundError(
            f"none of the {len(missing)} videos listed in {source} exist under {root} "
            f"(e.g. {missing[0].path})"
        )
    if missing:
        log.warning(
            "%s: %d of %d listed videos are missing under %s: %s",
            source,
            len(missing),
            len(seen),
            root,
            _some([r.path.name for r in missing]),
        )
    annotations = Annotations(records, list(classes), missing, source, class_source)
    log.info("%s", annotations.summary())
    return annotations


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines; utf-8-sig drops a BOM, text mode drops CRs."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield lineno, line


def _json_class_names(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        data = json.load(f)
    if isinstance(data, list):
        return [str(name).strip() for name in data]
    if not isinstance(data, dict) or not all(isinstance(i, int) for i in data.values()):
        raise ValueError(f"{path}: expected a JSON list of names or an object {{name: integer index}}")
    if sorted(data.values()) != list(range(len(data))):
        raise ValueError(f"{path}: class indices must be 0..{len(data) - 1}, each once")
    by_index = {i: name.strip().strip('"') for name, i in data.items()}
    return [by_index[i] for i in range(len(data))]


def _seconds(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: time {text!r} is not a number") from None
    if not value.is_integer() or value < 0:
        raise ValueError(f"{where}: time {text!r} must be whole non-negative seconds (files are named by it)")
    return int(value)


def _require_dir(root: Path, annotation_file: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"video root {root} (for {annotation_file}) is not a directory")


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in names[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")
