"""``make demo``: train a 3D iResNet and its 2D twin on the synthetic motion dataset, on the CPU, and compare.

1. Writes the synthetic motion dataset (real MPEG-4 AVI files in UCF101's format; `iresvid make-demo-data`).
2. Trains ``configs/demo_synthetic.yaml`` twice with the same recipe: the 3D model, and its C2D twin
   (``model.inflate=c2d``: the same network with every temporal kernel 1, a per-frame 2D model).
3. Evaluates both at clip and video level (``data.num_clips`` uniform clips per video) and prints a table.
4. Predicts two validation videos with the 3D model (`iresvid.Predictor`, as ``iresvid predict``): the top-3.

The classes come in time-reversal pairs (move left / right, up / down, rotate clockwise / counterclockwise,
expand / shrink), so the 2D twin can tell which pair a video belongs to but not its direction: it stays near
50% on direction, where the 3D model reads the order of the frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from iresvid.checkpoint_io import read_checkpoint
from iresvid.cli import run_guarded
from iresvid.config import load_config
from iresvid.data.synthetic import direction_pairs, make_demo_data
from iresvid.engine.metrics import AccuracyMeter
from iresvid.engine.testing import run_test
from iresvid.engine.trainer import train
from iresvid.files import atomic_write, output_dir

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_synthetic.yaml"
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
TWINS = [("iResNet3D-18 (3D)", "iresnet3d", []), ("C2D twin (2D per frame)", "c2d", ["model.inflate=c2d"])]


def pair_scores(meter: AccuracyMeter, pairs: list[tuple[int, int]]) -> tuple[float, float]:
    """(% of videos put in the right pair, % right direction among those), from the confusion matrix."""
    c = meter.confusion.double()
    in_pair = sum(c[a, a] + c[a, b] + c[b, a] + c[b, b] for a, b in pairs)
    right = sum(c[a, a] + c[b, b] for a, b in pairs)
    return float(100 * in_pair / c.sum()), float(100 * right / in_pair.clamp(min=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="demo_data", help="where the synthetic dataset goes")
    parser.add_argument("--output", default="demo_output", help="checkpoints, logs and reports")
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs, e.g. schedule.epochs=5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def run():
        output_dir(args.output)  # refused in one line now, not after both trainings
        root = Path(args.data) / "ucf101"
        if not (root / "annotations" / "classInd.txt").is_file():
            print(f"writing the synthetic motion dataset to {root} ...", flush=True)
            print(make_demo_data(root, layout="ucf101", seed=0, videos_per_class=64).summary(), flush=True)
        rows = []
        for title, name, extra in TWINS:
            out = Path(args.output) / name
            # The demo's own folders: a second `make demo` starts its runs over (train.overwrite).
            overrides = [f"data.root={root}", f"train.output_dir={out}", "train.overwrite=true"]
            overrides += [*extra, *args.overrides]
            cfg = load_config(CONFIG, overrides)
            print(
                f"\n== {title}: {cfg.model.name}, inflate={cfg.model.inflate}, {cfg.schedule.epochs} epochs",
                flush=True,
            )
            start = time.perf_counter()
            train(cfg)
            minutes = (time.perf_counter() - start) / 60
            result, cfg, _ = run_test(out / "last.pth", cfg)  # a checkpoint has no data paths
            state = read_checkpoint(out / "last.pth")
            pair, direction = pair_scores(result.video, direction_pairs(state["classes"]))
            clip, video = result.clip.compute(), result.video.compute()
            params = sum(v.numel() for k, v in state["model"].items() if not k.endswith(BN_BUFFERS))
            rows.append(
                dict(
                    model=title,
                    params=params,
                    minutes=minutes,
                    clip_top1=clip["top1"],
                    video_top1=video["top1"],
                    pair=pair,
                    direction=direction,
                )
            )
        report(rows, Path(args.output), num_clips=cfg.data.num_clips)
        show_predictions(Path(args.output) / TWINS[0][1] / "last.pth", cfg)

    return run_guarded(run)


def show_predictions(checkpoint: Path, cfg) -> None:
    """`iresvid predict` with the 3D model on two validation videos of different classes: the top-3."""
    from iresvid.data.build import load_annotations
    from iresvid.engine.predict import Predictor

    annotations = load_annotations(cfg.data, "val")
    records = [annotations.records[0], annotations.records[len(annotations.records) // 2]]
    predictor = Predictor(checkpoint, device="cpu", num_workers=0)
    print(f"\niresvid predict {checkpoint} <2 validation videos> --topk 3")
    results = predictor.predict_many([r.path for r in records], topk=3)
    for record, result in zip(records, results, strict=True):
        ranked = getattr(result, "error", None) or "  ".join(f"{name} {p:.2f}" for name, p in result.topk)
        print(f"  {record.path.name:<28} (is {annotations.classes[record.label]}): {ranked}")


def report(rows: list[dict], output: Path, *, num_clips: int) -> None:
    columns = [
        ("model", "<26"),
        ("params", ">9"),
        ("train", ">10"),
        ("clip top1", ">11"),
        ("video top1", ">12"),
        ("pair", ">7"),
        ("direction", ">11"),
    ]
    header = "".join(f"{name:{fmt}}" for name, fmt in columns)
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:<26}{r['params'] / 1e3:>8.0f}k{r['minutes']:>6.1f} min{r['clip_top1']:>10.1f}%"
            f"{r['video_top1']:>11.1f}%{r['pair']:>6.0f}%{r['direction']:>10.0f}%"
        )
    lines.append(
        f"chance: 12.5% top-1, 50% direction.  video = {num_clips} clips per video; pair = right motion "
        f"type; direction = right member of its pair"
    )
    print("\n" + "\n".join(lines))
    atomic_write(output / "summary.json", json.dumps(rows, indent=2))
    atomic_write(output / "summary.txt", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
