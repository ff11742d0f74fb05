"""Predictions of a trained model on videos: per video and per time window, batched, in bounded memory.

The views are the evaluation protocol's, computed by the same functions as ``tools/test.py``: a whole
video is ``num_clips`` uniform clips (`ClipDataset`'s evaluation item) × ``num_crops`` crops
(`build_eval_views`), run ``batch_size`` views at a time (`device_logits`) and averaged as probabilities
(`crop_probability_sums`); so `Predictor` gives, for a video of a test split, exactly the probabilities
`evaluate` averages for it.  A time window is the same protocol on the window's frames: its clips are
uniform within it (a window shorter than one clip is widened to one clip around its centre, within the
video).  Each window is decoded on its own, so a long video never has more than a batch of clips in memory.

Models come from an iresvid training checkpoint (its config and classes), a TorchScript file written by
``tools/export.py`` (the ``export.json`` beside it: classes, normalisation, clip and views), or a bare
state dict with ``model=`` (a registry name) and ``classes=`` (a class-index file or a list of names).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
from torch import nn

from iresvid.config import Config, ConfigError, load_config
from iresvid.data.annotations import VIDEO_EXTENSIONS, Annotations, VideoRecord, read_class_index
from iresvid.data.datasets import ClipDataset, _reason
from iresvid.data.loader import build_loader, collate_clips, resolve_workers
from iresvid.data.sampling import uniform_clips
from iresvid.data.transforms import resize_short_side
from iresvid.data.video_io import open_video
from iresvid.engine.build import (
    build_eval_views,
    build_model,
    eval_videos_per_batch,
    load_trained,
    progress_bar,
)
from iresvid.engine.device import AMP_DTYPES, resolve_device
from iresvid.engine.evaluate import crop_probability_sums, device_logits, readable_views
from iresvid.errors import UserError
from iresvid.files import WriteError, csv_cell, open_new, output_dir
from iresvid.models.weights import read_checkpoint

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".lst", ".list")
_NO_DATA = "data.root=."  # a config for views only: prediction reads no dataset


@dataclass
class WindowPrediction:
    """The top-k of the window ``[start, end)`` seconds."""

    start: float
    end: float
    topk: list[tuple[str, float]]


@dataclass
class Prediction:
    """A video's top-k ``(class name, probability)``, averaged over ``num_views`` views; ``windows`` when
    asked for (they cover ``[0, duration]``); every class's probability with ``probabilities=True``."""

    path: str
    topk: list[tuple[str, float]]
    num_views: int
    duration: float | None = None  # seconds (num_frames / fps); known when windows were asked for
    windows: list[WindowPrediction] = field(default_factory=list)
    probabilities: list[float] | None = None


@dataclass
class Failure:
    """An input that could not be read: named with the reason, skipped, counted."""

    path: str
    error: str


class PredictError(UserError, ValueError):
    """An input to prediction (a video, a window, a model source) that cannot be used; names it."""


def parse_views(views: str | Sequence[int]) -> tuple[int, int]:
    """``"10x3"`` or ``(10, 3)`` → (clips, crops)."""
    if isinstance(views, str):
        parts = views.lower().replace("×", "x").split("x")
        try:
            clips, crops = (int(p) for p in parts)
        except ValueError:
            raise PredictError(f"views must be CLIPSxCROPS, e.g. 10x3, got {views!r}") from None
    else:
        clips, crops = views
    if clips < 1 or crops not in (1, 3):
        raise PredictError(f"views: need at least 1 clip and 1 or 3 crops, got {clips}x{crops}")
    return clips, crops


def window_bounds(duration: float, window: float, stride: float | None = None) -> list[tuple[float, float]]:
    """``[start, end)`` seconds of windows of ``window`` seconds every ``stride`` (default ``window``),
    covering the video: the first starts at 0 and the last ends at ``duration`` (it may be shorter)."""
    stride = window if stride is None else stride
    if window <= 0 or stride <= 0:
        raise PredictError(f"window and stride must be positive seconds, got {window} and {stride}")
    if stride > window:
        raise PredictError(f"stride {stride}s > window {window}s would leave parts of every video unseen")
    count = max(1, math.ceil(round((duration - window) / stride, 9)) + 1)
    return [(k * stride, min(k * stride + window, duration)) for k in range(count)]


def find_videos(inputs: Iterable[str | Path]) -> list[Path]:
    """Videos of ``inputs``: files as given, folders searched recursively for video extensions, and list
    files (``.txt``/``.lst``/``.list``: one path per line, relative to the list's folder; ``#`` comments)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            videos = sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
            if not videos:
                raise PredictError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) found under {item}")
            found += videos
        elif item.suffix.lower() in LIST_SUFFIXES and item.is_file():
            lines = [line.strip() for line in item.read_text().splitlines()]
            found += [item.parent / line for line in lines if line and not line.startswith("#")]
        else:
            found.append(item)  # a missing file is reported as a failure, like an unreadable one
    return found


class _Spans(ClipDataset):
    """Evaluation items over frame spans: item ``i`` is span ``spans[i]`` of its video (None: the whole
    video, exactly `ClipDataset`'s item), with ``num_clips`` uniform clips inside it."""

    def __init__(self, items: Sequence[tuple[Path, tuple[int, int] | None]], classes: list[str], **kwargs):
        records = [VideoRecord(Path(path), 0, str(i)) for i, (path, _) in enumerate(items)]
        annotations = Annotations(records, list(classes), [], source=f"{len(items)} prediction inputs")
        super().__init__(annotations, mode="eval", **kwargs)
        self.spans = [span for _, span in items]

    def _read_clips(self, record: VideoRecord, clip_indices: Sequence[int]):
        span = self.spans[int(record.video_id)]
        if span is None:
            return super()._read_clips(record, clip_indices)
        clip_span = (self.num_frames - 1) * self.frame_stride + 1

        def pick(n: int) -> list[list[int]]:
            first, stop = min(span[0], n - 1), min(span[1], n)
            if stop - first < clip_span:  # widen to one clip around the window's centre, within the video
                first = max(0, min((first + stop) // 2 - clip_span // 2, n - clip_span))
                stop = min(n, first + clip_span)
            uniform = uniform_clips(stop - first, self.num_frames, self.frame_stride, self.num_clips)
            return [[first + i for i in uniform[c]] for c in clip_indices]

        return self._decode(record, pick)


class Predictor:
    """Top-k class predictions of a trained model (see the module docstring for the model sources).

    ``views``: ``"CLIPSxCROPS"`` or ``(clips, crops)``; default the checkpoint's ``data.num_clips ×
    data.num_crops`` (what ``tools/test.py`` uses).  ``batch_size``: views per forward pass (default the
    checkpoint's evaluation batch).  ``amp``: ``"auto"`` (bf16 on CUDA where supported, else fp16; none on
    the CPU), ``"none"``, ``"bf16"`` or ``"fp16"``.  ``overrides``: config ``key=value`` (e.g.
    ``data.test_size=256``, or ``model.width_scale=0.5`` for a bare state dict).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str | torch.device = "auto",
        views: str | Sequence[int] | None = None,
        batch_size: int | None = None,
        amp: str = "auto",
        num_workers: int | None = None,
        model: str | None = None,
        classes: str | Path | Sequence[str] | None = None,
        overrides: Sequence[str] = (),
        use_ema: bool = True,
        progress: bool = False,
    ):
        self.device = resolve_device(device)
        self.model, self.cfg, self.classes, self.source = _load(
            Path(checkpoint), model=model, classes=classes, overrides=list(overrides), use_ema=use_ema
        )
        d = self.cfg.data
        if views is not None:
            d.num_clips, d.num_crops = parse_views(views)
        if num_workers is not None:
            d.num_workers = num_workers
        self.num_clips, self.num_crops = d.num_clips, d.num_crops
        self.batch_size = batch_size or d.eval_batch_size or d.batch_size
        self.amp_dtype = _amp_dtype(amp, self.device)
        self.model.to(self.device).eval()
        self.views = build_eval_views(self.cfg, self.model, self.device, d.num_crops)
        self.progress = progress

    def __repr__(self) -> str:
        return (
            f"Predictor({self.source}, {len(self.classes)} classes, {self.num_clips}x{self.num_crops} views, "
            f"device={self.device})"
        )

    # ----------------------------------------------------------------------------------------- public

    def predict(
        self, video: str | Path | torch.Tensor, topk: int = 5, *, probabilities: bool = False
    ) -> Prediction:
        """The top-k of a video file, or of frames: uint8 ``(T, H, W, C)`` (sampled and cropped like a
        video), or float ``([N,] C, T, H, W)`` views already cropped and normalised (averaged over N)."""
        if isinstance(video, torch.Tensor):
            return self._predict_tensor(video, topk, probabilities)
        [result] = self.predict_many([video], topk=topk, probabilities=probabilities)
        if isinstance(result, Failure):
            raise PredictError(f"cannot predict {result.path}: {result.error}")
        return result

    def predict_windows(
        self,
        video: str | Path,
        window: float,
        stride: float | None = None,
        topk: int = 5,
        *,
        probabilities: bool = False,
    ) -> list[WindowPrediction]:
        """The top-k of each window of ``window`` seconds every ``stride`` seconds (default ``window``)."""
        [result] = self.predict_many(
            [video], window=window, stride=stride, topk=topk, probabilities=probabilities
        )
        if isinstance(result, Failure):
            raise PredictError(f"cannot predict {result.path}: {result.error}")
        return result.windows

    @torch.no_grad()
    def predict_many(
        self,
        videos: Iterable[str | Path],
        *,
        window: float | None = None,
        stride: float | None = None,
        topk: int = 5,
        probabilities: bool = False,
    ) -> Iterator[Prediction | Failure]:
        """A `Prediction` or a `Failure` per video, in order, as soon as each is done; the views of
        several videos and windows share the batches."""
        if stride is not None and window is None:
            raise PredictError("a stride needs a window (--window SECONDS)")
        videos = [Path(v) for v in videos]
        items: list[tuple[Path, tuple[int, int] | None]] = []
        plans: list[dict] = []  # per video: its first item, its window bounds, or its failure
        for path in videos:
            plan: dict = {"path": path, "first": len(items), "windows": [], "duration": None}
            if window is not None:
                try:
                    with open_video(path, self.cfg.data.backend) as reader:
                        num_frames, fps = reader.num_frames, reader.fps
                except Exception as e:  # noqa: BLE001 — an unreadable input is named, skipped and counted
                    plan["error"] = _reason(e)
                    plans.append(plan)
                    continue
                duration = num_frames / fps if fps > 0 else float(num_frames)
                rate = fps if fps > 0 else 1.0
                plan["duration"] = duration
                plan["windows"] = window_bounds(duration, window, stride)
                items.append((path, None))
                for start, end in plan["windows"]:
                    first = min(round(start * rate), num_frames - 1)
                    items.append((path, (first, max(first + 1, min(round(end * rate), num_frames)))))
            else:
                items.append((path, None))
            plans.append(plan)
        if not items:
            yield from (self._failure(plan) for plan in plans)
            return
        k = min(topk, len(self.classes))
        next_plan = 0
        for done_upto, sums, views_read, failures in self._run(items):
            # A video is done once the batches have passed its last item (its windows follow its own item).
            while next_plan < len(plans):
                plan = plans[next_plan]
                if "error" in plan:
                    yield self._failure(plan)
                elif plan["first"] + len(plan["windows"]) <= done_upto:
                    yield self._result(plan, sums, views_read, failures, k, probabilities)
                else:
                    break
                next_plan += 1

    # -------------------------------------------------------------------------------------- internals

    def _run(self, items):
        """Yields ``(items done up to this index, sums, views read, failures)`` after every batch; the
        dicts hold the running sums of probabilities and the views read per item."""
        d = self.cfg.data
        dataset = _Spans(
            items,
            self.classes,
            num_frames=d.num_frames,
            frame_stride=d.frame_stride,
            num_clips=d.num_clips,
            short_side=d.test_size,
            backend=d.backend,
            max_retries=d.max_decode_retries,
            seed=self.cfg.train.seed,
        )
        loader = build_loader(
            dataset,
            batch_size=eval_videos_per_batch(self.batch_size, d.num_clips, d.num_crops),
            shuffle=False,
            num_workers=min(resolve_workers(d.num_workers), len(items), os.cpu_count() or 1),
            pin_memory=self.device.type == "cuda",
            prefetch_factor=d.prefetch_factor,
        )
        seen: list[int] = [-1]
        bar = progress_bar(self.progress, desc=f"predict {d.num_clips}×{d.num_crops} views", unit="batch")

        def tracked(batches):
            for batch in bar(batches) if bar else batches:
                seen[0] = max(seen[0], int(batch["video_index"].max()))
                yield batch

        sums: dict[int, torch.Tensor] = {}
        views_read: dict[int, int] = {}
        failures: list[tuple[str, str]] = []
        for batch, x in readable_views(loader, self.views, self.device, failures, tracked):
            logits = self._logits(x)
            clip_sums = crop_probability_sums(logits, self.num_crops)
            for item, clip in zip(batch["video_index"].tolist(), clip_sums, strict=True):
                sums[item] = sums[item] + clip if item in sums else clip
                views_read[item] = views_read.get(item, 0) + self.num_crops
            yield seen[0], sums, views_read, failures
        yield len(items), sums, views_read, failures

    def _result(self, plan, sums, views_read, failures, k, probabilities) -> Prediction | Failure:
        first, windows = plan["first"], plan["windows"]
        item_range = range(first, first + 1 + len(windows))
        unread = [i for i in item_range if not views_read.get(i)]
        if unread:
            path = str(plan["path"])
            reason = next((r for p, r in reversed(failures) if p == path), "no frame could be read")
            where = "" if unread[0] == first else f" (window {windows[unread[0] - first - 1]})"
            for i in item_range:
                sums.pop(i, None), views_read.pop(i, None)
            return Failure(path, f"{reason}{where}")
        num_views = views_read[first]  # fewer than clips × crops where some clips could not be read
        probs = {i: (sums.pop(i) / views_read.pop(i)).float() for i in item_range}
        video = probs[first]
        return Prediction(
            path=str(plan["path"]),
            topk=self._topk(video, k),
            num_views=num_views,
            duration=plan["duration"],
            windows=[
                WindowPrediction(start, end, self._topk(probs[first + 1 + j], k))
                for j, (start, end) in enumerate(windows)
            ],
            probabilities=video.tolist() if probabilities else None,
        )

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = device_logits(
            self.model, x, device=self.device, amp_dtype=self.amp_dtype, chunk=self.batch_size
        )
        return logits.cpu()

    @staticmethod
    def _failure(plan) -> Failure:
        return Failure(str(plan["path"]), plan["error"])

    def _topk(self, probs: torch.Tensor, k: int) -> list[tuple[str, float]]:
        values, indices = probs.topk(k)
        return [(self.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]

    @torch.no_grad()
    def _predict_tensor(self, frames: torch.Tensor, topk: int, probabilities: bool) -> Prediction:
        k = min(topk, len(self.classes))
        if frames.dtype == torch.uint8:
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise PredictError(f"uint8 frames must be (T, H, W, 3), got {tuple(frames.shape)}")
            d = self.cfg.data
            clips = uniform_clips(len(frames), d.num_frames, d.frame_stride, d.num_clips)
            picked = resize_short_side(frames[[i for clip in clips for i in clip]], d.test_size)
            item = {
                "input": torch.stack(picked.permute(3, 0, 1, 2).split(d.num_frames, dim=1)),
                "label": 0,
                "index": 0,
                "size": torch.tensor(picked.shape[1:3]),
                "failures": [],
                "valid": True,
                "rereads": 0,
                "video_index": 0,
                "clip_valid": [True] * len(clips),
            }
            [(_, x)] = list(readable_views([collate_clips([item])], self.views, self.device, []))
            num_crops = self.num_crops
        elif frames.is_floating_point():
            x = frames if frames.ndim == 5 else frames[None]
            x, num_crops = x.to(self.device), 1
        else:
            raise PredictError(f"frames must be uint8 (T, H, W, 3) or float views, got {frames.dtype}")
        logits = self._logits(x)
        video = (crop_probability_sums(logits, num_crops).sum(0) / len(logits)).float()
        return Prediction(
            path="<tensor>",
            topk=self._topk(video, k),
            num_views=len(logits),
            probabilities=video.tolist() if probabilities else None,
        )


def _amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    if amp in (None, "none"):
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp not in AMP_DTYPES:
        raise PredictError(f"amp must be 'auto' or one of {tuple(AMP_DTYPES)}, got {amp!r}")
    return AMP_DTYPES[amp]


def _load(
    path: Path, *, model: str | None, classes, overrides: list[str], use_ema: bool
) -> tuple[nn.Module, Config, list[str], str]:
    """(model in eval mode, the config of its views, class names, a description of the source)."""
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.is_dir():  # an export folder
        path = path / "model.pt"
    if model is not None:
        if classes is None:
            raise PredictError("a bare state dict needs classes= (a class-index file or a list of names)")
        names = list(read_class_index(classes)) if isinstance(classes, str | Path) else list(classes)
        entry = _default_cfg(model)  # the clip the architecture's default config describes
        defaults = [f"data.frame_stride={entry['frame_stride']}"] if "frame_stride" in entry else []
        if len(entry.get("input_size", ())) == 4:
            defaults.append(f"data.num_frames={entry['input_size'][1]}")
        cfg = load_config(None, [_NO_DATA, *defaults, *overrides])  # later overrides win
        cfg.model.name, cfg.model.pretrained, cfg.model.reset_classifier = model, str(path), False
        built = build_model(cfg, len(names))
        return built.eval(), cfg, names, f"{path} ({model})"
    if _is_torchscript(path):
        return _load_torchscript(path, classes, overrides)
    state = read_checkpoint(path)
    if not (isinstance(state, dict) and "classes" in state and "config" in state):
        raise PredictError(
            f"{path} is neither an iresvid training checkpoint nor a TorchScript export; for a bare state "
            f"dict give the architecture and the classes (--model NAME --classes FILE)"
        )
    built, cfg, names = load_trained(path, overrides=overrides, use_ema=use_ema)
    return built, cfg, names, str(path)


def _default_cfg(name: str) -> dict:
    from iresvid.models import get_model_entry

    try:
        return dict(get_model_entry(name).default_cfg)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())  # torch.save archives have no code


def _load_torchscript(path: Path, classes, overrides: list[str]) -> tuple[nn.Module, Config, list[str], str]:
    meta_path = path.parent / "export.json"
    if not meta_path.is_file():
        raise PredictError(f"{path} is TorchScript without the export.json tools/export.py writes beside it")
    meta = json.loads(meta_path.read_text())
    names = meta.get("classes")
    if classes is not None:
        names = list(read_class_index(classes)) if isinstance(classes, str | Path) else list(classes)
    if not names:
        raise PredictError(f"{meta_path} names no classes: give them (--classes FILE)")
    shape = meta["input"]["shape"]  # [N, C, T, H, W]
    if len(shape) != 5:
        raise PredictError(f"{path}: prediction on videos needs a 3D model, the export's input is {shape}")
    clip, views = meta.get("clip", {}), meta.get("views", {})
    settings = [
        f"data.num_frames={shape[2]}",
        f"data.frame_stride={clip.get('frame_stride', 8)}",
        f"data.test_size={views.get('test_size', shape[3])}",
        f"data.test_crop_size={views.get('crop_size', shape[3])}",
        f"data.num_clips={views.get('num_clips', 10)}",
        f"data.num_crops={views.get('num_crops', 3)}",
        f"data.mean={json.dumps(meta['mean'])}",
        f"data.std={json.dumps(meta['std'])}",
    ]
    if "clip" not in meta:
        log.warning("%s has no clip/views record (an older export): assuming frame stride 8", meta_path)
    cfg = load_config(None, [_NO_DATA, *settings, *overrides])
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice: the export is TorchScript
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated.*")
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    return scripted, cfg, list(names), f"{path} (TorchScript)"


@dataclass
class PredictSummary:
    """What a run of `write_predictions` did: how many videos were predicted, which failed and why."""

    predicted: int = 0
    failed: list[Failure] = field(default_factory=list)

    def text(self, out: str | Path | None = None) -> str:
        total = self.predicted + len(self.failed)
        wrote = f"; wrote {out}" if out else ""
        if not self.failed:
            return f"{total} videos predicted{wrote}"
        listing = "; ".join(f"{f.path} ({f.error})" for f in self.failed[:10])
        more = f" and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""
        return (
            f"error: {len(self.failed)} of {total} videos could not be read and were skipped: {listing}{more}"
            f"; {self.predicted} predicted{wrote}"
        )


def write_predictions(
    results: Iterable[Prediction | Failure], out: str | Path | None, *, topk: int, echo: bool = False
) -> PredictSummary:
    """Write ``results`` as they come: ``.jsonl`` (one `Prediction` or `Failure` per line, as
    `dataclasses.asdict`) or ``.csv`` (a row per video and per window: path, level, start, end, class_1,
    prob_1, …, error; names and paths as text cells, `csv_cell`); ``echo`` also prints them.  Returns the
    counts.  ``out`` is opened before the first result is computed (`open_output`)."""
    import csv
    import dataclasses

    out = Path(out) if out else None
    if out is not None and out.suffix not in (".jsonl", ".csv"):
        raise PredictError(f"--out must be a .jsonl or .csv file, got {out}")
    summary = PredictSummary()
    handle = open_output(out) if out is not None else None
    try:
        writer = None
        if out is not None and out.suffix == ".csv":
            writer = csv.writer(handle)
            ranks = [name for r in range(1, topk + 1) for name in (f"class_{r}", f"prob_{r}")]
            writer.writerow(["path", "level", "start", "end", *ranks, "error"])
        for result in results:
            if isinstance(result, Failure):
                summary.failed.append(result)
            else:
                summary.predicted += 1
            if echo:
                print(_format(result), flush=True)
            try:
                if writer is not None:
                    for row in _csv_rows(result, topk):
                        writer.writerow(row)
                elif handle is not None:
                    handle.write(json.dumps(dataclasses.asdict(result)) + "\n")
                if handle is not None:
                    handle.flush()
            except OSError as e:  # a full disk: one line naming the file, which keeps what was written
                raise WriteError(out, f"{type(e).__name__}: {e}", e.errno) from e
    finally:
        if handle is not None:
            handle.close()
    return summary


def open_output(path: str | Path) -> IO[str]:
    """``path`` opened to write text into as results come, never through a link: its folder is checked
    (`output_dir`), an existing entry of that name (the user's earlier output, or a planted link) is
    removed, not followed, and the file is created new (`open_new`).  A write error is a `WriteError`."""
    path = Path(path)
    output_dir(path.parent)
    if os.path.isdir(path) and not os.path.islink(path):
        raise WriteError(path, "it is a folder; name a .jsonl or .csv file")
    try:
        if os.path.lexists(path):
            os.unlink(path)  # a link itself, never what it points to
        return io.TextIOWrapper(open_new(path), encoding="utf-8", newline="")
    except OSError as e:
        raise WriteError(path, f"{type(e).__name__}: {e}", e.errno) from e


def _csv_rows(result: Prediction | Failure, topk: int) -> list[list]:
    if isinstance(result, Failure):
        return [[csv_cell(result.path), "video", "", "", *[""] * (2 * topk), csv_cell(result.error)]]

    def ranked(pairs):
        cells = [value for name, p in pairs for value in (csv_cell(name), f"{p:.6f}")]
        return cells + [""] * (2 * topk - len(cells))

    path = csv_cell(result.path)
    rows = [[path, "video", 0.0, result.duration or "", *ranked(result.topk), ""]]
    rows += [[path, "window", w.start, w.end, *ranked(w.topk), ""] for w in result.windows]
    return rows


def _format(result: Prediction | Failure) -> str:
    if isinstance(result, Failure):
        return f"{result.path}\n  error: {result.error}"

    def ranked(pairs):
        return "  ".join(f"{name} {p:.3f}" for name, p in pairs)

    lines = [result.path, f"  {'video':<15}{ranked(result.topk)}"]
    lines += [f"  {f'{w.start:.2f}-{w.end:.2f}s':<15}{ranked(w.topk)}" for w in result.windows]
    return "\n".join(lines)
