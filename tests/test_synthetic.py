"""Synthetic motion dataset: the real formats parse, output is deterministic, only motion separates pairs."""

from __future__ import annotations

import re

import av
import numpy as np
import pytest

from iresvid.data.annotations import kinetics_csv, path_label_list, ucf101
from iresvid.data.synthetic import (
    CLASS_MOTIONS,
    DEMO_CLASSES,
    make_demo_data,
    render_clip,
    ucf101_groups,
    video_rngs,
)

# (forward, backward): the second is the first played backwards.
PAIRS = [
    ("move right", "move left"),
    ("move down", "move up"),
    ("rotate clockwise", "rotate counterclockwise"),
    ("expand", "shrink"),
]


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def assert_same_frames_in_order(decoded: np.ndarray, rendered: np.ndarray) -> None:
    """Equal up to compression (4:2:0 chroma and the added noise cost a few levels), frame for frame: each
    decoded frame is nearest to the rendered frame of the same index, so no frame is shifted or lost."""
    assert decoded.shape == rendered.shape
    error = np.abs(decoded[:, None].astype(np.float32) - rendered[None]).mean(axis=(2, 3, 4))
    assert (error.argmin(axis=1) == np.arange(len(decoded))).all()
    assert error.diagonal().mean() < 10


def test_pairs_are_exact_time_reversals():
    assert {c for pair in PAIRS for c in pair} == set(DEMO_CLASSES) == set(CLASS_MOTIONS)
    for forward, backward in PAIRS:
        for seed in range(3):
            a = render_clip(forward, np.random.default_rng(seed), 12, (32, 48))
            b = render_clip(backward, np.random.default_rng(seed), 12, (32, 48))
            assert a.shape == (12, 32, 48, 3) and a.dtype == np.uint8
            # Same draws, opposite order: the SET of frames is identical, only the order tells them apart.
            np.testing.assert_array_equal(a, b[::-1])
            # ...and the motion is there to see.
            assert np.abs(np.diff(a.astype(np.int16), axis=0)).mean() > 2


def horizontal_motion(clip: np.ndarray) -> float:
    """> 0 for rightward motion: consecutive frames match better after shifting right than left."""
    gray = clip.astype(np.float32).mean(axis=3)
    score = 0.0
    for a, b in zip(gray[:-1], gray[1:], strict=True):
        for k in (1, 2, 3):
            score += np.abs(b[:, :-k] - a[:, k:]).mean() - np.abs(b[:, k:] - a[:, :-k]).mean()
    return score


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Fit class means on the even samples, score the odd ones."""
    train, test = slice(0, None, 2), slice(1, None, 2)
    centroids = np.stack([features[train][labels[train] == c].mean(0) for c in (0, 1)])
    distances = ((features[test][:, None] - centroids[None]) ** 2).sum(-1)
    return float((distances.argmin(1) == labels[test]).mean())


@pytest.mark.parametrize("pair, transpose", [(PAIRS[0], False), (PAIRS[1], True)])
def test_order_invariant_features_at_chance_while_motion_separates(pair, transpose):
    n = 60
    clips, labels = [], []
    for label, name in enumerate(pair):
        for i in range(n):
            clip = render_clip(name, np.random.default_rng(1000 * label + i), 16, (32, 32))
            clips.append(clip.transpose(0, 2, 1, 3) if transpose else clip)
            labels.append(label)
    labels = np.array(labels)
    # An order-invariant model (per-frame features averaged over time) sees the same distribution for both:
    # a nearest-centroid classifier on the time-averaged image is at chance.
    mean_images = np.stack([c.astype(np.float32).mean(0).ravel() for c in clips])
    assert 0.3 <= nearest_centroid_accuracy(mean_images, labels) <= 0.7
    # Frame order separates them, even after 2x temporal subsampling.
    predicted = np.array([horizontal_motion(c[::2]) < 0 for c in clips])  # 1 = leftward / upward
    assert (predicted == labels).mean() >= 0.95


def test_ucf101_layout_parses_with_real_parser(tmp_path):
    data = make_demo_data(
        tmp_path, layout="ucf101", videos_per_class=4, num_frames=8, size=(32, 32), classes=PAIRS[0]
    )
    assert data.classes == ["MoveLeft", "MoveRight"]
    # 4 videos per class: one clip per group g01..g04, split k tests group k.
    assert ucf101_groups(4) == (1, 4, 1)
    assert data.counts == {"train1": 6, "test1": 2, "train2": 6, "test2": 2, "train3": 6, "test3": 2}
    for k in (1, 2, 3):
        groups = {}
        for subset in ("train", "test"):
            ann = ucf101(data.video_root, tmp_path / "annotations", split=k, subset=subset)
            assert len(ann.records) == data.counts[f"{subset}{k}"] and not ann.missing
            assert ann.classes == data.classes
            assert all(ann.classes[r.label] == r.path.parent.name for r in ann.records)
            groups[subset] = {re.search(r"_g(\d+)_", r.video_id).group(1) for r in ann.records}
        assert groups["test"] == {f"{k:02d}"} and not groups["train"] & groups["test"]
    # Index 1 (g02) has B-frames; the decoded AVI holds the rendered frames, up to compression.
    rendered = render_clip("move left", video_rngs(0, "move left", 1)[0], 8, (32, 32))
    decoded = decode(data.video_root / "MoveLeft/v_MoveLeft_g02_c01.avi")
    assert_same_frames_in_order(decoded, rendered)


def test_kinetics_layout_parses_with_real_parsers(tmp_path):
    data = make_demo_data(tmp_path, layout="kinetics", videos_per_class=4, num_frames=8, size=(32, 48))
    assert data.classes == sorted(DEMO_CLASSES)
    assert data.counts == {"train": 24, "val": 8}
    files = data.annotation_files
    train = kinetics_csv(files["train_csv"], data.video_root / "train", split="train")
    val = kinetics_csv(files["val_csv"], data.video_root / "val", classes_file=files["classes"])
    for split, ann in (("train", train), ("val", val)):
        assert len(ann.records) == data.counts[split] and not ann.missing
        assert ann.classes == data.classes
        assert all(ann.classes[r.label] == r.path.parent.name for r in ann.records)
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}_\d{6}_\d{6}", r.video_id) for r in ann.records)
        # The path-label list (paths with spaces) names the same videos with the same labels.
        listed = path_label_list(files[f"{split}_list"], data.video_root, classes_file=files["classes"])
        assert [(r.path, r.label) for r in listed.records] == [(r.path, r.label) for r in ann.records]
    # The last video of a class is val and, with index 3, has B-frames.
    rendered = render_clip("shrink", video_rngs(0, "shrink", 3)[0], 8, (32, 48))
    decoded = decode(val.records[-1].path)
    assert_same_frames_in_order(decoded, rendered)


def test_deterministic_and_independent_of_generation_order(tmp_path):
    kwargs = dict(layout="ucf101", videos_per_class=3, num_frames=6, size=(32, 32))
    one = make_demo_data(tmp_path / "one", classes=["move up"], **kwargs)
    both = make_demo_data(tmp_path / "both", classes=["shrink", "move up"], **kwargs)
    again = make_demo_data(tmp_path / "again", classes=["shrink", "move up"], **kwargs)
    other = make_demo_data(tmp_path / "other", classes=["shrink", "move up"], seed=1, **kwargs)
    for name, path in both.annotation_files.items():
        assert path.read_bytes() == again.annotation_files[name].read_bytes()
    for video in sorted(both.video_root.rglob("*.avi")):
        rel = video.relative_to(both.video_root)
        frames = decode(video)
        np.testing.assert_array_equal(frames, decode(again.video_root / rel))
        assert not np.array_equal(frames, decode(other.video_root / rel))
        if rel.parts[0] == "MoveUp":  # the same (seed, class, index) whatever else is generated
            np.testing.assert_array_equal(frames, decode(one.video_root / rel))


def test_ucf101_groups_rule():
    assert ucf101_groups(24) == (1, 24, 7)  # UCF101's own rule: split k tests g(7k-6)..g(7k)
    assert ucf101_groups(100) == (4, 25, 7)
    for videos in range(3, 300):
        per_group, groups, block = ucf101_groups(videos)
        assert groups <= 25 and (groups - 1) * per_group < videos <= groups * per_group
        assert block >= 1 and 3 * block <= groups  # every split has test groups and keeps training groups


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        make_demo_data(tmp_path, layout="hmdb")
    with pytest.raises(ValueError, match="classes"):
        make_demo_data(tmp_path, classes=["jump"])
    with pytest.raises(ValueError, match="even"):
        make_demo_data(tmp_path, size=(33, 32))
    with pytest.raises(ValueError, match="videos_per_class >= 3"):
        make_demo_data(tmp_path, videos_per_class=2)
    with pytest.raises(ValueError, match="unknown demo class"):
        render_clip("jump", np.random.default_rng(0), 4, (16, 16))
