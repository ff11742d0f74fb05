"""Feature extraction on real encoded videos, checked by value against the model run by hand."""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_tools import tool_main

from iresvid.config import ConfigError, load_config, to_dict
from iresvid.data.build import build_dataset
from iresvid.data.datasets import ClipDataset
from iresvid.data.encode import write_video
from iresvid.data.transforms import EvalViews
from iresvid.engine.build import build_model, load_trained
from iresvid.engine.features import run_extract

CLASSES = ["a", "b"]
# Sorted as the folder reader lists them; b1_broken is not a video and must be left out, not replaced.
VIDEOS = ["a/a0.mp4", "a/a1.mp4", "b/b0.mp4", "b/b1_broken.mp4", "b/b2.mp4"]
READ = [v for v in VIDEOS if "broken" not in v]
NUM_CLIPS, NUM_CROPS = 2, 3


def data_of(checkpoint: Path) -> list[str]:
    """The dataset settings: a checkpoint's config gives only its model and clip, never its data paths."""
    root = checkpoint.parent
    return [
        f"data.root={root}",
        "data.format=folder",
        "data.batch_size=6",
        "data.num_workers=0",
        "train.device=cpu",
        "train.progress=false",
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder-per-class dataset of 32×56 videos (three distinct crops) and a trainer checkpoint."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for name in VIDEOS:
        path = root / "val" / name
        if "broken" in name:
            path.write_bytes(b"not a video")
        else:
            write_video(path, rng.integers(0, 256, (12, 32, 56, 3), dtype=np.uint8))
    cfg = load_config(
        None,
        [
            f"data.root={root}",
            "data.format=folder",
            "data.num_frames=4",
            "data.frame_stride=2",
            "data.test_size=32",
            f"data.num_clips={NUM_CLIPS}",
            f"data.num_crops={NUM_CROPS}",
            "data.batch_size=6",
            "data.num_workers=0",
            "model.name=iresnet3d18",
            "model.width_scale=0.0625",
            "train.device=cpu",
            "train.progress=false",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg, len(CLASSES))
    checkpoint = root / "best.pth"
    torch.save({"model": model.state_dict(), "classes": CLASSES, "config": to_dict(cfg)}, checkpoint)
    return root, checkpoint


def _by_hand(checkpoint: Path, video: int, clips: Sequence[int] = range(NUM_CLIPS)) -> torch.Tensor:
    """The pooled feature of dataset video ``video``: its ``clips`` × crops through the model, averaged."""
    model, cfg, classes = load_trained(checkpoint, overrides=data_of(checkpoint))
    dataset = build_dataset(cfg.data, "val", mode="eval", classes=classes, num_clips=NUM_CLIPS)
    views = EvalViews(32, NUM_CROPS, mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"])
    x = views(dataset[video]["input"][list(clips)])  # an item holds all of the video's clips
    assert x.shape[0] == len(clips) * NUM_CROPS  # (clips * crops, C, T, 32, 32)
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True).mean(0)


def test_pooled_npy_with_sidecar_matches_the_model_by_hand(setup, tmp_path):
    root, checkpoint = setup
    out = tmp_path / "feats.npy"
    extract = tool_main("extract_features")
    assert (
        extract(["--checkpoint", str(checkpoint), "--split", "val", "--out", str(out), *data_of(checkpoint)])
        == 0
    )

    features = np.load(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    width = load_trained(checkpoint)[0].num_features
    assert features.shape == (len(READ), width) and features.dtype == np.float32
    assert meta["shape"] == [len(READ), width]
    assert meta["level"] == "pooled" and meta["layout"] == "(num_videos, channels)"
    assert meta["paths"] == [str(root / "val" / v) for v in READ]
    assert meta["video_ids"] == [v.removesuffix(".mp4") for v in READ]
    assert meta["labels"] == [0, 0, 1, 1] and meta["classes"] == CLASSES
    assert meta["num_views"] == [NUM_CLIPS * NUM_CROPS] * len(READ) and meta["incomplete"] == []
    assert [f["path"] for f in meta["failed"]] == [str(root / "val" / "b" / "b1_broken.mp4")]
    assert meta["failed"][0]["reason"]
    assert meta["split"] == "val" and meta["num_clips"] == NUM_CLIPS and meta["num_crops"] == NUM_CROPS

    # b2 is dataset video 4 but row 3: the unreadable video before it is skipped, not replaced.
    for row, video in ((0, 0), (3, 4)):
        expected = _by_hand(checkpoint, video)
        torch.testing.assert_close(torch.from_numpy(features[row]), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(features[0], features[3])


def test_stage_features_agree_with_pooled_and_with_the_spatial_maps(setup, tmp_path):
    _, checkpoint = setup
    pooled, _ = run_extract(tmp_path / "pooled.pt", checkpoint=checkpoint, overrides=data_of(checkpoint))
    stages, _ = run_extract(
        tmp_path / "stages.pt",
        checkpoint=checkpoint,
        overrides=data_of(checkpoint),
        level="stages",
        out_indices=[2, 4],
    )
    _, files = run_extract(
        tmp_path / "maps.pt",
        checkpoint=checkpoint,
        overrides=data_of(checkpoint),
        level="stages",
        out_indices=[2, 4],
        keep_spatial=True,
    )

    saved = torch.load(tmp_path / "stages.pt", weights_only=True)
    assert saved["labels"].tolist() == [0, 0, 1, 1] and saved["columns"] == stages.columns
    torch.testing.assert_close(saved["features"], stages.features)
    start, end = stages.columns["stage4"]
    assert stages.columns["stage2"] == [0, start] and end == stages.features.shape[1]
    # Without a final norm, the classifier's input is the last stage's map averaged over (T, H, W).
    torch.testing.assert_close(stages.features[:, start:end], pooled.features, rtol=1e-5, atol=1e-6)

    maps = torch.load(files[0], weights_only=True)
    assert set(maps["features"]) == {"stage2", "stage4"} and maps["paths"] == stages.paths
    assert maps["layout"].startswith("per stage (clips read, num_crops, C, T, H, W)")
    assert maps["clips"] == [[row, clip] for row in range(len(READ)) for clip in range(NUM_CLIPS)]
    for name, (lo, hi) in stages.columns.items():
        per_clip = maps["features"][name]
        assert per_clip.shape[:3] == (len(READ) * NUM_CLIPS, NUM_CROPS, hi - lo) and per_clip.ndim == 6
        per_video = per_clip.flatten(3).mean(-1).view(len(READ), NUM_CLIPS * NUM_CROPS, -1).mean(1)
        torch.testing.assert_close(per_video, stages.features[:, lo:hi], rtol=1e-5, atol=1e-6)


def test_spatial_maps_refused_when_too_large_or_not_pt(setup, tmp_path):
    _, checkpoint = setup
    with pytest.raises(ConfigError, match="needs .* GiB"):
        run_extract(
            tmp_path / "maps.pt",
            checkpoint=checkpoint,
            overrides=data_of(checkpoint),
            level="stages",
            keep_spatial=True,
            max_bytes=1000,
        )
    assert not (tmp_path / "maps.pt").exists()
    args = f"--checkpoint {checkpoint} --level stages --keep-spatial --out {tmp_path / 'm.npy'}".split()
    assert tool_main("extract_features")(args) == 2 and not (tmp_path / "m.npy").exists()


def test_a_video_read_in_part_is_averaged_over_its_readable_views_and_listed(setup, tmp_path, monkeypatch):
    _, checkpoint = setup
    read = ClipDataset._read_clips

    def flaky(self, record, clip_indices):  # a1's second clip cannot be decoded, so neither can both at once
        if record.path.name == "a1.mp4" and 1 in clip_indices:
            raise OSError("truncated")
        return read(self, record, clip_indices)

    monkeypatch.setattr(ClipDataset, "_read_clips", flaky)
    result, _ = run_extract(tmp_path / "f.pt", checkpoint=checkpoint, overrides=data_of(checkpoint))
    assert result.num_views == [6, 3, 6, 6]
    assert result.incomplete == [{"path": result.paths[1], "views": 3, "reason": "OSError: truncated"}]
    monkeypatch.undo()
    torch.testing.assert_close(result.features[1], _by_hand(checkpoint, 1, clips=[0]), rtol=1e-5, atol=1e-6)
