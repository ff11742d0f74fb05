"""Clip- and video-level evaluation over ``num_clips × num_crops`` views, in bounded memory.

Clip level scores every view (one clip, one crop) on its own.  Video level averages the softmax
probabilities of all of a video's views (SlowFast / mmaction2 "average as probabilities").  A loader batch
of N clips becomes N × num_crops views, run through the model ``chunk`` views at a time, so memory does not
grow with num_crops; per video only a running sum of probabilities is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from iresvid.data.datasets import DatasetUnreadableError
from iresvid.data.transforms import EvalViews
from iresvid.engine.device import autocast
from iresvid.engine.dist import all_reduce_sum, gather_objects
from iresvid.engine.metrics import AccuracyMeter


@dataclass
class EvalResult:
    clip: AccuracyMeter
    video: AccuracyMeter
    loss: float
    num_videos: int
    failed: list[tuple[str, str]] = field(default_factory=list)  # videos with no readable view
    rereads: int = 0  # frame reads the readers redid through their exact path (timestamp mismatches)
    # (num_videos, num_classes) float64 in dataset order: each video's probabilities averaged over its views
    # (NaN rows: videos not read); what `iresvid.Predictor` gives for the same checkpoint and views.
    probabilities: torch.Tensor | None = None

    def summary(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}loss": self.loss}
        for level, meter in (("clip", self.clip), ("video", self.video)):
            metrics = meter.compute()
            for name in ("top1", "top5", "mean_class_accuracy"):
                out[f"{prefix}{level}_{name}"] = metrics[name]
        out[f"{prefix}failed_videos"] = len(self.failed)
        out[f"{prefix}reread_reads"] = self.rereads
        return out


def readable_views(
    loader,
    views: EvalViews,
    device: torch.device,
    failures: list[tuple[str, str]],
    progress=None,
    rereads: list[int] | None = None,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The readable clips of each batch of an evaluation loader, as views on ``device``.

    Yields (the batch's ``video_index``, ``clip_index`` and ``label`` of those clips, their views
    ``(N * num_crops, C, [T,] S, S)``, sample-major); the loader's reports of unreadable videos are
    appended to ``failures`` (and each batch's reread count to ``rereads``, if given), and a batch with no
    readable clip yields nothing.
    """
    for batch in progress(loader) if progress else loader:
        failures.extend(batch["failures"])
        if rereads is not None:
            rereads.append(batch.get("rereads", 0))
        keep = batch["valid"]
        if not keep.any():
            continue
        keys = ("video_index", "clip_index", "label")
        if keep.all():  # the usual batch: its pinned clips go to the device as they are, asynchronously
            clips, sizes, kept = batch["input"], batch["size"], {key: batch[key] for key in keys}
        else:  # unreadable clips among them (rare): indexed on the host
            clips, sizes, kept = (
                batch["input"][keep],
                batch["size"][keep],
                {key: batch[key][keep] for key in keys},
            )
        # The sizes stay on the host: the views' crop offsets are computed there.
        yield kept, views(clips.to(device, non_blocking=device.type == "cuda"), sizes=sizes)


def device_logits(
    model: nn.Module,
    views: torch.Tensor,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    chunk: int = 32,
) -> torch.Tensor:
    """float32 logits of ``views`` (as `readable_views` yields them), ``chunk`` views per forward pass, left
    on ``device``: nothing waits for the GPU (a caller that needs them on the host calls ``.cpu()``)."""
    with autocast(device, amp_dtype):
        return torch.cat([model(part) for part in views.split(chunk)]).float()


def crop_probability_sums(logits: torch.Tensor, num_crops: int) -> torch.Tensor:
    """Per clip, the sum of its ``num_crops`` views' softmax probabilities, float64 ``(clips, classes)``.

    A video's score is the sum over its clips divided by its number of views: the average of probabilities.
    """
    return logits.softmax(-1).double().view(-1, num_crops, logits.shape[-1]).sum(1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    views: EvalViews,
    *,
    num_classes: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    chunk: int = 32,
    progress=None,
) -> EvalResult:
    """Evaluate ``model`` on an evaluation-mode `ClipDataset` loader (sharded or not)."""
    dataset = loader.dataset
    num_videos = dataset.num_videos
    # Every sum stays on the device until the end: no batch waits for the GPU to finish the one before.
    video_scores = torch.zeros(num_videos, num_classes, dtype=torch.float64, device=device)
    video_views = torch.zeros(num_videos, dtype=torch.float64, device=device)
    clip_meter = AccuracyMeter(num_classes)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, number of views)
    failures: list[tuple[str, str]] = []
    rereads: list[int] = []
    was_training = model.training
    model.eval()
    for batch, x in readable_views(loader, views, device, failures, progress, rereads):
        video_index = batch["video_index"].to(device, non_blocking=True)
        logits = device_logits(model, x, device=device, amp_dtype=amp_dtype, chunk=chunk)
        targets = batch["label"].repeat_interleave(views.num_crops)  # on the host: checked there, no wait
        clip_meter.update(logits, targets)
        targets = targets.to(device, non_blocking=True)
        loss_sum[0] += F.cross_entropy(logits, targets, reduction="sum")
        loss_sum[1] += len(targets)
        video_scores.index_add_(0, video_index, crop_probability_sums(logits, views.num_crops))
        crops = torch.full_like(video_index, views.num_crops, dtype=torch.float64)
        video_views.index_add_(0, video_index, crops)
    model.train(was_training)

    # Combine processes: each evaluated a disjoint shard of the videos (all the views of each).
    reread_count = torch.tensor([sum(rereads)], dtype=torch.float64)
    video_scores, video_views, loss_sum, reread_count = (
        all_reduce_sum(t.to(device)).cpu() for t in (video_scores, video_views, loss_sum, reread_count)
    )
    clip_meter.reduce(all_reduce_sum, device)
    failures = [f for part in gather_objects(failures) for f in part]

    labels = torch.tensor([r.label for r in dataset.records])
    seen = video_views > 0
    if not seen.any():
        listing = "; ".join(f"{p}: {r}" for p, r in failures[:5])
        raise DatasetUnreadableError(f"no video of {dataset.source} could be read for evaluation: {listing}")
    probabilities = video_scores / video_views[:, None]  # 0 / 0: NaN for the videos not read
    video_meter = AccuracyMeter(num_classes)
    video_meter.update(probabilities[seen], labels[seen])
    unread = {str(dataset.records[i].path) for i in torch.nonzero(~seen).flatten().tolist()}
    failed = sorted({f for f in failures if f[0] in unread})
    loss = (loss_sum[0] / loss_sum[1].clamp(min=1)).item()
    return EvalResult(
        clip_meter, video_meter, loss, int(seen.sum()), failed, int(reread_count.item()), probabilities
    )
