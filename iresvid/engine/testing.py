"""``tools/test.py``: evaluate a trained checkpoint at clip and video level and write the reports."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from iresvid.config import Config
from iresvid.engine.build import build_eval_inputs, load_trained, progress_bar
from iresvid.engine.device import AMP_DTYPES
from iresvid.engine.dist import cleanup, init_distributed
from iresvid.engine.evaluate import EvalResult, evaluate
from iresvid.engine.metrics import plot_confusion_matrix, write_per_class_csv

log = logging.getLogger("iresvid.test")


def run_test(
    checkpoint: str | Path,
    cfg: Config | None = None,
    *,
    overrides: list[str] = (),
    output_dir: str | Path | None = None,
    use_ema: bool = True,
) -> tuple[EvalResult, Config, Path]:
    """Evaluate ``checkpoint`` over ``data.num_clips × data.num_crops`` views of every validation video.

    Writes ``test_metrics.json``, ``per_class.csv`` and ``confusion_matrix.png`` to ``output_dir``
    (default: a ``test`` folder beside the checkpoint).  Works under torchrun (each process a shard).
    """
    try:
        model, cfg, classes = load_trained(checkpoint, cfg, overrides=list(overrides), use_ema=use_ema)
        dist = init_distributed(cfg.train.dist_backend, cfg.train.device)
        model.to(dist.device)
        d = cfg.data
        inputs = build_eval_inputs(
            cfg,
            model,
            dist.device,
            classes=classes,
            num_clips=d.num_clips,
            num_crops=d.num_crops,
            views_per_pass=d.eval_batch_size or d.batch_size,
            world_size=dist.world_size,
            rank=dist.rank,
        )
        result = evaluate(
            model,
            inputs.loader,
            inputs.views,
            num_classes=len(classes),
            device=dist.device,
            amp_dtype=AMP_DTYPES[cfg.train.amp],
            chunk=inputs.chunk,
            progress=progress_bar(
                dist.is_main and cfg.train.progress, desc=f"test {d.num_clips}×{d.num_crops} views"
            ),
        )
        out = Path(output_dir) if output_dir else Path(checkpoint).parent / "test"
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            metrics = {
                **result.summary(),
                "num_videos": result.num_videos,
                "num_clips": d.num_clips,
                "num_crops": d.num_crops,
                "checkpoint": str(checkpoint),
            }
            (out / "test_metrics.json").write_text(json.dumps(metrics, indent=2))
            write_per_class_csv(out / "per_class.csv", classes, result.video)
            plot_confusion_matrix(out / "confusion_matrix.png", result.video, classes)
            if result.failed:
                (out / "failed_videos.tsv").write_text("".join(f"{p}\t{r}\n" for p, r in result.failed))
                log.warning(
                    "%d videos could not be read and were left out (see %s)",
                    len(result.failed),
                    out / "failed_videos.tsv",
                )
        return result, cfg, out
    finally:
        cleanup()
