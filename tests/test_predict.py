"""Prediction on videos: the probabilities tools/test.py averages, per video and per window, from every model
source (training checkpoint, TorchScript export, bare state dict), and the CLI around it."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from cli_tools import tool_main
from test_engine import DEMO_CONFIG, DEMO_LAYOUT, tiny

import iresvid
from iresvid.cli import main as cli_main
from iresvid.config import load_config
from iresvid.data.build import load_annotations
from iresvid.data.encode import write_video
from iresvid.data.synthetic import make_demo_data
from iresvid.data.video_io import open_video
from iresvid.engine.predict import Failure, PredictError, find_videos, parse_views, window_bounds
from iresvid.engine.testing import run_test
from iresvid.engine.trainer import Trainer

FPS = 25.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny 3D checkpoint trained one epoch on the synthetic set, its val videos and their test.py
    probabilities (2 clips × 3 crops)."""
    base = tmp_path_factory.mktemp("predict")
    root = base / "ucf101"
    make_demo_data(root, layout="ucf101", videos_per_class=4, num_frames=16, size=(32, 32))
    out = base / "run"
    overrides = tiny(root, out, "schedule.epochs=1", "train.eval_every=0", "data.num_crops=3")
    Trainer(load_config(DEMO_CONFIG, overrides)).fit()
    checkpoint = out / "last.pth"
    data = [f"data.root={root}", *DEMO_LAYOUT, "train.progress=false"]
    result, cfg, _ = run_test(checkpoint, overrides=data)
    videos = [r.path for r in load_annotations(cfg.data, "val", classes=None).records]
    return checkpoint, videos, result.probabilities, root


def test_predictor_probabilities_are_tools_test_per_video_probabilities(trained):
    checkpoint, videos, expected, _ = trained
    predictor = iresvid.Predictor(checkpoint, device="cpu")
    assert (predictor.num_clips, predictor.num_crops) == (2, 3)  # the checkpoint's test views
    results = list(predictor.predict_many(videos, topk=3, probabilities=True))
    got = torch.tensor([r.probabilities for r in results], dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # one at a time (other batches, other chunks) gives the same, with the classes named by the checkpoint
    single = predictor.predict(videos[0], topk=3, probabilities=True)
    torch.testing.assert_close(torch.tensor(single.probabilities).double(), expected[0], atol=1e-6, rtol=0)
    classes = torch.load(checkpoint, weights_only=True)["classes"]
    top = expected[0].topk(3)
    assert [name for name, _ in single.topk] == [classes[i] for i in top.indices]
    assert [p for _, p in single.topk] == pytest.approx(top.values.tolist(), abs=1e-6)
    json.dumps(dataclasses.asdict(single))  # plain data

    # decoded frames give what the file gives: uint8 (T, H, W, C) through the same views
    with open_video(videos[0]) as reader:
        frames = reader.get_frames(range(reader.num_frames))
    from_tensor = predictor.predict(frames, probabilities=True)
    torch.testing.assert_close(
        torch.tensor(from_tensor.probabilities).double(), expected[0], atol=1e-6, rtol=0
    )
    assert from_tensor.num_views == 6


def test_windows_cover_the_video_and_decode_window_by_window(trained, tmp_path):
    checkpoint, videos, _, _ = trained
    long_video = tmp_path / "long.mp4"
    frames = np.random.default_rng(0).integers(0, 256, (110, 32, 40, 3), dtype=np.uint8)
    write_video(long_video, frames, fps=FPS)
    predictor = iresvid.Predictor(checkpoint, device="cpu", views="1x1", num_workers=0)
    windows = predictor.predict_windows(long_video, window=1.0, stride=0.5, topk=2)
    duration = 110 / FPS
    assert windows[0].start == 0 and windows[-1].end == pytest.approx(duration)
    assert [w.start for w in windows] == pytest.approx([0.5 * k for k in range(len(windows))])
    assert all(len(w.topk) == 2 for w in windows)
    assert windows[-2].end < duration  # the last window is the first to reach the end

    # each window is its own item: the loader never holds more than a batch of clips
    import iresvid.engine.predict as predict_module

    read: list[list[int]] = []
    real_decode = predict_module._Spans._decode

    def decode(self, record, pick):
        read.append([i for clip in pick(110) for i in clip])
        return real_decode(self, record, pick)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict_module._Spans, "_decode", decode)
        predictor.predict_windows(long_video, window=2.0, topk=1)
    assert len(read) == 1 + len(window_bounds(duration, 2.0))
    # one clip (4 frames, stride 2) at the centre of each window: frames 0-49, then 50-99, then 100-109
    assert read[1:] == [[21, 23, 25, 27], [71, 73, 75, 77], [101, 103, 105, 107]]


def test_window_bounds_and_views_and_inputs(tmp_path):
    assert window_bounds(4.4, 2.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 4.4)]
    assert window_bounds(4.0, 2.0) == [(0.0, 2.0), (2.0, 4.0)]
    assert window_bounds(1.0, 2.0) == [(0.0, 1.0)]
    with pytest.raises(PredictError, match="unseen"):
        window_bounds(4.0, 1.0, 2.0)
    assert parse_views("10x3") == (10, 3) and parse_views((2, 1)) == (2, 1)
    with pytest.raises(PredictError, match="CLIPSxCROPS"):
        parse_views("ten")
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("d/a.mp4", "d/e/b.AVI", "d/notes.md"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text("# videos\nd/a.mp4\n\nmissing.mp4\n")
    found = find_videos([tmp_path / "d", listing])
    assert found == [
        tmp_path / "d/a.mp4",
        tmp_path / "d/e/b.AVI",
        tmp_path / "d/a.mp4",
        tmp_path / "missing.mp4",
    ]


def test_cli_predict_writes_jsonl_and_csv_and_counts_failures(trained, tmp_path, capsys):
    checkpoint, videos, expected, _ = trained
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(str(v) for v in videos[:2]) + "\n")
    out = tmp_path / "pred.jsonl"
    args = ["predict", str(checkpoint), str(listing), str(broken), "--device", "cpu", "--topk", "2"]
    code = cli_main([*args, "--window", "0.3", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "1 of 3 videos could not be read" in captured.err and "broken.mp4" in captured.err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == [str(v) for v in videos[:2]] + [str(broken)]
    assert "error" in lines[2]
    first = lines[0]
    assert len(first["topk"]) == 2 and first["topk"][0][1] == pytest.approx(
        expected[0].max().item(), abs=1e-6
    )
    assert first["windows"][0]["start"] == 0 and first["windows"][-1]["end"] == pytest.approx(
        first["duration"]
    )

    csv_out = tmp_path / "pred.csv"
    code = tool_main("predict")([str(checkpoint), str(videos[0]), "--device", "cpu", "--out", str(csv_out)])
    assert code == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert len(rows) == 1 and rows[0]["path"] == str(videos[0]) and float(rows[0]["prob_1"]) > 0

    assert cli_main(["predict", str(tmp_path / "nope.pth"), str(videos[0])]) == 2
    assert "not found" in capsys.readouterr().err


def test_torchscript_export_and_bare_state_dict_predict_the_same(trained, tmp_path):
    checkpoint, videos, expected, _ = trained
    export = tmp_path / "export"
    assert (
        tool_main("export")(
            ["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(export)]
        )
        == 0
    )
    scripted = iresvid.Predictor(export / "model.pt", device="cpu")
    got = scripted.predict(videos[1], probabilities=True)
    torch.testing.assert_close(torch.tensor(got.probabilities).double(), expected[1], atol=1e-5, rtol=0)

    state = torch.load(checkpoint, weights_only=True)
    weights = tmp_path / "weights.pth"
    assert not state.get("ema")  # no EMA in this run: the raw weights are what the checkpoint predicts with
    torch.save(state["model"], weights)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(state["classes"]) + "\n")
    cfg = state["config"]
    keys = ("width_scale", "inflate", "stem_temporal_kernel")
    overrides = [f"model.{k}={cfg['model'][k]}" for k in keys if cfg["model"].get(k) is not None]
    data = ("num_frames", "frame_stride", "test_size", "test_crop_size", "num_clips", "num_crops")
    overrides += [f"data.{k}={cfg['data'][k]}" for k in data]
    bare = iresvid.Predictor(
        weights, device="cpu", model=cfg["model"]["name"], classes=classes, overrides=overrides
    )
    got = bare.predict(videos[1], probabilities=True)
    torch.testing.assert_close(torch.tensor(got.probabilities).double(), expected[1], atol=1e-6, rtol=0)

    # the same sources through the command line: an export folder, and a state dict with its architecture
    out = tmp_path / "p.jsonl"
    assert cli_main(["predict", str(export), str(videos[1]), "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["topk"][0][1] == pytest.approx(expected[1].max().item(), abs=1e-5)
    settings = [arg for o in overrides for arg in ("--set", o)]
    command = ["predict", str(weights), str(videos[1]), "--model", cfg["model"]["name"], "--classes"]
    assert cli_main([*command, str(classes), *settings, "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["topk"][0][1] == pytest.approx(expected[1].max().item(), abs=1e-6)

    with pytest.raises(PredictError, match="--model NAME --classes FILE"):
        iresvid.Predictor(weights, device="cpu")
    assert isinstance(next(iter(bare.predict_many([tmp_path / "missing.mp4"]))), Failure)
