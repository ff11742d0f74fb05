"""Annotation parsers on small hand-written trees: the real formats, their quirks, the failure messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from iresvid.data.annotations import (
    folder_per_class,
    kinetics_csv,
    path_label_list,
    read_class_index,
    ucf101,
)

HEADER = "label,youtube_id,time_start,time_end,split\n"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write(path: Path, text: str, *, bom: bool = False, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_kinetics_flat_sorted_classes_and_spans(tmp_path):
    csv_file = write(
        tmp_path / "train.csv",
        HEADER + "zumba,AAAAAAAAAAA,14,24,train\nabseiling,BBBBBBBBBBB,0,10,train\n",
    )
    touch(tmp_path / "videos/AAAAAAAAAAA_000014_000024.mp4")
    touch(tmp_path / "videos/BBBBBBBBBBB_000000_000010.mkv")
    ann = kinetics_csv(csv_file, tmp_path / "videos")
    assert ann.classes == ["abseiling", "zumba"]
    assert [(r.video_id, r.label, r.start, r.end) for r in ann.records] == [
        ("AAAAAAAAAAA_000014_000024", 1, 14.0, 24.0),
        ("BBBBBBBBBBB_000000_000010", 0, 0.0, 10.0),
    ]
    assert ann.records[1].path.suffix == ".mkv"
    assert ann.summary().startswith(f"2 entries, 0 missing, 2 classes from {csv_file}")
    assert "sorted label names" in ann.summary()


def test_kinetics_class_folders_quoted_commas_is_cc_and_split_filter(tmp_path):
    csv_file = write(
        tmp_path / "k.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        '"passing American football (in game)",AAAAAAAAAAA,1,11,train,0\n'
        '"hugging, baby",BBBBBBBBBBB,2,12,train,1\n'
        "abseiling,CCCCCCCCCCC,3,13,val,0\n",
    )
    # One class folder keeps its spaces, the other uses the common spaces -> underscores variant.
    touch(tmp_path / "v/passing American football (in game)/AAAAAAAAAAA_000001_000011.mp4")
    touch(tmp_path / "v/hugging,_baby/BBBBBBBBBBB_000002_000012.mp4")
    ann = kinetics_csv(csv_file, tmp_path / "v", split="train")
    # Classes come from the whole CSV, so train and val filtered from one file share the index.
    assert ann.classes == ["abseiling", "hugging, baby", "passing American football (in game)"]
    assert [r.label for r in ann.records] == [2, 1]
    assert not ann.missing


def test_kinetics_classes_file_formats_and_unknown_class(tmp_path):
    touch(tmp_path / "v/AAAAAAAAAAA_000001_000011.mp4")
    csv_file = write(tmp_path / "k.csv", HEADER + "b c,AAAAAAAAAAA,1,11,train\n")
    as_text = write(tmp_path / "classes.txt", "z\nb c\n")
    # pytorchvideo's kinetics_classnames.json keeps the CSV quotes in its keys.
    as_json = write(tmp_path / "classes.json", json.dumps({'"z"': 0, '"b c"': 1}))
    for classes_file in (as_text, as_json):
        ann = kinetics_csv(csv_file, tmp_path / "v", classes_file=classes_file)
        assert ann.classes == ["z", "b c"] and ann.records[0].label == 1
        assert str(classes_file) in ann.summary()
    assert kinetics_csv(csv_file, tmp_path / "v", classes=["b c", "q"]).records[0].label == 0
    assert kinetics_csv(csv_file, tmp_path / "v", classes_file=as_text, classes=["z", "b c"]).classes == [
        "z",
        "b c",
    ]
    with pytest.raises(ValueError, match="differ from those of .*classes.txt"):
        kinetics_csv(csv_file, tmp_path / "v", classes_file=as_text, classes=["b c", "z"])
    write(tmp_path / "other.txt", "z\ny\n")
    with pytest.raises(ValueError, match=r"k\.csv:2: unknown class 'b c'"):
        kinetics_csv(csv_file, tmp_path / "v", classes_file=tmp_path / "other.txt")


def test_kinetics_unlabeled_test_csv(tmp_path):
    csv_file = write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nAAAAAAAAAAA,1,11,test\n")
    touch(tmp_path / "v/AAAAAAAAAAA_000001_000011.mp4")
    with pytest.raises(ValueError, match="no label column.*require_labels=False"):
        kinetics_csv(csv_file, tmp_path / "v")
    ann = kinetics_csv(csv_file, tmp_path / "v", require_labels=False, split="test")
    assert [r.label for r in ann.records] == [-1] and ann.classes == []


def test_kinetics_robustness_crlf_bom_blanks_duplicates_missing(tmp_path, caplog):
    csv_file = write(
        tmp_path / "k.csv",
        HEADER + "a ,AAAAAAAAAAA,1,11,train  \n\n"
        "b,BBBBBBBBBBB,2,12,train\n"
        "a,AAAAAAAAAAA,1,11,train\n"
        "b,CCCCCCCCCCC,3,13,train\n"
        "b,DDDDDDDDDDD,4,14,train\n\n",
        bom=True,
        crlf=True,
    )
    touch(tmp_path / "v/a/AAAAAAAAAAA_000001_000011.mp4")
    touch(tmp_path / "v/b/BBBBBBBBBBB_000002_000012.mp4")
    with caplog.at_level(logging.WARNING, logger="iresvid.data.annotations"):
        ann = kinetics_csv(csv_file, tmp_path / "v")
    assert ann.classes == ["a", "b"]
    assert [r.video_id for r in ann.records] == ["AAAAAAAAAAA_000001_000011", "BBBBBBBBBBB_000002_000012"]
    # Missing videos are reported where they should be: in their class folder.
    assert [r.path for r in ann.missing] == [
        tmp_path / "v/b/CCCCCCCCCCC_000003_000013.mp4",
        tmp_path / "v/b/DDDDDDDDDDD_000004_000014.mp4",
    ]
    assert "1 duplicate entries" in caplog.text
    assert "2 of 4 listed videos are missing" in caplog.text
    assert "CCCCCCCCCCC_000003_000013.mp4" in caplog.text
    assert ann.summary().startswith("2 entries, 2 missing, 2 classes")


def test_kinetics_errors(tmp_path):
    touch(tmp_path / "v/AAAAAAAAAAA_000001_000011.mp4")
    csv_file = write(tmp_path / "k.csv", HEADER + "a,ZZZZZZZZZZZ,1,11,train\n")
    with pytest.raises(FileNotFoundError, match=r"none of the 1 videos listed in .*k\.csv exist under .*v"):
        kinetics_csv(csv_file, tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        kinetics_csv(csv_file, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no rows with split 'val'; splits present: \\['train'\\]"):
        kinetics_csv(csv_file, tmp_path / "v", split="val")
    write(tmp_path / "bad.csv", HEADER + "a,AAAAAAAAAAA,1.5,11,train\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: time '1\.5'"):
        kinetics_csv(tmp_path / "bad.csv", tmp_path / "v")
    write(tmp_path / "short.csv", HEADER + "a,AAAAAAAAAAA,1,11\n")
    with pytest.raises(ValueError, match=r"short\.csv:2: 4 fields"):
        kinetics_csv(tmp_path / "short.csv", tmp_path / "v")
    write(tmp_path / "nohead.csv", "a,AAAAAAAAAAA,1,11,train\n")
    with pytest.raises(ValueError, match="lacks"):
        kinetics_csv(tmp_path / "nohead.csv", tmp_path / "v")


def test_path_label_list_spaces_roots_duplicates_and_names(tmp_path, caplog):
    touch(tmp_path / "data/train/move left/a b.mp4")
    touch(tmp_path / "data/x.mp4")
    absolute = touch(tmp_path / "elsewhere/y.mp4")
    listing = write(
        tmp_path / "ann/train.txt",
        f"train/move left/a b.mp4 1 \nx.mp4\t0\n\n{absolute} 2\nx.mp4 0\n",
        bom=True,
        crlf=True,
    )
    with caplog.at_level(logging.WARNING, logger="iresvid.data.annotations"):
        ann = path_label_list(listing, tmp_path / "data")
    assert "1 duplicate entries ignored" in caplog.text
    assert [(r.path, r.label) for r in ann.records] == [
        (tmp_path / "data/train/move left/a b.mp4", 1),
        (tmp_path / "data/x.mp4", 0),
        (absolute, 2),
    ]
    assert ann.records[0].video_id == "train/move left/a b"
    assert ann.classes == ["0", "1", "2"]
    write(tmp_path / "ann/classes.txt", "left\nright\nup\n")
    named = path_label_list(listing, tmp_path / "data", classes_file=tmp_path / "ann/classes.txt")
    assert named.classes == ["left", "right", "up"]
    assert path_label_list(listing, tmp_path / "data", num_classes=5).classes == ["0", "1", "2", "3", "4"]
    # Without video_root, relative paths are resolved against the list file's folder.
    touch(tmp_path / "ann/x.mp4")
    assert path_label_list(listing).records[0].path == tmp_path / "ann/x.mp4"


def test_path_label_list_errors(tmp_path):
    touch(tmp_path / "a.mp4")
    write(tmp_path / "l.txt", "a.mp4 0\na.mp4 3\n")
    with pytest.raises(ValueError, match=r"l\.txt:2: label 3 out of range \(0\.\.2\)"):
        path_label_list(tmp_path / "l.txt", num_classes=3)
    write(tmp_path / "c.txt", "p\nq\n")
    with pytest.raises(ValueError, match=r"l\.txt:2: label 3 out of range \(0\.\.1\)"):
        path_label_list(tmp_path / "l.txt", classes_file=tmp_path / "c.txt")
    write(tmp_path / "n.txt", "a.mp4 0\na.mp4 left\n")
    with pytest.raises(ValueError, match=r"n\.txt:2: expected '<path> <integer label>'"):
        path_label_list(tmp_path / "n.txt")
    write(tmp_path / "neg.txt", "a.mp4 -1\n")
    with pytest.raises(ValueError, match=r"neg\.txt:1: label -1 out of range"):
        path_label_list(tmp_path / "neg.txt")


@pytest.fixture
def ucf_tree(tmp_path):
    # The official files have CRLF line ends; classInd is 1-based.
    write(tmp_path / "ann/classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n", crlf=True)
    write(
        tmp_path / "ann/trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2 \n\n"
        "YoYo/v_YoYo_g09_c02.avi 3\n",
        crlf=True,
    )
    write(
        tmp_path / "ann/testlist01.txt",
        "YoYo/v_YoYo_g01_c01.avi\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
    )
    for name in (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "YoYo/v_YoYo_g09_c02.avi",
        "YoYo/v_YoYo_g01_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
    ):
        touch(tmp_path / "UCF-101" / name)
    return tmp_path


def test_ucf101_train_and_test(ucf_tree):
    train = ucf101(ucf_tree / "UCF-101", ucf_tree / "ann", split=1, subset="train")
    assert train.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert [(r.video_id, r.label) for r in train.records] == [
        ("v_ApplyEyeMakeup_g08_c01", 0),
        ("v_HandStandPushups_g08_c01", 1),
        ("v_YoYo_g09_c02", 2),
    ]
    test = ucf101(ucf_tree / "UCF-101", ucf_tree / "ann", subset="test")
    assert [r.label for r in test.records] == [2, 0]
    assert "classInd.txt" in test.summary()


def test_ucf101_label_folder_mismatch_and_range(ucf_tree):
    write(ucf_tree / "ann/trainlist02.txt", "YoYo/v_YoYo_g09_c02.avi 3\nYoYo/v_YoYo_g01_c01.avi 1\n")
    with pytest.raises(ValueError, match=r"trainlist02\.txt:2: label 1 is 'ApplyEyeMakeup'.*folder 'YoYo'"):
        ucf101(ucf_tree / "UCF-101", ucf_tree / "ann", split=2)
    write(ucf_tree / "ann/trainlist03.txt", "YoYo/v_YoYo_g09_c02.avi 4\n")
    with pytest.raises(ValueError, match=r"trainlist03\.txt:1: label 4 out of range 1\.\.3"):
        ucf101(ucf_tree / "UCF-101", ucf_tree / "ann", split=3)
    write(ucf_tree / "ann/testlist02.txt", "Juggling/v_Juggling_g01_c01.avi\n")
    with pytest.raises(ValueError, match=r"testlist02\.txt:1: unknown class 'Juggling'"):
        ucf101(ucf_tree / "UCF-101", ucf_tree / "ann", split=2, subset="test")
    with pytest.raises(ValueError, match="split must be"):
        ucf101(ucf_tree / "UCF-101", ucf_tree / "ann", split=4)


def test_folder_per_class(tmp_path, caplog):
    touch(tmp_path / "b/2.mp4")
    touch(tmp_path / "b/1.AVI")
    touch(tmp_path / "b/notes.txt")
    touch(tmp_path / "a/x.webm")
    (tmp_path / "c").mkdir()
    touch(tmp_path / ".cache/z.mp4")
    with caplog.at_level(logging.WARNING, logger="iresvid.data.annotations"):
        ann = folder_per_class(tmp_path)
    assert ann.classes == ["a", "b", "c"]
    assert [(r.video_id, r.label) for r in ann.records] == [("a/x", 0), ("b/1", 1), ("b/2", 1)]
    assert "1 class folders hold no videos: c" in caplog.text
    with pytest.raises(FileNotFoundError):
        folder_per_class(tmp_path / "c")


def test_read_class_index_formats(tmp_path):
    assert read_class_index(write(tmp_path / "a.txt", "0 x\n1 y z\n")) == ["x", "y z"]
    assert read_class_index(write(tmp_path / "b.txt", "2 y\n1 x\n", crlf=True, bom=True)) == ["x", "y"]
    assert read_class_index(write(tmp_path / "c.txt", "x\n\ny z \n")) == ["x", "y z"]
    assert read_class_index(write(tmp_path / "d.json", '["x", "y"]')) == ["x", "y"]
    with pytest.raises(ValueError, match="without gaps"):
        read_class_index(write(tmp_path / "e.txt", "1 x\n3 y\n"))
    with pytest.raises(ValueError, match="more than once"):
        read_class_index(write(tmp_path / "f.txt", "x\ny\nx\n"))
    with pytest.raises(ValueError, match="each once"):
        read_class_index(write(tmp_path / "g.json", '{"x": 0, "y": 2}'))
