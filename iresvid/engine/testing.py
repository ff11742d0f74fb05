"""``tools/test.py``: evaluate a trained checkpoint at clip and video level and write the reports."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from iresvid.config import Config
from iresvid.data.build import build_dataset
from iresvid.data.loader import build_loader
from iresvid.data.transforms import EvalViews
from iresvid.engine.build import load_trained, norm_stats
from iresvid.engine.dist import cleanup, init_distributed
from iresvid.engine.evaluate import EvalResult, evaluate
from iresvid.engine.metrics import plot_confusion_matrix, write_per_class_csv
from iresvid.engine.trainer import AMP_DTYPES

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
        dataset = build_dataset(
            d, "val", mode="eval", classes=classes, num_clips=d.num_clips, seed=cfg.train.seed
        )
        loader = build_loader(
            dataset,
            batch_size=max(1, (d.eval_batch_size or d.batch_size) // d.num_crops),
            shuffle=False,
            num_workers=d.num_workers,
            num_replicas=dist.world_size,
            rank=dist.rank,
            pin_memory=dist.device.type == "cuda",
            prefetch_factor=d.prefetch_factor,
        )
        mean, std = norm_stats(cfg, model)
        views = EvalViews(
            d.test_size,
            d.num_crops,
            crop_size=d.test_crop_size,
            mean=mean,
            std=std,
            channels_last=cfg.model.channels_last,
        ).to(dist.device)
        progress = None
        if dist.is_main and cfg.train.progress:
            from tqdm.auto import tqdm

            def progress(it):
                return tqdm(it, desc=f"test {d.num_clips}×{d.num_crops} views", dynamic_ncols=True)

        result = evaluate(
            model,
            loader,
            views,
            num_classes=len(classes),
            device=dist.device,
            amp_dtype=AMP_DTYPES[cfg.train.amp],
            chunk=d.eval_batch_size or d.batch_size,
            progress=progress,
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
