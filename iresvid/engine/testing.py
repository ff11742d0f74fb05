"""``tools/test.py``: evaluate a trained checkpoint at clip and video level and write the reports."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from iresvid.config import Config
from iresvid.engine.build import build_eval_inputs, load_trained, progress_bar
from iresvid.engine.device import AMP_DTYPES
from iresvid.engine.dist import cleanup, init_distributed
from iresvid.engine.evaluate import EvalResult, evaluate
from iresvid.engine.metrics import write_reports
from iresvid.files import atomic_write, csv_cell
from iresvid.files import output_dir as writable_folder

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
    (default: a ``test`` folder beside the checkpoint), which is checked first: a folder that is a symlink,
    another user's or not writable is refused in one line before any evaluation.  Works under torchrun
    (each process a shard).
    """
    out = Path(output_dir) if output_dir else Path(checkpoint).parent / "test"
    try:
        model, cfg, classes = load_trained(
            checkpoint, cfg, overrides=list(overrides), use_ema=use_ema, needs_data=True
        )
        # Before the evaluation, by the process that writes the reports; RANK is read before joining the
        # process group, so the others never wait in a collective for a process that has refused.
        if int(os.environ.get("RANK", "0")) == 0:
            writable_folder(out)
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
        if dist.is_main:
            metrics = {
                **result.summary(),
                "num_videos": result.num_videos,
                "num_clips": d.num_clips,
                "num_crops": d.num_crops,
                "checkpoint": str(checkpoint),
            }
            atomic_write(out / "test_metrics.json", json.dumps(metrics, indent=2))
            write_reports(out, result.video, classes)
            if result.failed:  # a name or reason holding a tab or newline must not forge a row
                rows = "".join(f"{csv_cell(p)}\t{csv_cell(r)}\n" for p, r in result.failed)
                atomic_write(out / "failed_videos.tsv", rows)
                log.warning(
                    "%d videos could not be read and were left out (see %s)",
                    len(result.failed),
                    out / "failed_videos.tsv",
                )
        return result, cfg, out
    finally:
        cleanup()
