"""Annotation faults: each is an error naming the file and line, or handled as documented, and a class index
never shifts silently.

The hazard that matters most: a split without some classes.  A class index derived from a split's own
content (sorted names, sorted folders) then shifts every later class, so evaluation splits must take the
training split's index, by name.  Faults already covered in tests/test_annotations.py are not repeated here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from iresvid.config import load_config
from iresvid.data.annotations import (
    Annotations,
    folder_per_class,
    kinetics_csv,
    path_label_list,
    read_class_index,
    ucf101,
)
from iresvid.data.build import build_dataset, load_annotations
from iresvid.engine.trainer import Trainer

HEADER = "label,youtube_id,time_start,time_end,split"
CLASSES = ["alpha", "beta", "gamma", "delta"]  # deliberately unsorted: an index never comes from sorting
SORTED = sorted(CLASSES)
BOM = "\ufeff"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def touch(path: Path) -> Path:
    return write(path, "")


def quirky(text: str) -> str:
    """``text`` as real annotation files come: a BOM, CRLF, trailing spaces and tabs, blank and blank-looking
    lines (first, between and last)."""
    lines = [f"{line}  \t" for line in text.splitlines()]
    return BOM + "\r\n".join(["", *lines[:1], "   ", *lines[1:2], "", *lines[2:], "\t", ""])


def labels(annotations: Annotations) -> dict[str, int]:
    return {record.video_id: record.label for record in annotations.records}


def kinetics_row(label: str, letter: str, split: str = "train") -> str:
    return f"{label},{letter * 11},0,10,{split}"


def kinetics_video(root: Path, letter: str) -> Path:
    return touch(root / f"{letter * 11}_000000_000010.mp4")


# --------------------------------------------------------- CRLF, BOM, trailing spaces, blank lines: no effect


def _formats(tmp_path: Path) -> dict[str, tuple[str, str, Callable[[Path], object]]]:
    """Per format: a file name, a clean annotation text, and the parser that reads such a file."""
    videos = tmp_path / "videos"
    for letter in "AB":
        kinetics_video(videos, letter)
    for name in ("alpha/v_alpha_g01_c01.avi", "beta/v_beta_g01_c01.avi", "a b.mp4", "x.mp4"):
        touch(videos / name)

    def ucf(list_file: Path) -> Annotations:
        write(list_file.parent / "classInd.txt", "1 alpha\n2 beta\n")
        return ucf101(videos, list_file.parent)

    kinetics_text = "\n".join([HEADER, kinetics_row("beta", "A"), kinetics_row("alpha", "B")])
    ucf_text = "alpha/v_alpha_g01_c01.avi 1\nbeta/v_beta_g01_c01.avi 2"
    return {
        "kinetics_csv": ("train.csv", kinetics_text, lambda path: kinetics_csv(path, videos)),
        "path_label_list": (
            "l.txt",
            "a b.mp4 1\nx.mp4 0\nx.mp4 0",
            lambda path: path_label_list(path, videos),
        ),
        "ucf101_trainlist": ("trainlist01.txt", ucf_text, ucf),
        "class_index_lines": ("classes.txt", "delta\nalpha\nbeta", read_class_index),
        "class_index_numbered": ("classInd.txt", "1 delta\n2 alpha\n3 beta", read_class_index),
        "class_index_json": (
            "classes.json",
            json.dumps({"delta": 0, "alpha": 1}, indent=1),
            read_class_index,
        ),
    }


@pytest.mark.parametrize(
    "fmt",
    [
        "kinetics_csv",
        "path_label_list",
        "ucf101_trainlist",
        "class_index_lines",
        "class_index_numbered",
        "class_index_json",
    ],
)
def test_crlf_bom_trailing_spaces_and_blank_lines_read_exactly_like_a_clean_file(tmp_path, fmt):
    name, text, parse = _formats(tmp_path)[fmt]
    assert quirky(text).startswith(BOM) and "  \t\r\n" in quirky(text) and "\r\n\r\n" in quirky(text)
    clean = parse(write(tmp_path / "clean" / name, text))
    messy = parse(write(tmp_path / "messy" / name, quirky(text)))
    if isinstance(clean, Annotations):
        assert clean.records and (clean.records, clean.classes) == (messy.records, messy.classes)
    else:
        assert clean and clean == messy


def test_errors_name_the_physical_line_despite_bom_crlf_and_blank_lines(tmp_path):
    touch(tmp_path / "x.mp4")
    listing = write(tmp_path / "l.txt", BOM + "x.mp4 0\r\n\r\n   \r\nx.mp4 zero\r\n")
    with pytest.raises(ValueError, match=r"l\.txt:4: expected '<path> <integer label>'"):
        path_label_list(listing)
    kinetics_video(tmp_path / "v", "A")
    csv_file = write(tmp_path / "k.csv", BOM + HEADER + "\r\n\r\n" + kinetics_row("omega", "A") + "  \r\n")
    with pytest.raises(ValueError, match=r"k\.csv:3: unknown class 'omega'"):
        kinetics_csv(csv_file, tmp_path / "v", classes=CLASSES)


# ------------------------------------------------------------------ bad labels: an error naming file and line


@pytest.mark.parametrize(
    "line, message",
    [
        ("x.mp4 4", r"l\.txt:2: label 4 out of range \(0\.\.3\)"),  # one past the classes given
        ("x.mp4 -1", r"l\.txt:2: label -1 out of range"),
        ("x.mp4 1.0", r"l\.txt:2: expected '<path> <integer label>', got 'x.mp4 1.0'"),
        ("x.mp4 beta", r"l\.txt:2: expected '<path> <integer label>', got 'x.mp4 beta'"),
        ("x.mp4", r"l\.txt:2: expected '<path> <integer label>', got 'x.mp4'"),
    ],
)
def test_path_label_list_bad_labels(tmp_path, line, message):
    touch(tmp_path / "x.mp4")
    write(tmp_path / "l.txt", f"x.mp4 0\n{line}\n")
    with pytest.raises(ValueError, match=message):
        path_label_list(tmp_path / "l.txt", classes=CLASSES)


@pytest.mark.parametrize(
    "line, message",
    [
        ("beta/v_beta_g01_c01.avi 0", r"trainlist01\.txt:2: label 0 out of range 1\.\.4"),  # 1-based
        ("beta/v_beta_g01_c01.avi two", r"trainlist01\.txt:2: expected .*<integer label>.*'beta/v_beta_g01"),
        ("beta/v_beta_g01_c01.avi 2 3", r"trainlist01\.txt:2: expected .*<integer label>"),
        ("beta/v_beta_g01_c01.avi 3", r"trainlist01\.txt:2: label 3 is 'gamma' .* folder 'beta'"),
    ],
)
def test_ucf101_bad_labels(tmp_path, line, message):
    write(tmp_path / "ann/classInd.txt", "".join(f"{i} {name}\n" for i, name in enumerate(CLASSES, 1)))
    write(tmp_path / "ann/trainlist01.txt", f"alpha/v_alpha_g01_c01.avi 1\n{line}\n")
    touch(tmp_path / "videos/alpha/v_alpha_g01_c01.avi")
    with pytest.raises(ValueError, match=message):
        ucf101(tmp_path / "videos", tmp_path / "ann")


def test_kinetics_empty_and_unknown_labels(tmp_path):
    kinetics_video(tmp_path / "v", "A")
    write(tmp_path / "empty.csv", "\n".join([HEADER, kinetics_row("alpha", "A"), kinetics_row("", "B")]))
    with pytest.raises(ValueError, match=r"empty\.csv:3: empty label"):
        kinetics_csv(tmp_path / "empty.csv", tmp_path / "v")
    # A val split naming a class the training split does not have.
    write(tmp_path / "val.csv", "\n".join([HEADER, kinetics_row("alpha", "A"), kinetics_row("omega", "B")]))
    with pytest.raises(ValueError, match=r"val\.csv:3: unknown class 'omega', not one of the 4 in the class"):
        kinetics_csv(tmp_path / "val.csv", tmp_path / "v", classes=CLASSES)


# ------------------------------------------------------------------------------------------ duplicates


def test_duplicates_keep_the_first_entry_and_report_conflicting_labels(tmp_path, caplog):
    for letter in "AB":
        kinetics_video(tmp_path / "v", letter)
    rows = [HEADER, kinetics_row("beta", "A"), kinetics_row("alpha", "B"), kinetics_row("gamma", "A")]
    write(tmp_path / "k.csv", "\n".join(rows))
    touch(tmp_path / "v/x.mp4")
    write(tmp_path / "l.txt", "x.mp4 2\nx.mp4 3\nx.mp4 2\n")
    with caplog.at_level(logging.WARNING, logger="iresvid.data.annotations"):
        csv_labels = labels(kinetics_csv(tmp_path / "k.csv", tmp_path / "v", classes=CLASSES))
        list_labels = labels(path_label_list(tmp_path / "l.txt", tmp_path / "v", classes=CLASSES))
    assert csv_labels == {"A" * 11 + "_000000_000010": 1, "B" * 11 + "_000000_000010": 0}
    assert list_labels == {"x": 2}
    kept = "duplicate entries ignored, the first of each kept (1 with a different label)"
    assert f"k.csv: 1 {kept}" in caplog.text and f"l.txt: 2 {kept}" in caplog.text
    assert "AAAAAAAAAAA_000000_000010" in caplog.text


# ---------------------------------------------------------------- class index files that disagree with data


def test_class_index_file_disagreeing_with_the_labels_or_the_model(tmp_path):
    touch(tmp_path / "v/x.mp4")
    classes_file = write(tmp_path / "classes.txt", "\n".join(CLASSES))
    write(tmp_path / "l.txt", "x.mp4 0\n")
    with pytest.raises(ValueError, match=r"differ from those of .*classes\.txt: the labels would be"):
        path_label_list(tmp_path / "l.txt", tmp_path / "v", classes_file=classes_file, classes=SORTED)
    with pytest.raises(ValueError, match=r"num_classes=3 but class-index file .*classes\.txt lists 4"):
        path_label_list(tmp_path / "l.txt", tmp_path / "v", classes_file=classes_file, num_classes=3)
    write(tmp_path / "short.txt", "alpha\nbeta\n")  # a class-index file with fewer classes than the labels
    write(tmp_path / "l3.txt", "x.mp4 3\n")
    with pytest.raises(ValueError, match=r"l3\.txt:1: label 3 out of range \(0\.\.1\)"):
        path_label_list(tmp_path / "l3.txt", tmp_path / "v", classes_file=tmp_path / "short.txt")


def test_ucf101_class_index_disagreeing_with_the_model_is_refused(tmp_path):
    write(tmp_path / "ann/classInd.txt", "".join(f"{i} {name}\n" for i, name in enumerate(CLASSES, 1)))
    write(tmp_path / "ann/testlist01.txt", "alpha/v_alpha_g01_c01.avi\n")
    touch(tmp_path / "videos/alpha/v_alpha_g01_c01.avi")
    cfg = load_config(
        None,
        [f"data.root={tmp_path}", "data.format=ucf101", "data.val_dir=videos", "data.annotation_dir=ann"],
    )
    with pytest.raises(ValueError, match=r"index 0: 'alpha' vs 'beta'.* differ from the model's class index"):
        load_annotations(cfg.data, "val", classes=["beta", "alpha", "gamma", "delta"])


# ----------------------------------------------------------- a split without some classes: no index shifts


def _folder_tree(root: Path, classes: list[str], ext: str = ".mp4") -> None:
    for name in classes:
        touch(root / name / f"{name}_0{ext}")


def folder_labels(annotations: Annotations) -> dict[str, int]:
    """Each video's folder (= its class name) -> its label."""
    return {record.video_id.split("/")[0]: record.label for record in annotations.records}


@pytest.mark.parametrize("fmt, ext", [("folder", ".mp4"), ("imagefolder", ".jpg")])
def test_folder_split_missing_a_class_keeps_every_index(tmp_path, caplog, fmt, ext):
    _folder_tree(tmp_path / "train", SORTED, ext)
    _folder_tree(tmp_path / "val", ["alpha", "delta", "gamma"], ext)  # no beta
    cfg = load_config(None, [f"data.root={tmp_path}", f"data.format={fmt}"]).data
    train = load_annotations(cfg, "train")
    assert train.classes == SORTED
    expected = {"alpha": 0, "delta": 2, "gamma": 3}
    # The hazard: the val folders alone give delta index 1 and gamma index 2.
    assert folder_labels(folder_per_class(tmp_path / "val", extensions=(ext,))) != expected
    with caplog.at_level(logging.WARNING, logger="iresvid.data.annotations"):
        given = folder_per_class(tmp_path / "val", extensions=(ext,), classes=train.classes)
    assert given.classes == SORTED and folder_labels(given) == expected
    assert "no folder for 1 of the 4 classes (their indices are kept): beta" in caplog.text
    for val in (load_annotations(cfg, "val", classes=train.classes), load_annotations(cfg, "val")):
        assert val.classes == SORTED and folder_labels(val) == expected


def test_folder_split_with_an_unknown_class_is_an_error_naming_it(tmp_path):
    _folder_tree(tmp_path / "val", ["alpha", "omega"])
    with pytest.raises(
        ValueError, match=r"class folder .*val/omega: unknown class 'omega', not one of the 4"
    ):
        folder_per_class(tmp_path / "val", classes=CLASSES)


@pytest.fixture
def kinetics_tree(tmp_path) -> Path:
    """Kinetics CSVs whose val split has no 'beta' video; the train split has all four classes."""
    train_rows = [kinetics_row(name, letter) for name, letter in zip(CLASSES, "ABCD", strict=True)]
    val_rows = [kinetics_row(name, letter, "val") for name, letter in (("alpha", "E"), ("gamma", "F"))]
    val_rows.append(kinetics_row("delta", "G", "val"))
    write(tmp_path / "annotations/train.csv", "\n".join([HEADER, *train_rows]))
    write(tmp_path / "annotations/validate.csv", "\n".join([HEADER, *val_rows]))
    write(tmp_path / "annotations/classes.txt", "\n".join(CLASSES))
    for letter in "ABCD":
        kinetics_video(tmp_path / "train", letter)
    for letter in "EFG":
        kinetics_video(tmp_path / "val", letter)
    return tmp_path


def video_labels(annotations: Annotations) -> list[int]:
    return [labels(annotations)[f"{letter * 11}_000000_000010"] for letter in "EFG"]


def test_kinetics_val_csv_missing_a_class_keeps_every_index(kinetics_tree):
    root = kinetics_tree
    val_csv = root / "annotations/validate.csv"
    # The hazard: the val CSV's own sorted names (alpha, delta, gamma) put gamma at 2 and delta at 1.
    alone = kinetics_csv(val_csv, root / "val")
    assert alone.classes == ["alpha", "delta", "gamma"] and video_labels(alone) == [0, 2, 1]
    train = kinetics_csv(root / "annotations/train.csv", root / "train")
    assert train.classes == SORTED
    assert video_labels(kinetics_csv(val_csv, root / "val", classes=train.classes)) == [0, 3, 2]
    by_file = kinetics_csv(val_csv, root / "val", classes_file=root / "annotations/classes.txt")
    assert by_file.classes == CLASSES and video_labels(by_file) == [0, 2, 3]


@pytest.mark.parametrize("classes_file", [None, "annotations/classes.txt"])
def test_kinetics_build_path_gives_val_the_training_index(kinetics_tree, classes_file):
    overrides = [f"data.root={kinetics_tree}", "data.format=kinetics"]
    if classes_file:
        overrides.append(f"data.classes_file={classes_file}")
    cfg = load_config(None, overrides).data
    train = load_annotations(cfg, "train")
    assert train.classes == (CLASSES if classes_file else SORTED)
    expected = [train.classes.index(name) for name in ("alpha", "gamma", "delta")]
    for val in (load_annotations(cfg, "val"), load_annotations(cfg, "val", classes=train.classes)):
        assert val.classes == train.classes and video_labels(val) == expected
    dataset = build_dataset(cfg, "val", mode="eval", classes=train.classes)
    assert [r.label for r in dataset.records] == expected


def test_val_without_a_readable_training_split_says_where_its_index_comes_from(kinetics_tree):
    (kinetics_tree / "annotations/train.csv").unlink()
    cfg = load_config(None, [f"data.root={kinetics_tree}", "data.format=kinetics"]).data
    with pytest.raises(
        FileNotFoundError, match=r"class index from the training split.*data\.classes_file.*train"
    ):
        load_annotations(cfg, "val")
    assert video_labels(load_annotations(cfg, "val", classes=SORTED)) == [0, 3, 2]


def test_trainer_validates_with_the_training_index(kinetics_tree, tmp_path):
    """The trainer's own wiring: its validation set is labelled by the training split's classes."""
    cfg = load_config(
        None,
        [
            f"data.root={kinetics_tree}",
            "data.format=kinetics",
            "data.batch_size=2",
            "data.num_workers=0",
            "model.name=iresnet3d18",
            "model.width_scale=0.0625",
            "train.device=cpu",
            f"train.output_dir={tmp_path / 'run'}",
            "train.progress=false",
        ],
    )
    trainer = Trainer(cfg)
    assert trainer.classes == SORTED
    assert video_labels(Annotations(trainer.val.dataset.records, [], [], "", "")) == [0, 3, 2]


def test_path_label_list_val_missing_the_last_class_keeps_the_class_count(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        touch(tmp_path / "videos" / name)
    write(tmp_path / "train.txt", "a.mp4 0\nb.mp4 3\n")
    write(tmp_path / "val.txt", "a.mp4 0\nb.mp4 2\n")  # no label 3
    cfg = load_config(
        None,
        [
            f"data.root={tmp_path}",
            "data.format=list",
            "data.train_annotations=train.txt",
            "data.val_annotations=val.txt",
            "data.train_dir=videos",
            "data.val_dir=videos",
        ],
    ).data
    train = load_annotations(cfg, "train")
    assert train.classes == ["0", "1", "2", "3"]
    # Integer labels cannot shift, but the val list alone would claim only 3 classes...
    assert path_label_list(tmp_path / "val.txt", tmp_path / "videos").classes == ["0", "1", "2"]
    # ...and the build path, given the training classes or not, keeps all 4 (no false "classes differ").
    for val in (load_annotations(cfg, "val"), load_annotations(cfg, "val", classes=train.classes)):
        assert val.classes == train.classes and labels(val) == {"a": 0, "b": 2}


def test_ucf101_testlist_missing_classes_keeps_every_index(tmp_path):
    write(tmp_path / "ann/classInd.txt", "".join(f"{i} {name}\n" for i, name in enumerate(CLASSES, 1)))
    write(
        tmp_path / "ann/trainlist01.txt",
        "".join(f"{c}/v_{c}_g01_c01.avi {i}\n" for i, c in enumerate(CLASSES, 1)),
    )
    write(tmp_path / "ann/testlist01.txt", "delta/v_delta_g02_c01.avi\nbeta/v_beta_g02_c01.avi\n")
    for name in CLASSES:
        touch(tmp_path / f"videos/{name}/v_{name}_g01_c01.avi")
    for name in ("delta", "beta"):
        touch(tmp_path / f"videos/{name}/v_{name}_g02_c01.avi")
    cfg = load_config(
        None,
        [f"data.root={tmp_path}", "data.format=ucf101", "data.train_dir=videos", "data.val_dir=videos",
         "data.annotation_dir=ann"],
    ).data  # fmt: skip
    train = load_annotations(cfg, "train")
    for val in (load_annotations(cfg, "val"), load_annotations(cfg, "val", classes=train.classes)):
        assert val.classes == CLASSES and labels(val) == {"v_delta_g02_c01": 3, "v_beta_g02_c01": 1}
