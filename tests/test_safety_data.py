"""Data-side run safety: the demo writer never replaces a file, prepare never writes through a link or out of
its folder, a label too long for a folder name is handled, and two spellings of one class name are refused.

Each test reproduces one reported case; the victim files live outside the folders written into, and every
test checks them unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from iresvid.cli import main
from iresvid.data.annotations import folder_per_class, kinetics_csv, path_label_list, read_class_index, ucf101
from iresvid.data.encode import write_video
from iresvid.data.manifest import MANIFEST_NAME, read_manifest
from iresvid.data.prepare import STATE_DIR, PrepareError, list_videos, prepare
from iresvid.data.synthetic import make_demo_data
from iresvid.files import WriteError

HEADER = "label,youtube_id,time_start,time_end,split"
TINY = dict(videos_per_class=3, num_frames=8, size=(32, 32), classes=["move up", "shrink"])
KINETICS = {
    "train_annotations": "annotations/train.csv",
    "val_annotations": "annotations/val.csv",
    "train_dir": "videos/train",
    "val_dir": "videos/val",
}
NFC, NFD = unicodedata.normalize("NFC", "Café"), unicodedata.normalize("NFD", "Café")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def victim(tmp_path: Path) -> Path:
    """A file outside every folder written into: a planted link points here."""
    return write(tmp_path / "elsewhere" / "precious.txt", "keep me\n")


# ------------------------------------------------------------------------------------------- demo data


def test_make_demo_data_into_a_dataset_root_replaces_nothing_and_says_which_file(tmp_path, capsys):
    root = tmp_path / "kinetics400"
    real = write(root / "annotations" / "train.csv", f"{HEADER}\nabseiling,abc,0,10,train\n")
    with pytest.raises(WriteError, match=r"train\.csv: it exists already; make-demo-data never replaces"):
        make_demo_data(root, layout="kinetics", **TINY)
    assert real.read_text() == f"{HEADER}\nabseiling,abc,0,10,train\n"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "annotations",
        "annotations/train.csv",
    ]  # refused before any video was written
    # The command says it in one line, exit 2.
    assert main(["make-demo-data", str(root), "--layout", "kinetics"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write ") and "train.csv: it exists already" in err
    assert len(err.splitlines()) == 1 and real.read_text().startswith(HEADER)


def test_make_demo_data_a_second_time_into_the_same_folder_is_refused(tmp_path):
    first = make_demo_data(tmp_path / "demo", **TINY)
    before = {p: p.read_bytes() for p in first.annotation_files.values()}
    with pytest.raises(WriteError, match="more of the demo's files"):
        make_demo_data(tmp_path / "demo", seed=1, **TINY)
    assert {p: p.read_bytes() for p in before} == before


def test_make_demo_data_writes_next_to_other_files_without_touching_them(tmp_path):
    root = tmp_path / "shared"
    other = write(root / "annotations" / "notes.txt", "mine\n")
    data = make_demo_data(root, layout="ucf101", **TINY)
    assert other.read_text() == "mine\n" and len(data.annotation_files) == 7


@pytest.mark.parametrize(
    "plant",
    [
        "annotations/classInd.txt",
        "annotations",
        "videos",
        "videos/MoveUp",
        "videos/MoveUp/v_MoveUp_g01_c01.avi",
    ],
)
def test_make_demo_data_never_writes_through_a_planted_symlink(tmp_path, plant):
    precious = victim(tmp_path)
    root = tmp_path / "demo"
    link = root / plant
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(
        precious if "." in link.name else precious.parent, target_is_directory="." not in link.name
    )
    with pytest.raises(WriteError, match=re.escape(str(link))):
        make_demo_data(root, layout="ucf101", **TINY)
    assert precious.read_text() == "keep me\n"
    assert sorted(p.name for p in precious.parent.iterdir()) == ["precious.txt"]
    assert link.is_symlink()  # left as it was
    assert [p for p in root.rglob("*.avi") if p != link] == []  # refused before any video was written


def test_make_demo_data_refuses_a_symlinked_root(tmp_path):
    precious = victim(tmp_path)
    (tmp_path / "demo").symlink_to(precious.parent, target_is_directory=True)
    with pytest.raises(WriteError, match="symbolic link"):
        make_demo_data(tmp_path / "demo", **TINY)
    assert sorted(p.name for p in precious.parent.iterdir()) == ["precious.txt"]


def test_write_video_replaces_a_planted_link_and_can_refuse_an_existing_file(tmp_path):
    precious = victim(tmp_path)
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    link = tmp_path / "out.mp4"
    link.symlink_to(precious)
    write_video(link, frames)  # PyAV's own av.open(path, "w") would have written into precious.txt
    assert precious.read_text() == "keep me\n" and not link.is_symlink() and link.stat().st_size > 0
    with pytest.raises(WriteError, match="it exists already"):
        write_video(link, frames, replace=False)
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    with pytest.raises(WriteError, match="it exists already"):  # a dangling link too
        write_video(tmp_path / "dangling.mp4", frames, replace=False)
    assert not (tmp_path / "nowhere.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temporary file left


# ------------------------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety") / "kinetics"
    make_demo_data(
        root, layout="kinetics", videos_per_class=2, num_frames=8, size=(32, 32), classes=["expand"]
    )
    return root


def run_prepare(src: Path, dst: Path, **options):
    return prepare(
        src, dst, "kinetics", short_side=32, min_frames=4, workers=0, progress=False, **KINETICS, **options
    )


def test_prepare_never_writes_through_links_planted_in_its_folder(source, tmp_path):
    precious = victim(tmp_path)
    dst = tmp_path / "prepared"
    video = next(
        p.relative_to(source / "videos").as_posix() for p in (source / "videos/train").rglob("*.mp4")
    )
    planted = {
        dst / "videos" / video: precious,  # an output video
        dst / "annotations" / "train.csv": precious,
        dst / STATE_DIR / "tmp-0000-of-0001": precious.parent,  # the temporary folder
    }
    for link, target in planted.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=target.is_dir())
    report = run_prepare(source, dst)
    assert report.counts == {"ok": 2}
    assert precious.read_text() == "keep me\n"
    assert sorted(p.name for p in precious.parent.iterdir()) == ["precious.txt"]
    for link in (dst / "videos" / video, dst / "annotations" / "train.csv"):
        assert not link.is_symlink() and link.is_file(), link  # replaced by the real file, not followed
    assert f"videos/{video}" in read_manifest(dst / MANIFEST_NAME)


@pytest.mark.parametrize("name", [MANIFEST_NAME, f"{STATE_DIR}/shard-0000-of-0001.jsonl"])
def test_prepare_refuses_a_symlinked_manifest_journal_or_class_folder(source, tmp_path, name):
    """A manifest or journal link could name any file: neither read (its lines would be trusted) nor
    appended to."""
    precious = victim(tmp_path)
    dst = tmp_path / "prepared"
    link = dst / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(precious)
    with pytest.raises(WriteError, match=re.escape(f"{link}: it is a symbolic link")):
        run_prepare(source, dst)
    assert precious.read_text() == "keep me\n"
    link.unlink()
    (dst / "videos").mkdir()
    (dst / "videos" / "train").symlink_to(precious.parent, target_is_directory=True)
    with pytest.raises(WriteError, match="train: it is a symbolic link"):
        run_prepare(source, dst)
    assert sorted(p.name for p in precious.parent.iterdir()) == ["precious.txt"]


def test_prepare_refuses_a_symlinked_destination_before_encoding(source, tmp_path, capsys):
    precious = victim(tmp_path)
    dst = tmp_path / "prepared"
    dst.symlink_to(precious.parent, target_is_directory=True)
    with pytest.raises(WriteError, match="symbolic link"):
        run_prepare(source, dst)
    assert sorted(p.name for p in precious.parent.iterdir()) == ["precious.txt"]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in KINETICS.items()]
    assert main(["prepare", str(source), str(dst), "--format", "kinetics", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"error: cannot write {dst}: it is a symbolic link (to {precious.parent}); name the real folder"
    )


def test_prepare_writes_nothing_outside_its_folder_for_a_path_that_climbs_out(tmp_path):
    src = tmp_path / "src"
    outside = tmp_path / "outside" / "v.mp4"
    write_video(outside, np.zeros((8, 16, 16, 3), np.uint8))
    write(src / "list.txt", "../outside/v.mp4 0\n")
    with pytest.raises(PrepareError, match=r"\.\./outside/v\.mp4 is listed but not under the source folder"):
        list_videos(src, "list", train_annotations="list.txt", val_annotations=None, train_dir=".")


def test_prepare_refuses_an_absolute_annotation_name_that_would_overwrite_the_source(source, tmp_path):
    listed = source / "annotations" / "train.csv"
    before = listed.read_bytes()
    options = {**KINETICS, "train_annotations": str(listed)}
    with pytest.raises(PrepareError, match="must be named relative to the source folder"):
        prepare(source, tmp_path / "prepared", "kinetics", workers=0, progress=False, **options)
    assert listed.read_bytes() == before


# ------------------------------------------------------------------------------------------- names


def test_a_kinetics_label_too_long_for_a_folder_name_is_looked_for_flat(tmp_path, caplog):
    long_label = "a very long label " * 20  # 360 bytes: no file system has such a folder
    root = tmp_path / "videos"
    write(root / "long_000001_000011.mp4", "")  # flat, as a download can only have put it
    write(root / "short" / "abc_000001_000011.mp4", "")
    csv_path = write(
        tmp_path / "train.csv", f'{HEADER}\n"{long_label.strip()}",long,1,11,train\nshort,abc,1,11,train\n'
    )
    with caplog.at_level(logging.WARNING):
        annotations = kinetics_csv(csv_path, root)
    assert [(r.path, annotations.classes[r.label]) for r in annotations.records] == [
        (root / "long_000001_000011.mp4", long_label.strip()),
        (root / "short" / "abc_000001_000011.mp4", "short"),
    ]
    assert f"{csv_path}:2 (359 bytes)" in caplog.text and "looked for directly in" in caplog.text


def test_a_missing_video_with_a_too_long_label_is_reported_missing(tmp_path):
    write(tmp_path / "videos" / "short" / "abc_000001_000011.mp4", "")
    csv_path = write(tmp_path / "train.csv", f"{HEADER}\n{'x' * 300},gone,1,11,train\nshort,abc,1,11,train\n")
    annotations = kinetics_csv(csv_path, tmp_path / "videos")
    assert [r.video_id for r in annotations.missing] == ["gone_000001_000011"]


def test_kinetics_labels_in_two_unicode_normalisations_are_refused_naming_both_lines(tmp_path):
    assert NFC != NFD
    csv_path = write(
        tmp_path / "train.csv", f"{HEADER}\n{NFC},a,1,11,train\nrun,b,1,11,train\n{NFD},c,1,11,train\n"
    )
    (tmp_path / "videos").mkdir()
    with pytest.raises(ValueError) as error:
        kinetics_csv(csv_path, tmp_path / "videos")
    message = str(error.value)
    assert ascii(NFC) in message and ascii(NFD) in message  # 'Caf\xe9' and 'Cafe\u0301': told apart
    assert f"{csv_path}:2" in message and f"{csv_path}:4" in message
    assert re.search(r"two Unicode normalisations \((NFC and NFD|NFD and NFC)\)", message)


def test_kinetics_labels_differing_only_in_case_are_refused(tmp_path):
    csv_path = write(tmp_path / "train.csv", f"{HEADER}\nshrink,a,1,11,train\nShrink,b,1,11,train\n")
    (tmp_path / "videos").mkdir()
    where = re.escape(str(csv_path))
    with pytest.raises(
        ValueError, match=rf"'Shrink' \({where}:3\) and 'shrink' \({where}:2\) differ only in case"
    ):
        kinetics_csv(csv_path, tmp_path / "videos")


def test_a_label_spelled_otherwise_than_the_class_file_says_how(tmp_path):
    classes = write(tmp_path / "classes.txt", f"{NFC}\nrun\n")
    csv_path = write(tmp_path / "val.csv", f"{HEADER}\n{NFD},a,1,11,val\n")
    (tmp_path / "videos").mkdir()
    with pytest.raises(ValueError, match="in another Unicode normalisation: NFD here, NFC there"):
        kinetics_csv(csv_path, tmp_path / "videos", classes_file=classes)
    write(csv_path, f"{HEADER}\nRUN,a,1,11,val\n")
    with pytest.raises(ValueError, match=r"unknown class 'RUN'.*differs from 'run' only in case"):
        kinetics_csv(csv_path, tmp_path / "videos", classes_file=classes)


def test_class_folders_differing_only_in_case_are_refused_naming_both(tmp_path):
    write(tmp_path / "Shrink" / "a.mp4", "")
    write(tmp_path / "shrink" / "b.mp4", "")
    if len(list(tmp_path.iterdir())) < 2:
        pytest.skip("a case-insensitive file system holds one folder for both")
    with pytest.raises(ValueError) as error:
        folder_per_class(tmp_path)
    assert f"class folder {tmp_path / 'Shrink'}" in str(error.value)
    assert f"class folder {tmp_path / 'shrink'}" in str(error.value)


@pytest.mark.parametrize(
    "text, name, message",
    [
        (f"{NFC}\n{NFD}\n", "classes.txt", "two Unicode normalisations"),
        ("1 MoveUp\n2 Moveup\n", "classInd.txt", "differ only in case"),
        (json.dumps({NFC: 0, NFD: 1}), "classes.json", "two Unicode normalisations"),
    ],
)
def test_a_class_file_with_two_spellings_of_one_name_is_refused(tmp_path, text, name, message):
    path = write(tmp_path / name, text)
    with pytest.raises(ValueError, match=message) as error:
        read_class_index(path)
    assert f"{path}, class 0" in str(error.value) and f"{path}, class 1" in str(error.value)


def test_ucf101_with_a_class_index_holding_a_case_variant_is_refused(tmp_path):
    write(tmp_path / "annotations" / "classInd.txt", "1 ApplyEyeMakeup\n2 Applyeyemakeup\n")
    write(tmp_path / "annotations" / "trainlist01.txt", "ApplyEyeMakeup/v_a.avi 1\n")
    write(tmp_path / "videos" / "ApplyEyeMakeup" / "v_a.avi", "")
    with pytest.raises(ValueError, match="differ only in case"):
        ucf101(tmp_path / "videos", tmp_path / "annotations")


def test_a_class_list_given_with_two_spellings_of_one_name_is_refused(tmp_path):
    write(tmp_path / "a.mp4", "")
    listing = write(tmp_path / "list.txt", "a.mp4 0\n")
    with pytest.raises(ValueError, match="two Unicode normalisations"):
        path_label_list(listing, classes=[NFC, NFD])
