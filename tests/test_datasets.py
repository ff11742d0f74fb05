"""Datasets and batches: exact frames, reproducible samples, and bad videos that never stop an epoch."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from iresvid.config import load_config
from iresvid.data.annotations import Annotations, VideoRecord, folder_per_class
from iresvid.data.build import build_dataset, load_annotations
from iresvid.data.datasets import ClipDataset, DatasetUnreadableError, sample_generator
from iresvid.data.encode import write_video
from iresvid.data.loader import ShardedSampler, build_loader, collate_clips
from iresvid.data.sampling import random_clip, uniform_clips
from iresvid.data.transforms import CropFlipSampler, EvalViews, GpuAugment

NUM_FRAMES, STEP = 40, 6


def frame_ids(clip: torch.Tensor) -> list[int]:
    """The index each frame of a (C, T, H, W) clip encodes in its flat intensity."""
    return [round((float(frame.float().mean()) - 8) / STEP) for frame in clip.unbind(1)]


def indexed_video(path: Path, height: int = 48, width: int = 64, n: int = NUM_FRAMES) -> Path:
    frames = np.zeros((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i] = 8 + STEP * i
    return write_video(path, frames, fps=25)


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory) -> Path:
    """A folder-per-class tree: 3 classes × 2 videos, landscape and portrait, MP4 and AVI."""
    root = tmp_path_factory.mktemp("videos")
    second = {"alpha": ("avi", 64, 48), "beta": ("mp4", 40, 72), "gamma": ("avi", 64, 48)}
    for name, (ext, height, width) in second.items():
        indexed_video(root / name / f"{name}_0.mp4")
        indexed_video(root / name / f"{name}_1.{ext}", height=height, width=width)
    return root


def dataset(annotations: Annotations, **kwargs) -> ClipDataset:
    options = dict(num_frames=4, frame_stride=3, short_side=32, backend="pyav", seed=7)
    options.update(kwargs)
    return ClipDataset(annotations, **options)


def test_training_clips_are_the_sampled_frames(video_tree):
    ds = dataset(folder_per_class(video_tree))
    for index in range(len(ds)):
        sample = ds[(index, 3)]
        expected = random_clip(NUM_FRAMES, 4, 3, generator=sample_generator(7, 3, index))
        assert frame_ids(sample["input"]) == expected
        assert sample["label"] == ds.records[index].label and sample["index"] == index
        assert min(sample["input"].shape[-2:]) == 32 and sample["valid"] and sample["failures"] == []


def test_samples_depend_only_on_seed_epoch_and_index(video_tree):
    annotations = folder_per_class(video_tree)
    a, b = dataset(annotations), dataset(annotations)
    assert torch.equal(a[(2, 5)]["input"], b[(2, 5)]["input"])
    epochs = {tuple(frame_ids(a[(2, e)]["input"])) for e in range(6)}
    assert len(epochs) > 1  # a new epoch draws new clips


def counting_open(monkeypatch, rereads: int = 0) -> dict[str, int]:
    """Count the dataset's `open_video` and ``get_frames`` calls; readers report ``rereads``."""
    import iresvid.data.datasets as datasets

    real_open, calls = datasets.open_video, {"open": 0, "get_frames": 0}

    def opened(path, backend="decord", **kwargs):
        reader = real_open(path, backend, **kwargs)
        real_get = reader.get_frames
        calls["open"] += 1

        def get_frames(indices):
            calls["get_frames"] += 1
            return real_get(indices)

        reader.get_frames, reader.rereads = get_frames, rereads
        return reader

    monkeypatch.setattr(datasets, "open_video", opened)
    return calls


def test_eval_items_are_whole_videos_read_in_one_pass(video_tree, monkeypatch):
    ds = dataset(folder_per_class(video_tree), mode="eval", num_clips=3)
    calls = counting_open(monkeypatch)
    assert len(ds) == ds.num_videos
    for index in range(len(ds)):
        sample = ds[index]
        assert sample["video_index"] == sample["index"] == index and sample["valid"]
        assert sample["clip_valid"] == [True] * 3 and sample["input"].shape[:3] == (3, 3, 4)
        for clip in range(3):
            assert frame_ids(sample["input"][clip]) == uniform_clips(NUM_FRAMES, 4, 3, 3)[clip]
    assert calls == {"open": ds.num_videos, "get_frames": ds.num_videos}  # not once per clip


def test_one_pass_clips_equal_clips_read_one_by_one(video_tree):
    """The one-pass read changes how often a file is opened, never a pixel: each clip read on its own (the
    former evaluation item) is the same tensor."""
    ds = dataset(folder_per_class(video_tree), mode="eval", num_clips=3)
    for index, record in enumerate(ds.records):
        clips = ds[index]["input"]
        for clip in range(3):
            [alone], _ = ds._read_clips(record, [clip])
            assert torch.equal(clips[clip], alone)


def test_eval_batches_are_clip_rows_of_whole_videos(video_tree):
    ds = dataset(folder_per_class(video_tree), mode="eval", num_clips=3)
    batches = list(build_loader(ds, batch_size=2, shuffle=False))
    assert [len(b["label"]) for b in batches] == [6, 6, 6]  # 2 videos × 3 clips per batch
    rows = [divmod(i, 3) for i in range(3 * ds.num_videos)]
    assert [
        tuple(r) for b in batches for r in torch.stack([b["video_index"], b["clip_index"]], 1).tolist()
    ] == rows
    for b in batches:
        labels = [ds.records[v].label for v in b["video_index"].tolist()]
        assert b["label"].tolist() == labels and b["valid"].all() and b["failures"] == []


def test_reader_rereads_are_counted_per_sample_and_summed_per_batch(video_tree, monkeypatch):
    annotations = folder_per_class(video_tree)
    counting_open(monkeypatch, rereads=2)
    train = dataset(annotations)
    assert train[(0, 0)]["rereads"] == 2
    assert collate_clips([train[(i, 0)] for i in range(3)])["rereads"] == 6
    evaluation = dataset(annotations, mode="eval", num_clips=3)
    assert evaluation[0]["rereads"] == 2  # one reader for all three clips
    assert collate_clips([evaluation[i] for i in range(2)])["rereads"] == 4
    monkeypatch.undo()
    assert dataset(annotations)[(0, 0)]["rereads"] == 0  # a clean constant-rate file redoes no read


def test_a_video_failing_in_one_pass_keeps_the_clips_it_can_give(video_tree, monkeypatch):
    """A file whose later frames cannot be decoded (e.g. truncated): the clips before the damage are still
    evaluated, the others are invalid rows, each reported."""
    ds = dataset(folder_per_class(video_tree), mode="eval", num_clips=3)
    read = ClipDataset._read_clips

    def damaged(self, record, clip_indices):
        if record.path == ds.records[1].path and 2 in clip_indices:
            raise OSError("truncated")
        return read(self, record, clip_indices)

    monkeypatch.setattr(ClipDataset, "_read_clips", damaged)
    sample = ds[1]
    assert sample["valid"] and sample["clip_valid"] == [True, True, False]
    assert sample["failures"] == [(str(ds.records[1].path), "OSError: truncated")]
    assert frame_ids(sample["input"][1]) == uniform_clips(NUM_FRAMES, 4, 3, 3)[1]
    assert not sample["input"][2].any()
    batch = collate_clips([ds[0], sample])
    assert batch["valid"].tolist() == [True] * 5 + [False] and batch["clip_index"].tolist() == [0, 1, 2] * 2


def _faulty(tree: Path, tmp_path: Path, fault: str) -> tuple[Annotations, Path]:
    """The good tree plus one bad video listed as class 'zbad' (its own label, so a swap would show)."""
    good = folder_per_class(tree)
    bad = tmp_path / f"bad video {fault}.mp4"
    if fault == "zero_byte":
        bad.write_bytes(b"")
    elif fault == "truncated":
        whole = indexed_video(tmp_path / "whole.mp4").read_bytes()
        bad.write_bytes(whole[: len(whole) // 3])
    elif fault == "undecodable":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    elif fault == "missing":
        pass  # listed, never written
    elif fault == "directory":
        bad.mkdir()
    records = [*good.records, VideoRecord(bad, len(good.classes), "bad")]
    return Annotations(records, [*good.classes, "zbad"], [], "test listing", "test"), bad


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("fault", ["zero_byte", "truncated", "undecodable", "missing", "directory"])
def test_a_bad_video_is_replaced_with_its_own_label_and_reported(video_tree, tmp_path, fault, backend):
    annotations, bad = _faulty(video_tree, tmp_path, fault)
    ds = dataset(annotations, backend=backend)
    bad_index = len(annotations.records) - 1
    sample = ds[(bad_index, 0)]
    assert sample["index"] != bad_index
    assert sample["label"] == annotations.records[sample["index"]].label != annotations.classes.index("zbad")
    assert len(sample["failures"]) == 1
    path, reason = sample["failures"][0]
    assert path == str(bad) and reason
    # the replacement is reproducible
    assert ds[(bad_index, 0)]["index"] == sample["index"]


def test_unreadable_permissions_are_a_skipped_sample(video_tree, tmp_path, monkeypatch):
    annotations = folder_per_class(video_tree)
    victim = annotations.records[0].path
    import iresvid.data.datasets as datasets

    real_open = datasets.open_video

    def guarded_open(path, backend="decord", **kwargs):
        # As root (CI containers) chmod 000 does not stop reads, so the OS error is injected here.
        if Path(path) == victim:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, backend, **kwargs)

    monkeypatch.setattr(datasets, "open_video", guarded_open)
    if os.geteuid() != 0:  # where permissions do apply, also check the real thing
        victim.chmod(0)
        monkeypatch.setattr(datasets, "open_video", real_open)
    try:
        sample = dataset(annotations)[(0, 0)]
    finally:
        victim.chmod(0o644)
    assert sample["index"] != 0 and sample["failures"][0][0] == str(victim)
    assert "Permission" in sample["failures"][0][1]


def test_a_dataset_of_only_bad_videos_fails_clearly(tmp_path):
    records = [VideoRecord(tmp_path / f"v{i}.mp4", 0, f"v{i}") for i in range(3)]
    for record in records:
        record.path.write_bytes(b"not a video")
    ds = dataset(Annotations(records, ["a"], [], "broken listing", "test"), max_retries=4)
    with pytest.raises(DatasetUnreadableError, match=r"5 videos in a row failed .*broken listing.*v\d\.mp4"):
        ds[(0, 0)]


def test_evaluation_never_replaces_a_bad_video(video_tree, tmp_path):
    annotations, bad = _faulty(video_tree, tmp_path, "truncated")
    ds = dataset(annotations, mode="eval", num_clips=2)
    sample = ds[len(ds) - 1]
    assert not sample["valid"] and sample["video_index"] == len(annotations.records) - 1
    assert sample["failures"][0][0] == str(bad)


def test_an_empty_dataset_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no videos"):
        dataset(Annotations([], ["a"], [tmp_path / "x.mp4"], "empty listing", "test"))


# -------------------------------------------------------------------------------------------- batches


def test_collate_pads_and_the_device_crop_reads_only_each_sample_frame(video_tree):
    sampler = CropFlipSampler(24, jitter_sizes=(24, 32), flip_prob=0.5)
    ds = dataset(folder_per_class(video_tree), crop_sampler=sampler)
    augment = GpuAugment(sampler)
    samples = [ds[(i, 0)] for i in range(len(ds))]
    batch = collate_clips(samples)
    sizes = [tuple(s["input"].shape[-2:]) for s in samples]
    assert len(set(sizes)) > 1  # landscape and portrait in one batch
    assert batch["input"].shape[-2:] == (max(h for h, _ in sizes), max(w for _, w in sizes))
    assert [tuple(s) for s in batch["size"].tolist()] == sizes
    boxes = batch["augment"].boxes
    assert ((boxes[:, 0] + boxes[:, 2]) <= batch["size"][:, 0]).all()
    assert ((boxes[:, 1] + boxes[:, 3]) <= batch["size"][:, 1]).all()
    out = augment.apply(batch["input"], batch["augment"])
    for i, sample in enumerate(samples):  # the padded batch gives each clip's own reference result
        expected = augment.apply_reference(sample["input"], batch["augment"][i])
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)


def test_eval_views_of_a_padded_batch_match_per_sample_views(video_tree):
    ds = dataset(folder_per_class(video_tree), mode="eval", num_clips=1)
    samples = [ds[i] for i in range(len(ds))]
    batch = collate_clips(samples)
    views = EvalViews(32, 3, crop_size=28)
    out = views(batch["input"], sizes=batch["size"])
    expected = torch.cat([views(s["input"]) for s in samples])  # an item: (num_clips=1, C, T, H, W)
    torch.testing.assert_close(out, expected)


def test_sharded_sampler_splits_a_global_batch_exactly():
    single = list(ShardedSampler(10, shuffle=True, seed=3))
    ranks = [list(ShardedSampler(10, shuffle=True, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    for step in range(2):  # global batch 4 = 2 per process
        one = {i for i, _ in single[4 * step : 4 * step + 4]}
        two = {i for r in ranks for i, _ in r[2 * step : 2 * step + 2]}
        assert one == two
    evaluation = [list(ShardedSampler(5, shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(i for r in evaluation for i, _ in r) == [0, 1, 2, 3, 4]  # no padding, no duplicate
    resumed = ShardedSampler(10, shuffle=True, seed=3)
    resumed.set_epoch(0, start=4)
    assert list(resumed) == single[4:]
    other = ShardedSampler(10, shuffle=True, seed=3)
    other.set_epoch(1)
    assert [i for i, _ in other] != [i for i, _ in single] and all(e == 1 for _, e in other)


def test_worker_processes_give_the_same_batches(video_tree):
    ds = dataset(folder_per_class(video_tree), crop_sampler=CropFlipSampler(24, jitter_sizes=(24, 32)))
    batches = [
        list(build_loader(ds, batch_size=2, shuffle=True, seed=1, num_workers=workers, drop_last=True))
        for workers in (0, 2)
    ]
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["label"], b["label"])
        assert torch.equal(a["augment"].boxes, b["augment"].boxes)


def test_the_training_loader_runs_under_spawn_and_its_dataset_holds_no_tensor_or_module(video_tree):
    """Under spawn and forkserver (Python 3.14's default) the dataset is pickled into every worker: a CUDA
    tensor in it (the device augmentation's buffers) would open a CUDA context per worker.  It holds
    only host-side state, and spawned workers give the batches the main process gives."""
    ds = dataset(folder_per_class(video_tree), crop_sampler=CropFlipSampler(24, jitter_sizes=(24, 32)))
    pickled_types = []

    class Recorder(pickle.Pickler):
        def reducer_override(self, obj):
            pickled_types.append(type(obj))
            return NotImplemented

    Recorder(io.BytesIO()).dump(ds)
    assert CropFlipSampler in pickled_types  # the walk saw the sampler...
    assert not [t for t in pickled_types if issubclass(t, torch.Tensor | torch.nn.Module)]  # ...and no tensor
    batches = [
        list(
            build_loader(
                ds, batch_size=2, shuffle=True, seed=1, num_workers=n, start_method=m, drop_last=True
            )
        )
        for n, m in ((0, None), (1, "spawn"))
    ]
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["label"], b["label"])
        assert torch.equal(a["augment"].boxes, b["augment"].boxes)


# -------------------------------------------------------------------------------- config → dataset


def test_build_dataset_reads_the_configured_layout(video_tree):
    cfg = load_config(
        None,
        [
            f"data.root={video_tree.parent}",
            "data.format=folder",
            f"data.train_dir={video_tree.name}",
            f"data.val_dir={video_tree.name}",
        ],
    )
    train = build_dataset(cfg.data, "train", mode="train")
    assert train.classes == ["alpha", "beta", "gamma"] and len(train) == 6
    # A given class index (a checkpoint's) is matched to the folders by name, whatever its order.
    permuted = load_annotations(cfg.data, "val", classes=["alpha", "gamma", "beta"])
    labels = {r.video_id.split("/")[0]: r.label for r in permuted.records}
    assert labels == {"alpha": 0, "gamma": 1, "beta": 2}
    with pytest.raises(ValueError, match=r"class folder .*gamma: unknown class 'gamma'"):
        load_annotations(cfg.data, "val", classes=["alpha", "beta"])
    missing = load_config(None, ["data.root=/nonexistent/dataset", "data.format=folder"])
    with pytest.raises(FileNotFoundError, match="data.root.*/nonexistent/dataset"):
        build_dataset(missing.data, "train", mode="train")


def test_image_evaluation_items_collate_with_an_unreadable_image(tmp_path):
    """2D evaluation: an item is the image (num_clips=1); an unreadable one is an invalid row of the same
    rank, so it batches with readable ones instead of breaking the collate."""
    from torchvision.io import write_png

    from iresvid.data.datasets import ImageDataset

    records = []
    for i, (height, width) in enumerate([(40, 60), (50, 40)]):
        path = tmp_path / f"img{i}.png"
        write_png(torch.full((3, height, width), 10 * i, dtype=torch.uint8), str(path))
        records.append(VideoRecord(path, i, path.stem))
    records.append(VideoRecord(tmp_path / "missing.png", 1, "missing"))
    ds = ImageDataset(Annotations(records, ["a", "b"], [], "images", "test"), mode="eval", short_side=32)
    batch = collate_clips([ds[i] for i in range(len(ds))])
    assert batch["input"].shape == (3, 3, 40, 48) and batch["valid"].tolist() == [True, True, False]
    assert batch["size"].tolist() == [[32, 48], [40, 32], [1, 1]] and batch["label"].tolist() == [0, 1, 1]
    assert [path for path, _ in batch["failures"]] == [str(tmp_path / "missing.png")]
