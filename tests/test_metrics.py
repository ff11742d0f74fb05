"""Accuracy metrics on hand-made examples, process merging, reports (CSV, PNG) and the metric logs."""

import csv
import json
import math

import matplotlib.image
import numpy as np
import pytest
import torch

from iresvid.engine.metrics import (
    AccuracyMeter,
    ClassAccuracy,
    MetricsLogger,
    most_confused_classes,
    plot_confusion_matrix,
    plot_curves,
    topk_correct,
    write_per_class_csv,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 6 samples, 4 classes; class 3 is predicted once but never a target.
SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.0, 0.0],  # target 0, predicted 0
        [0.8, 0.2, 0.0, 0.0],  # target 0, predicted 0
        [0.3, 0.6, 0.1, 0.0],  # target 0, predicted 1, second best
        [0.1, 0.7, 0.2, 0.0],  # target 1, predicted 1
        [0.1, 0.2, 0.0, 0.7],  # target 1, predicted 3, second best
        [0.0, 0.1, 0.8, 0.1],  # target 2, predicted 2
    ]
)
TARGETS = torch.tensor([0, 0, 0, 1, 1, 2])
NAMES = ["walk", "run", "jump", "swim"]


def _meter(ks=(1, 2, 5)) -> AccuracyMeter:
    meter = AccuracyMeter(4, ks=ks)
    meter.update(SCORES[:4], TARGETS[:4])  # in two batches: accumulation is part of what is tested
    meter.update(SCORES[4:], TARGETS[4:])
    return meter


def _from_pairs(num_classes: int, pairs: list[tuple[int, int]]) -> AccuracyMeter:
    """A meter that saw one sample per (target, prediction) pair."""
    targets, predictions = torch.tensor(pairs).T
    meter = AccuracyMeter(num_classes)
    meter.update(torch.nn.functional.one_hot(predictions, num_classes).float(), targets)
    return meter


def test_topk_correct_breaks_ties_towards_the_lower_class_index():
    scores = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [math.nan, 1.0, 2.0]])
    targets = torch.tensor([1, 0, 2, 0])
    # ranks: 1 (class 0 ties and comes first), 0, 2, 2 (NaN ranks last)
    assert topk_correct(scores, targets, ks=(1, 2, 3, 10)) == {1: 1, 2: 2, 3: 4, 10: 4}


def test_topk_correct_matches_a_stable_sort_with_many_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (300, 7), generator=g).float()
    targets = torch.randint(0, 7, (300,), generator=g)
    order = torch.sort(-scores, dim=1, stable=True).indices
    ranks = (order == targets[:, None]).float().argmax(1)
    ks = tuple(range(1, 9))
    assert topk_correct(scores, targets, ks) == {k: int((ranks < k).sum()) for k in ks}
    assert topk_correct(scores, targets, (1,))[1] == int((scores.argmax(1) == targets).sum())


@pytest.mark.parametrize(
    "targets, match",
    [
        (torch.tensor([0.0, 1.0]), "class indices"),
        (torch.tensor([0, 3]), r"\[0, 3\)"),
        (torch.tensor([0]), "N=2"),
    ],
)
def test_bad_targets_are_refused(targets, match):
    with pytest.raises(ValueError, match=match):
        topk_correct(torch.zeros(2, 3), targets)


def test_meter_on_a_hand_made_example():
    meter = _meter()
    assert meter.confusion.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    result = meter.compute()
    assert result["top1"] == pytest.approx(100 * 4 / 6)
    assert result["top2"] == result["top5"] == 100.0  # top-5 of 4 classes: every class
    # Classes present in the targets only: (2/3 + 1/2 + 1) / 3; class 3, only predicted, does not count.
    assert result["mean_class_accuracy"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 1) / 3)
    assert result["num_samples"] == 6 == meter.num_samples
    per_class = meter.per_class()
    assert per_class[:3] == [
        ClassAccuracy(0, 3, 2, pytest.approx(200 / 3)),
        ClassAccuracy(1, 2, 1, 50.0),
        ClassAccuracy(2, 1, 1, 100.0),
    ]
    assert per_class[3][:3] == (3, 0, 0) and math.isnan(per_class[3].accuracy)


def test_empty_meter_reports_nan():
    result = AccuracyMeter(3).compute()
    assert result["num_samples"] == 0
    assert all(math.isnan(result[k]) for k in ("top1", "top5", "mean_class_accuracy"))


def test_merged_meters_equal_one_meter_over_all_data():
    g = torch.Generator().manual_seed(1)
    scores, targets = torch.randn(300, 10, generator=g), torch.randint(0, 10, (300,), generator=g)
    whole, a, b = AccuracyMeter(10), AccuracyMeter(10), AccuracyMeter(10)
    whole.update(scores, targets)
    a.update(scores[:100], targets[:100])
    b.update(scores[100:250], targets[100:250])
    a.update(scores[250:], targets[250:])
    # As two processes would: each sums the other's counts into its own (all_reduce semantics).
    other = b.state_tensor()
    a.reduce(lambda t: t.add_(other))
    assert torch.equal(a.confusion, whole.confusion) and torch.equal(a.topk_hits, whole.topk_hits)
    assert a.compute() == whole.compute()
    b.merge(AccuracyMeter(10).state_tensor())  # merging an empty meter changes nothing
    assert b.num_samples == 150
    with pytest.raises(ValueError, match="does not fit"):
        b.merge(AccuracyMeter(11).state_tensor())


def test_per_class_csv(tmp_path):
    path = write_per_class_csv(tmp_path / "per_class.csv", NAMES, _meter())
    assert path.read_text().splitlines() == [
        "index,class,support,correct,accuracy",
        "0,walk,3,2,66.6667",
        "1,run,2,1,50.0",
        "2,jump,1,1,100.0",
        "3,swim,0,0,",
    ]
    with pytest.raises(ValueError, match="3 class names"):
        write_per_class_csv(tmp_path / "x.csv", NAMES[:3], _meter())


def _assert_real_png(path, min_side=200):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0.05  # drawn content, not a blank canvas


def test_most_confused_classes_counts_both_sides_of_an_error():
    pairs = [(0, 0)] * 5 + [(1, 2)] * 3 + [(2, 2)] * 2 + [(3, 1), (4, 4), (5, 4)]
    meter = _from_pairs(6, pairs)
    # involvement (errors as target + as prediction): 0:0, 1:3+1, 2:3, 3:1, 4:1, 5:1
    assert most_confused_classes(meter, 6) == [1, 2, 3, 4, 5, 0]
    assert most_confused_classes(meter, 2) == [1, 2]


def test_confusion_matrix_png(tmp_path):
    _assert_real_png(plot_confusion_matrix(tmp_path / "small.png", _meter(), NAMES))
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 120, (2000,), generator=g)
    predictions = torch.where(torch.rand(2000, generator=g) < 0.7, targets, torch.randint(0, 120, (2000,)))
    meter = _from_pairs(120, list(zip(targets.tolist(), predictions.tolist(), strict=True)))
    path = plot_confusion_matrix(
        tmp_path / "large.png", meter, [f"class {i}" for i in range(120)], max_classes=30
    )
    _assert_real_png(path)


def test_curves_png_with_missing_keys(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 2.0, "train_top1": 10.0, "lr": 0.1},
        {
            "epoch": 2,
            "train_loss": 1.5,
            "train_top1": 30.0,
            "val_loss": 1.7,
            "val_video_top1": 25.0,
            "lr": 0.05,
        },
        {"epoch": 3, "train_loss": math.nan, "clips_per_s": 12.0},
    ]
    _assert_real_png(plot_curves(tmp_path / "curves.png", history))
    _assert_real_png(plot_curves(tmp_path / "empty.png", []))


def _csv_rows(path):
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_metrics_logger_round_trips_jsonl_csv_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(10, {"loss": torch.tensor(2.5), "lr": 0.1})
        logger.log(20, {"loss": np.float32(1.25), "lr": 0.05})
        logger.log(20, {"epoch": 1, "val_top1": 50.0}, prefix="epoch/")
        with pytest.raises(TypeError, match="'x'"):
            logger.log(30, {"x": torch.zeros(3)})

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [
        {"step": 10, "train/loss": 2.5, "train/lr": 0.1},
        {"step": 20, "train/loss": 1.25, "train/lr": 0.05},
        {"step": 20, "epoch/epoch": 1, "epoch/val_top1": 50.0},
    ]
    header, rows = _csv_rows(tmp_path / "metrics.csv")
    # The third call brought new keys: the header widened and the earlier rows got empty cells.
    assert header == ["step", "time", "train/loss", "train/lr", "epoch/epoch", "epoch/val_top1"]
    assert [(r["step"], r["train/loss"], r["train/lr"], r["epoch/val_top1"]) for r in rows] == [
        ("10", "2.5", "0.1", ""),
        ("20", "1.25", "0.05", ""),
        ("20", "", "", "50.0"),
    ]
    assert [float(r["time"]) for r in rows] == [r["time"] for r in records]

    with MetricsLogger(tmp_path, tensorboard=False) as logger:  # a resumed run appends
        logger.log(30, {"loss": 1.0, "lr": 0.01})
    header_after, rows = _csv_rows(tmp_path / "metrics.csv")
    assert header_after == header and [r["step"] for r in rows] == ["10", "20", "20", "30"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(10, 2.5), (20, 1.25)]
    assert [(e.step, e.value) for e in events.Scalars("epoch/val_top1")] == [(20, 50.0)]
