"""Reports, exports, features and predictions are written safely: never through a planted link, with names
as data (no formula, no markup, no forged row), and outputs refused in one line before any work."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_tools import TOOLS, tool_main

import iresvid.engine.metrics as metrics_module
from iresvid.cli import main as cli_main
from iresvid.config import load_config, to_dict
from iresvid.data.encode import write_video
from iresvid.engine.build import build_model
from iresvid.engine.export import export_model
from iresvid.engine.metrics import (
    AccuracyMeter,
    MetricsLogger,
    plot_confusion_matrix,
    plot_curves,
    write_per_class_csv,
)
from iresvid.engine.predict import Failure, Prediction, WindowPrediction, write_predictions
from iresvid.files import WriteError
from iresvid.models import create_model

# Class folder names someone else chose: mathtext that matplotlib cannot parse, and spreadsheet formulas.
MATH, LINK, SUM = r"$\bad$ jump", '=HYPERLINK("evil")', "@SUM(A1)"
CLASSES = sorted([MATH, LINK, SUM])
BROKEN = "forged\tcell\nforged row.mp4"  # not a video: listed in failed_videos.tsv, which it must not forge
PNG = b"\x89PNG\r\n\x1a\n"
VICTIM = "the victim's own text\n"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A folder-per-class validation set with hostile class and file names, and a checkpoint for it."""
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        write_video(root / "val" / name / "v0.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    (root / "val" / SUM / BROKEN).write_bytes(b"not a video")
    cfg = load_config(
        None,
        [
            f"data.root={root}",
            "data.format=folder",
            "data.num_frames=4",
            "data.frame_stride=1",
            "data.test_size=32",
            "data.num_clips=1",
            "data.num_crops=1",
            "data.batch_size=4",
            "data.num_workers=0",
            "model.name=iresnet3d18",
            "model.width_scale=0.0625",
            "train.device=cpu",
            "train.progress=false",
        ],
    )
    torch.manual_seed(0)
    state = {"model": build_model(cfg, len(CLASSES)).state_dict(), "classes": CLASSES, "config": to_dict(cfg)}
    torch.save(state, root / "best.pth")
    return root


def _data(hostile: Path) -> list[str]:
    """The dataset settings: a checkpoint's config gives its model and clip, never where the data is."""
    return [f"data.root={hostile}", "data.format=folder", "data.batch_size=4", "data.num_workers=0"]


def _run_folder(hostile: Path, tmp_path: Path) -> Path:
    """A run folder of its own holding a copy of the checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(hostile / "best.pth", run / "best.pth")
    return run


def _victim(path: Path) -> Path:
    path.write_text(VICTIM)
    return path


def _plant(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return target


def _no_work(monkeypatch, module, name: str) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} ran although the output was refused")

    monkeypatch.setattr(module, name, refuse)


def _one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write") and "\n" not in err and "Traceback" not in err, err
    for name in names:
        assert name in err, err
    return err


# ---------------------------------------------------------------------------------------- tools/test.py


@pytest.fixture(scope="module")
def tested(hostile, tmp_path_factory):
    """``iresvid test`` into a report folder where someone planted a link at every report's name."""
    base = tmp_path_factory.mktemp("tested")
    out, victims = base / "reports", base / "victims"
    out.mkdir()
    victims.mkdir()
    names = ("test_metrics.json", "per_class.csv", "confusion_matrix.png", "failed_videos.tsv")
    planted = {name: _plant(out / name, _victim(victims / name)) for name in names}
    code = cli_main(
        ["test", "--checkpoint", str(hostile / "best.pth"), "--output", str(out), *_data(hostile)]
    )
    return code, out, planted


def test_test_reports_replace_planted_links_and_never_write_through_them(tested):
    code, out, planted = tested
    assert code == 0
    for name, victim in planted.items():
        assert not (out / name).is_symlink() and (out / name).is_file(), name
        assert victim.read_text() == VICTIM, name
    assert json.loads((out / "test_metrics.json").read_text())["num_videos"] == len(CLASSES)


def test_a_dollar_in_a_class_name_does_not_fail_the_confusion_plot(tested):
    code, out, _ = tested
    assert code == 0 and (out / "confusion_matrix.png").read_bytes().startswith(PNG)


def test_formula_class_names_are_text_cells_in_per_class_csv(tested):
    _, out, _ = tested
    rows = list(csv.reader((out / "per_class.csv").open(newline="", encoding="utf-8")))
    assert [row[1] for row in rows[1:]] == [MATH, "'" + LINK, "'" + SUM]


def test_a_file_name_holding_a_tab_and_a_newline_forges_no_row_of_failed_videos(tested, hostile):
    _, out, _ = tested
    lines = (out / "failed_videos.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    path, reason = lines[0].split("\t")
    assert path == str(hostile / "val" / SUM / BROKEN).replace("\t", "\\t").replace("\n", "\\n")
    assert reason


def test_a_symlinked_test_folder_is_refused_before_evaluation(hostile, tmp_path, monkeypatch, capsys):
    import iresvid.engine.testing as testing

    run = _run_folder(hostile, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    bashrc = _victim(home / ".bashrc")
    (run / "test").symlink_to(home)  # `test -> ~`
    _no_work(monkeypatch, testing, "evaluate")
    assert cli_main(["test", "--checkpoint", str(run / "best.pth"), *_data(hostile)]) == 2
    _one_line_error(capsys, str(run / "test"), "symbolic link")
    assert sorted(p.name for p in home.iterdir()) == [".bashrc"] and bashrc.read_text() == VICTIM


def _unwritable(tmp_path: Path, kind: str) -> Path:
    if kind == "below a file":
        (tmp_path / "plain").write_text("a file, not a folder")
        return tmp_path / "plain" / "reports"
    folder = tmp_path / "theirs"
    folder.mkdir()
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)  # another user's: root could write there, and must not
    else:
        folder.chmod(0o500)
    return folder


@pytest.mark.parametrize("kind", ["below a file", "not ours"])
def test_an_unwritable_report_folder_is_refused_before_evaluation(
    hostile, tmp_path, monkeypatch, capsys, kind
):
    import iresvid.engine.testing as testing

    out = _unwritable(tmp_path, kind)
    _no_work(monkeypatch, testing, "evaluate")
    assert (
        cli_main(["test", "--checkpoint", str(hostile / "best.pth"), "--output", str(out), *_data(hostile)])
        == 2
    )
    _one_line_error(capsys, str(out.parent if kind == "below a file" else out))


def test_a_plot_that_fails_to_draw_keeps_the_other_reports(hostile, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("the font cache is broken")

    monkeypatch.setattr(metrics_module, "confusion_matrix_png", broken)
    out = tmp_path / "reports"
    assert (
        cli_main(["test", "--checkpoint", str(hostile / "best.pth"), "--output", str(out), *_data(hostile)])
        == 0
    )
    printed = capsys.readouterr()
    assert "video" in printed.out  # the table
    assert "confusion_matrix.png was not drawn (RuntimeError: the font cache is broken)" in printed.err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["failed_videos.tsv", "per_class.csv", "test_metrics.json"]


# -------------------------------------------------------------------------------- reports and metric logs


def _meter() -> AccuracyMeter:
    meter = AccuracyMeter(3, ks=(1,))
    meter.update(torch.eye(3)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 0]))
    return meter


@pytest.mark.parametrize(
    "write",
    [
        lambda p: write_per_class_csv(p, CLASSES, _meter()),
        lambda p: plot_confusion_matrix(p, _meter(), CLASSES),
        lambda p: plot_curves(p, [{"epoch": 1, "train_loss": 1.0, "$\\bad$_top1": 3.0}]),
    ],
    ids=["per_class.csv", "confusion_matrix.png", "curves.png"],
)
def test_each_report_replaces_a_planted_link(tmp_path, write):
    victim = _victim(tmp_path / "victim")
    report = tmp_path / "report"
    report.symlink_to(victim)
    write(report)
    assert victim.read_text() == VICTIM and report.is_file() and not report.is_symlink()
    assert report.stat().st_size > 0


@pytest.mark.parametrize("name", ["metrics.jsonl", "metrics.csv"])
def test_the_metric_logs_are_never_appended_to_through_a_link(tmp_path, name):
    victim = _victim(tmp_path / ".bashrc")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(victim)
    with pytest.raises(WriteError, match=f"{name}: it is a symbolic link"):
        MetricsLogger(run, tensorboard=False)
    assert victim.read_text() == VICTIM


def test_the_metrics_csv_rewrite_uses_no_predictable_temporary_name(tmp_path):
    victim = _victim(tmp_path / ".bashrc")
    (tmp_path / f".metrics.csv.tmp-{os.getpid()}").symlink_to(victim)  # the name the rewrite used to take
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"loss": 2.0, "note": "=cmd|' /C calc'!A0"})
        logger.log(2, {"top1": 50.0}, prefix="val/")  # new keys: the table is rewritten
    assert victim.read_text() == VICTIM
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open(newline="", encoding="utf-8")))
    assert [r["step"] for r in rows] == ["1", "2"] and rows[1]["val/top1"] == "50.0"
    assert rows[0]["train/note"] == "'=cmd|' /C calc'!A0"


def test_a_resumed_run_appends_to_its_own_metric_logs(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"loss": 2.0})
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(2, {"loss": 1.0})
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_the_metric_logger_refuses_a_symlinked_folder(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "run").symlink_to(real)
    with pytest.raises(WriteError, match="symbolic link"):
        MetricsLogger(tmp_path / "run", tensorboard=False)
    assert list(real.iterdir()) == []


# ----------------------------------------------------------------------------------------------- export


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("iresnet3d18", width_scale=1 / 16, num_classes=3).eval()


def test_export_replaces_planted_links_and_writes_the_checked_bytes(tmp_path):
    victims = {name: _victim(tmp_path / f"victim_{name}") for name in ("model.pt", "export.json")}
    out = tmp_path / "export"
    out.mkdir()
    for name, victim in victims.items():
        (out / name).symlink_to(victim)
    export_model(_tiny_model(), torch.randn(1, 3, 2, 16, 16), out, ["torchscript"])
    for name, victim in victims.items():
        assert victim.read_text() == VICTIM and not (out / name).is_symlink(), name
    x = torch.randn(2, 3, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.jit.load(str(out / "model.pt"))(x), _tiny_model()(x), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("kind", ["below a file", "not ours", "a link"])
def test_export_refuses_an_unwritable_out_in_one_line_before_loading(tmp_path, monkeypatch, capsys, kind):
    import iresvid.engine.export as export

    if kind == "a link":
        (tmp_path / "real").mkdir()
        out = tmp_path / "export"
        out.symlink_to(tmp_path / "real")
    else:
        out = _unwritable(tmp_path, kind)
    _no_work(monkeypatch, export, "load_for_export")
    assert tool_main("export")(["--model", "iresnet3d18", "--out", str(out)]) == 2
    _one_line_error(capsys, str(out.parent if kind == "below a file" else out))


# --------------------------------------------------------------------------------------------- features


def _extract(hostile: Path, out: Path) -> int:
    return tool_main("extract_features")(
        ["--checkpoint", str(hostile / "best.pth"), "--out", str(out), *_data(hostile)]
    )


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_extract_replaces_a_planted_link_at_out(hostile, tmp_path, suffix):
    victim = _victim(tmp_path / "victim")
    out = tmp_path / f"feats{suffix}"
    out.symlink_to(victim)
    assert _extract(hostile, out) == 0
    assert victim.read_text() == VICTIM and not out.is_symlink()
    if suffix == ".npy":
        assert np.load(out).shape[0] == len(CLASSES)
        assert json.loads(out.with_suffix(".json").read_text())["classes"] == CLASSES
    else:
        assert torch.load(out, weights_only=False)["features"].shape[0] == len(CLASSES)


@pytest.mark.parametrize("planted", ["a file", "a link"])
def test_extract_never_replaces_a_json_the_user_did_not_name(hostile, tmp_path, monkeypatch, capsys, planted):
    import iresvid.engine.features as features

    config = tmp_path / "config.json"
    if planted == "a file":
        config.write_text('{"lr": 0.1}\n')
    else:
        _plant(config, _victim(tmp_path / "victim"))
    _no_work(monkeypatch, features, "extract_features")
    assert _extract(hostile, tmp_path / "config.npy") == 2
    _one_line_error(capsys, str(config), "not a features sidecar")
    assert not (tmp_path / "config.npy").exists()
    assert config.read_text() == ('{"lr": 0.1}\n' if planted == "a file" else VICTIM)


def test_extract_again_to_the_same_out_replaces_its_own_sidecar(hostile, tmp_path):
    out = tmp_path / "feats.npy"
    assert _extract(hostile, out) == 0
    out.with_suffix(".json").write_text(out.with_suffix(".json").read_text().replace('"val"', '"old"'))
    assert _extract(hostile, out) == 0
    assert json.loads(out.with_suffix(".json").read_text())["split"] == "val"


@pytest.mark.parametrize("kind", ["below a file", "not ours"])
def test_extract_refuses_an_unwritable_out_before_extracting(hostile, tmp_path, monkeypatch, capsys, kind):
    import iresvid.engine.features as features

    folder = _unwritable(tmp_path, kind)
    _no_work(monkeypatch, features, "extract_features")
    assert _extract(hostile, folder / "feats.npy") == 2
    _one_line_error(capsys, str(folder.parent if kind == "below a file" else folder))


# ------------------------------------------------------------------------------------------- prediction


def _predictions() -> list:
    path = "/videos/=cmd\tforged\nrow.mp4"
    windows = [WindowPrediction(0.0, 1.0, [(SUM, 0.75)])]
    return [
        Prediction(path, [(LINK, 0.5), (MATH, 0.25)], num_views=1, duration=1.0, windows=windows),
        Failure("/videos/@bad\n.mp4", "=unreadable\tvideo"),
    ]


def test_predictions_replace_a_planted_link_at_out(tmp_path):
    victim = _victim(tmp_path / ".bashrc")
    out = tmp_path / "out.jsonl"
    out.symlink_to(victim)
    summary = write_predictions(_predictions(), out, topk=2)
    assert summary.predicted == 1 and len(summary.failed) == 1
    assert victim.read_text() == VICTIM and not out.is_symlink()
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == [
        p.path for p in _predictions()
    ]


def test_prediction_csv_cells_are_text_and_forge_no_row(tmp_path):
    out = tmp_path / "out.csv"
    write_predictions(_predictions(), out, topk=2)
    text = out.read_text(encoding="utf-8")
    assert text.count("\n") == 4  # header, video, window, failure: no cell holds a newline
    rows = list(csv.reader(io.StringIO(text)))
    assert [len(r) for r in rows] == [9] * 4
    assert rows[1][0] == "/videos/=cmd\\tforged\\nrow.mp4"  # escaped; it starts with "/", not a formula
    assert rows[1][4:8] == ["'" + LINK, "0.500000", MATH, "0.250000"] and rows[2][4] == "'" + SUM
    assert rows[3][0] == "/videos/@bad\\n.mp4" and rows[3][8] == "'=unreadable\\tvideo"


def test_predictions_refuse_an_unwritable_out_in_one_line(tmp_path):
    out = _unwritable(tmp_path, "not ours") / "out.csv"
    with pytest.raises(WriteError, match="another user"):
        write_predictions(iter(()), out, topk=1)


# -------------------------------------------------------------------------------------------------- demo


def test_the_demo_summary_replaces_planted_links(tmp_path):
    spec = importlib.util.spec_from_file_location("demo_tool", TOOLS / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    victims = {name: _victim(tmp_path / f"victim_{name}") for name in ("summary.json", "summary.txt")}
    for name, victim in victims.items():
        (tmp_path / name).symlink_to(victim)
    row = dict(
        model="m", params=1000, minutes=0.5, clip_top1=50.0, video_top1=60.0, pair=70.0, direction=80.0
    )
    demo.report([row], tmp_path, num_clips=2)
    for name, victim in victims.items():
        assert victim.read_text() == VICTIM and not (tmp_path / name).is_symlink(), name
    assert json.loads((tmp_path / "summary.json").read_text()) == [row]
