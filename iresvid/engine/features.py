"""Per-video features for downstream pipelines (retrieval, linear probes, temporal models), in bounded memory.

The views are the evaluation protocol's (`iresvid.engine.evaluate`): ``data.num_clips`` uniform clips ×
``data.num_crops`` crops per video.  Levels:

- ``pooled``: the classifier's input, ``forward_head(forward_features(x), pre_logits=True)``, averaged over
  a video's views: ``(num_videos, C)``.
- ``stages``: the maps of ``out_indices`` (0 = stem, k = stage k, as ``features_only``) from
  `forward_intermediates`, each averaged over (T, H, W) and then over the views, concatenated along the
  channels (``columns`` says which columns are which stage); or, with ``keep_spatial``, every clip's
  unpooled maps (``.pt`` only), refused up front when they would exceed ``max_bytes``.

Like evaluation, only running sums per video are kept for pooled features.  A video whose clips cannot be
read is left out and listed under ``failed``; one read only in part is averaged over the views read and
listed under ``incomplete``: nothing is replaced or filled in.  Single process.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iresvid.config import Config, ConfigError
from iresvid.data.datasets import DatasetUnreadableError
from iresvid.data.transforms import EvalViews
from iresvid.engine.build import build_eval_inputs, build_model, load_trained, norm_stats, progress_bar
from iresvid.engine.device import AMP_DTYPES, autocast
from iresvid.engine.evaluate import readable_views
from iresvid.files import WriteError, atomic_write, output_dir

log = logging.getLogger(__name__)

LEVELS = ("pooled", "stages")
OUTPUT_SUFFIXES = (".npy", ".pt")
DEFAULT_MAX_BYTES = 8 * 2**30
# How every sidecar `save_features` writes begins (``json.dumps(indent=2)`` of `FeatureResult.metadata`,
# whose first key is ``level``): an existing ``.json`` that does not is someone else's, never replaced.
_SIDECAR_START = b'{\n  "level": '


@dataclass
class FeatureResult:
    """Features of the videos read (rows in dataset order) and what a downstream pipeline needs with them.

    ``features``: float32 ``(num_videos, C)``; with ``keep_spatial`` a dict stage name → float32
    ``(num_clips_read, num_crops, C, [T,] H, W)`` whose rows are described by ``clips``.
    """

    features: torch.Tensor | dict[str, torch.Tensor]
    level: str
    layout: str
    paths: list[str]
    video_ids: list[str]
    labels: list[int]
    classes: list[str]
    num_views: list[int]
    columns: dict[str, list[int]] = field(default_factory=dict)  # stage → [start, end) (pooled stages)
    clips: list[tuple[int, int]] = field(default_factory=list)  # keep_spatial: (video row, clip index)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): no view could be read
    incomplete: list[dict] = field(default_factory=list)  # videos averaged over fewer views than asked

    def metadata(self) -> dict:
        """Everything but the features, as JSON-able values."""
        keys = ("level", "layout", "paths", "video_ids", "labels", "classes", "num_views", "columns")
        meta = {k: getattr(self, k) for k in keys}
        meta["clips"] = [list(c) for c in self.clips]
        meta["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        meta["incomplete"] = self.incomplete
        return meta


def level_name(index: int) -> str:
    return "stem" if index == 0 else f"stage{index}"


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader,
    views: EvalViews,
    *,
    level: str = "pooled",
    out_indices: Sequence[int] | None = None,
    keep_spatial: bool = False,
    device: torch.device = torch.device("cpu"),
    amp_dtype: torch.dtype | None = None,
    chunk: int = 32,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress=None,
) -> FeatureResult:
    """Features of every video of an evaluation-mode `ClipDataset` loader (not sharded, not shuffled).

    ``out_indices`` (default: every level) and ``keep_spatial`` apply to ``level="stages"``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if level == "pooled" and (out_indices is not None or keep_spatial):
        raise ValueError("out_indices and keep_spatial select stage maps: they need level='stages'")
    names, indices = ["pooled"], []
    if level == "stages":
        indices = _check_indices(model, out_indices)
        names = [level_name(i) for i in indices]
    dataset = loader.dataset
    num_videos, num_clips, crops = dataset.num_videos, dataset.num_clips, views.num_crops
    was_training = model.training
    model.eval()

    def embed(x: torch.Tensor) -> list[torch.Tensor]:
        with autocast(device, amp_dtype):
            if level == "pooled":
                out = [model.forward_head(model.forward_features(x), pre_logits=True)]
            else:
                levels = sorted(indices)  # timm's contract: maps come in network order
                taken = model.forward_intermediates(x, levels, stop_early=True, intermediates_only=True)
                maps = dict(zip(levels, taken, strict=True))
                out = [maps[i] if keep_spatial else maps[i].flatten(2).mean(-1) for i in indices]
        return [o.float().cpu() for o in out]

    sums: torch.Tensor | None = None  # (num_videos, sum of C) float64: pooled features summed over views
    spatial: list[torch.Tensor] = []  # keep_spatial: per stage (num_videos * num_clips, crops, C, ...)
    channels: list[int] = []  # per stage, from the first batch read
    clip_read = torch.zeros(num_videos * num_clips, dtype=torch.bool)
    views_read = torch.zeros(num_videos, dtype=torch.long)
    failures: list[tuple[str, str]] = []
    for batch, x in readable_views(loader, views, device, failures, progress):
        video_index = batch["video_index"]
        rows = video_index * num_clips + batch["clip_index"]
        parts = [embed(part) for part in x.split(chunk)]
        outputs = [torch.cat(stage).unflatten(0, (len(rows), crops)) for stage in zip(*parts, strict=True)]
        if not channels:
            channels = [out.shape[2] for out in outputs]
            if keep_spatial:
                spatial = _allocate(outputs, num_videos * num_clips, names, max_bytes)
            else:
                sums = torch.zeros(num_videos, sum(channels), dtype=torch.float64)
        if keep_spatial:
            for store, out in zip(spatial, outputs, strict=True):
                store[rows] = out
        else:
            sums.index_add_(0, video_index, torch.cat(outputs, dim=-1).double().sum(1))
        clip_read[rows] = True
        views_read.index_add_(0, video_index, torch.full_like(video_index, crops))
    model.train(was_training)

    records = dataset.records
    reasons: dict[str, str] = {}
    for path, reason in failures:
        reasons.setdefault(path, reason)
    unread = [str(records[v].path) for v in range(num_videos) if views_read[v] == 0]
    failed = [(path, reasons.get(path, "not read")) for path in unread]
    if failed:
        log.warning("%d of %d videos could not be read and are left out", len(failed), num_videos)
    if not channels:
        listing = "; ".join(f"{p}: {r}" for p, r in failed[:5])
        raise DatasetUnreadableError(f"no video of {dataset.source} could be read: {listing}")
    read = torch.nonzero(views_read > 0).flatten()
    incomplete = [
        {
            "path": str(records[v].path),
            "views": int(views_read[v]),
            "reason": reasons.get(str(records[v].path)),
        }
        for v in read.tolist()
        if views_read[v] < num_clips * crops
    ]

    columns, clips = {}, []
    if keep_spatial:
        clip_rows = torch.nonzero(clip_read).flatten()
        row_of_video = {v: r for r, v in enumerate(read.tolist())}
        clips = [(row_of_video[r // num_clips], r % num_clips) for r in clip_rows.tolist()]
        dims = "C, T, H, W" if spatial[0].ndim == 6 else "C, H, W"
        layout = f"per stage (clips read, num_crops, {dims}); rows described by 'clips'"
        features = {}
        for name in names:
            # One stage at a time, so leaving out unread clips holds at most one extra stage in memory.
            store = spatial.pop(0)
            features[name] = store if len(clip_rows) == len(store) else store[clip_rows]
            del store
    else:
        features = (sums[read] / views_read[read, None]).float()
        bounds = np.cumsum([0, *channels]).tolist()
        columns = {name: bounds[i : i + 2] for i, name in enumerate(names)}
        layout = "(num_videos, channels)" if level == "pooled" else "(num_videos, channels of every stage)"
    return FeatureResult(
        features=features,
        level=level,
        layout=layout,
        paths=[str(records[v].path) for v in read.tolist()],
        video_ids=[records[v].video_id for v in read.tolist()],
        labels=[records[v].label for v in read.tolist()],
        classes=list(dataset.classes),
        num_views=views_read[read].tolist(),
        columns=columns,
        clips=clips,
        failed=failed,
        incomplete=incomplete,
    )


def check_outputs(path: str | Path) -> list[Path]:
    """The files `save_features` will write for ``path``, checked before any extraction: the folder
    writable and neither a symlink nor another user's (`output_dir`), ``path`` not a folder, and the
    ``.json`` sidecar beside a ``.npy`` either absent or an earlier sidecar of features.  ``path`` itself,
    named by the user, may be replaced; a file the user did not name (``--out config.npy`` beside a
    ``config.json``) never is.  Refusals are one `WriteError` naming the file."""
    path = Path(path)
    output_dir(path.parent)
    if path.is_dir():
        raise WriteError(path, "it is a folder; name a file (.npy or .pt) to write the features to")
    if path.suffix != ".npy":
        return [path]
    sidecar = path.with_suffix(".json")
    if os.path.lexists(sidecar) and not _is_sidecar(sidecar):
        raise WriteError(
            sidecar,
            f"it exists and is not a features sidecar; writing {path.name} would replace it: choose another "
            f"name for the features",
        )
    return [path, sidecar]


def _is_sidecar(path: Path) -> bool:
    """Whether ``path`` is a regular file (not a link) beginning as the sidecars `save_features` writes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # a link (ELOOP), a folder, unreadable: not one of ours
        return False
    with os.fdopen(fd, "rb") as f:
        return f.read(len(_SIDECAR_START)) == _SIDECAR_START


def save_features(result: FeatureResult, path: str | Path, extra: dict | None = None) -> list[Path]:
    """Write ``result``: ``.npy`` (the features array) + a ``.json`` sidecar, or one ``.pt`` dict with the
    features, ``labels`` as a tensor and the metadata.  Returns the files written.

    Each file is written by `atomic_write` (never through a link planted at its name); `check_outputs`
    says what is refused."""
    path = Path(path)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"features are written as {' or '.join(OUTPUT_SUFFIXES)}, got {path}")
    meta = {**result.metadata(), **(extra or {})}
    files = check_outputs(path)
    if path.suffix == ".pt":
        state = {"features": result.features, **meta, "labels": torch.tensor(result.labels)}
        atomic_write(path, lambda f: torch.save(state, f))
        return files
    if isinstance(result.features, dict):
        raise ValueError("spatial maps (keep_spatial) are written as .pt only: one array per stage")
    features = result.features.numpy()
    sidecar = files[1]
    # Checked again as it is written: a file that has appeared there since `check_outputs` is not replaced.
    replace = _is_sidecar(sidecar)
    atomic_write(path, lambda f: np.save(f, features))
    atomic_write(sidecar, json.dumps({**meta, "shape": list(features.shape)}, indent=2), replace=replace)
    return files


def run_extract(
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    cfg: Config | None = None,
    split: str = "val",
    level: str = "pooled",
    out_indices: Sequence[int] | None = None,
    keep_spatial: bool = False,
    overrides: Sequence[str] = (),
    use_ema: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[FeatureResult, list[Path]]:
    """Extract features of ``split`` with a training ``checkpoint`` (its config unless ``cfg`` is given),
    or with the model ``cfg.model`` describes (``model.name``, ``model.pretrained``); write them to ``out``.
    """
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"features are written as {' or '.join(OUTPUT_SUFFIXES)}, got {out}")
    if keep_spatial and out.suffix != ".pt":
        raise ConfigError(f"spatial maps (keep_spatial) are written as .pt only, got {out}")
    if checkpoint is not None:
        model, cfg, classes = load_trained(
            checkpoint, cfg, overrides=list(overrides), use_ema=use_ema, needs_data=True
        )
        source = {"checkpoint": str(checkpoint)}
    elif cfg is not None:
        if not cfg.model.pretrained:
            log.warning("model.pretrained is not set: these are features of a randomly initialised model")
        model, classes = build_model(cfg, 0).eval(), None
        source = {"model": cfg.model.name, "pretrained": cfg.model.pretrained}
    else:
        raise ConfigError("give a training checkpoint or a config naming the model")
    check_outputs(out)  # before the extraction: a refusal now costs nothing
    d = cfg.data
    device_name = cfg.train.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    model.to(device)
    mean, std = norm_stats(cfg, model)  # the views' normalisation, recorded beside the features
    inputs = build_eval_inputs(
        cfg,
        model,
        device,
        split=split,
        classes=classes,
        num_clips=d.num_clips,
        num_crops=d.num_crops,
        views_per_pass=d.eval_batch_size or d.batch_size,
    )
    result = extract_features(
        model,
        inputs.loader,
        inputs.views,
        level=level,
        out_indices=out_indices,
        keep_spatial=keep_spatial,
        device=device,
        amp_dtype=AMP_DTYPES[cfg.train.amp],
        chunk=inputs.chunk,
        max_bytes=max_bytes,
        progress=progress_bar(cfg.train.progress, desc=f"features {d.num_clips}×{d.num_crops} views"),
    )
    extra = {
        **source,
        "model_name": cfg.model.name,
        "split": split,
        "num_clips": d.num_clips,
        "num_crops": d.num_crops,
        "clip": {"num_frames": d.num_frames, "frame_stride": d.frame_stride},
        "views": {"test_size": d.test_size, "crop_size": d.test_crop_size or d.test_size},
        "mean": mean,
        "std": std,
    }
    return result, save_features(result, out, extra)


def _check_indices(model: nn.Module, out_indices: Sequence[int] | None) -> list[int]:
    num_levels = len(model.feature_info)
    indices = list(range(num_levels) if out_indices is None else out_indices)
    bad = [i for i in indices if not -num_levels <= i < num_levels]
    if bad or not indices or len({i % num_levels for i in indices}) != len(indices):
        raise ConfigError(
            f"out_indices {list(indices)}: need distinct levels of this model's {num_levels} "
            f"(0 = stem, 1..{num_levels - 1} = stages)"
        )
    return [i % num_levels for i in indices]


def _allocate(outputs: list[torch.Tensor], rows: int, names: list[str], max_bytes: int) -> list[torch.Tensor]:
    """Room for every clip's maps, once their shapes are known, or a clear refusal when it is too much."""
    shapes = [(rows, *o.shape[1:]) for o in outputs]
    needed = sum(4 * int(np.prod(s)) for s in shapes)
    if needed > max_bytes:
        listing = ", ".join(f"{n} {tuple(s[1:])}" for n, s in zip(names, shapes, strict=True))
        raise ConfigError(
            f"keeping the spatial maps of {rows} clips needs {needed / 2**30:.2f} GiB ({listing} per clip), "
            f"more than the limit of {max_bytes / 2**30:.2f} GiB: pick fewer --out-indices, fewer views "
            f"(data.num_clips=, data.num_crops=1), pooled maps (no --keep-spatial), or a higher --max-gib"
        )
    return [torch.empty(s) for s in shapes]
