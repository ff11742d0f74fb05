"""Accuracy metrics that fit in memory and reduce across processes, their reports, and the run's metric log.

Conventions:

* Accuracies are percentages (0–100), like the logs of timm and SlowFast and the trainer's ``train_top1``.
* Top-k ranks the classes by score, ties going to the lower class index (a stable descending sort), so
  results never depend on ``torch.topk``'s unspecified tie order; top-1 is then exactly ``argmax``.  A NaN
  score ranks last: a diverged model scores 0, not 100.  ``k`` larger than the number of classes means all.
* ``mean_class_accuracy`` is the mean, over the classes present in the targets, of each class's recall
  (= sklearn's ``balanced_accuracy_score``).  mmaction2 also averages in classes that were only predicted,
  scoring them 0, so it reads lower when some classes are missing from the targets (e.g. a val subset).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from iresvid.files import atomic_open, atomic_write, csv_cell, open_append, output_dir, plot_text

log = logging.getLogger(__name__)

_PNG_DPI = 100


def _clean(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated ``(N, K)`` scores with NaN → -inf, and ``(N,)`` int64 targets on the scores' device."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, num_classes), got shape {tuple(scores.shape)}")
    if targets.shape != scores.shape[:1] or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(
            f"targets must be N={scores.shape[0]} class indices, got {targets.dtype} {tuple(targets.shape)} "
            f"(soft / mixed targets: pass their argmax)"
        )
    # Checked where it costs no wait: targets on the host (a device tensor's min and max would make the CPU
    # wait for the GPU; an evaluation passes its labels from the host batch for this reason).
    on_host = targets.device.type == "cpu"
    if len(targets) and on_host and not 0 <= int(targets.min()) <= int(targets.max()) < scores.shape[1]:
        raise ValueError(f"targets must lie in [0, {scores.shape[1]}), got {targets.min()}..{targets.max()}")
    return torch.nan_to_num(scores, nan=-math.inf), targets.to(scores.device, torch.int64, non_blocking=True)


def _target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target class: classes scoring higher, plus equal ones with a lower index."""
    target_score = scores.gather(1, targets[:, None])
    lower_index = torch.arange(scores.shape[1], device=scores.device) < targets[:, None]
    ahead = (scores > target_score) | ((scores == target_score) & lower_index)
    return ahead.sum(1)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many targets are among the ``k`` best-scored classes, for each ``k`` (capped at num_classes)."""
    ranks = _target_ranks(*_clean(logits, targets))
    return {k: int((ranks < k).sum()) for k in ks}


class ClassAccuracy(NamedTuple):
    index: int
    support: int  # samples of this class among the targets
    correct: int  # of which predicted (top-1) as this class
    accuracy: float  # recall in %, NaN when support is 0


class AccuracyMeter:
    """Top-k accuracy and the top-1 confusion matrix, accumulated batch by batch in fixed memory.

    Keeps a ``(K, K)`` int64 confusion matrix (rows: target, columns: top-1 prediction) and the top-k hit
    counts, never the scores.  Counts are exact integers, so processes combine by summing them:
    ``meter.reduce(torch.distributed.all_reduce, device)`` (or `state_tensor` / `merge` by hand).
    """

    def __init__(self, num_classes: int, ks: Sequence[int] = (1, 5)):
        if num_classes < 1 or not ks or min(ks) < 1:
            raise ValueError(f"need num_classes >= 1 and ks >= 1, got {num_classes}, {ks}")
        self.num_classes = num_classes
        self.ks = tuple(ks)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.topk_hits = torch.zeros(len(self.ks), dtype=torch.int64)

    @property
    def num_samples(self) -> int:
        return int(self.confusion.sum())

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``scores`` ``(N, K)`` (logits or probabilities, any device), ``targets`` ``(N,)``."""
        if scores.shape[-1] != self.num_classes:
            raise ValueError(f"scores have {scores.shape[-1]} classes, the meter {self.num_classes}")
        scores, targets = _clean(scores.detach(), targets.detach())
        ranks = _target_ranks(scores, targets)
        # The counts live where the scores are: nothing comes back to the host until they are read.  An
        # index_add_ of ones, not bincount, whose CUDA kernel reads the largest index back to size its output.
        if self.confusion.device != scores.device:
            self.confusion, self.topk_hits = (
                self.confusion.to(scores.device),
                self.topk_hits.to(scores.device),
            )
        self.topk_hits += torch.stack([(ranks < k).sum() for k in self.ks])
        pairs = targets * self.num_classes + scores.argmax(1)
        self.confusion.view(-1).index_add_(0, pairs, torch.ones_like(pairs))

    # ------------------------------------------------------------------------- combining processes

    def state_tensor(self) -> torch.Tensor:
        """All counts as one flat int64 tensor, to be summed across processes."""
        return torch.cat([self.confusion.flatten(), self.topk_hits])

    def merge(self, state: torch.Tensor) -> None:
        """Add another meter's `state_tensor` (same ``num_classes`` and ``ks``) to this one."""
        self._set_state(self.state_tensor().cpu() + self._checked(state).cpu())

    def reduce(self, all_reduce: Callable[[torch.Tensor], Any], device: torch.device | str = "cpu") -> None:
        """Replace the counts by their sum over processes.

        ``all_reduce`` sums a tensor in place on every process, as ``torch.distributed.all_reduce`` does;
        ``device`` is where it wants the tensor (CUDA for NCCL).  Every process must call this.
        """
        state = self.state_tensor().to(device)
        all_reduce(state)
        self._set_state(self._checked(state).cpu())

    def _checked(self, state: torch.Tensor) -> torch.Tensor:
        expected = self.num_classes**2 + len(self.ks)
        if state.shape != (expected,):
            raise ValueError(f"state of shape {tuple(state.shape)} does not fit this meter's ({expected},)")
        return state

    def _set_state(self, state: torch.Tensor) -> None:
        self.confusion = state[: self.num_classes**2].view(self.num_classes, self.num_classes).clone()
        self.topk_hits = state[self.num_classes**2 :].clone()

    # ---------------------------------------------------------------------------------- results

    def per_class(self) -> list[ClassAccuracy]:
        support = self.confusion.sum(1).tolist()
        correct = self.confusion.diagonal().tolist()
        return [
            ClassAccuracy(i, s, c, 100.0 * c / s if s else math.nan)
            for i, (s, c) in enumerate(zip(support, correct, strict=True))
        ]

    def compute(self) -> dict[str, float]:
        """``top{k}`` for each k, ``mean_class_accuracy`` (in %) and ``num_samples``; NaN when empty."""
        n = self.num_samples
        out = {
            f"top{k}": 100.0 * hits / n if n else math.nan
            for k, hits in zip(self.ks, self.topk_hits.tolist(), strict=True)
        }
        present = [c.accuracy for c in self.per_class() if c.support]
        out["mean_class_accuracy"] = sum(present) / len(present) if present else math.nan
        out["num_samples"] = n
        return out


def most_confused_classes(meter: AccuracyMeter, n: int) -> list[int]:
    """The ``n`` classes most involved in errors, worst first (ties: lower index first).

    A class counts its misclassified samples plus the samples of other classes predicted as it, so both
    sides of a frequent confusion ``a → b`` are among the chosen classes.
    """
    off_diagonal = meter.confusion.clone()
    off_diagonal.fill_diagonal_(0)
    involvement = off_diagonal.sum(0) + off_diagonal.sum(1)
    order = sorted(range(meter.num_classes), key=lambda c: (-int(involvement[c]), c))
    return order[:n]


# ------------------------------------------------------------------------------------------- reports


def _class_names(classes: Sequence[str] | None, num_classes: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a meter of {num_classes} classes")
    return [str(c) for c in classes]


def write_per_class_csv(path: str | os.PathLike, classes: Sequence[str] | None, meter: AccuracyMeter) -> Path:
    """One row per class: index, class, support, correct, accuracy (%; empty for classes without samples).

    A class name is a text cell (`csv_cell`): ``=HYPERLINK(…)`` is shown, never run, by a spreadsheet."""
    path = Path(path)
    names = _class_names(classes, meter.num_classes)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "class", "support", "correct", "accuracy"])
        for c in meter.per_class():
            accuracy = "" if math.isnan(c.accuracy) else round(c.accuracy, 4)
            writer.writerow([c.index, csv_cell(names[c.index]), c.support, c.correct, accuracy])
    return path


def write_reports(
    folder: str | os.PathLike,
    meter: AccuracyMeter,
    classes: Sequence[str] | None,
    history: Sequence[dict[str, Any]] | None = None,
) -> list[Path]:
    """``per_class.csv``, ``confusion_matrix.png`` and, given a ``history``, ``curves.png`` in ``folder``.

    A plot matplotlib fails to draw (a font, a backend, text it cannot lay out) is logged and left out: the
    end of a run keeps its other reports.  A file that cannot be written raises `WriteError`, as always.
    Returns the files written.
    """
    folder = Path(folder)
    written = [write_per_class_csv(folder / "per_class.csv", classes, meter)]
    plots = {"confusion_matrix.png": lambda: confusion_matrix_png(meter, classes)}
    if history is not None:
        plots["curves.png"] = lambda: curves_png(history)
    for name, draw in plots.items():
        try:
            png = draw()
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            log.warning("%s was not drawn (%s); the other reports are written", folder / name, reason)
            continue
        written.append(atomic_write(folder / name, png))
    return written


def _figure(width: float, height: float):
    # The object API with an explicit Agg canvas: no pyplot, so no global backend switch, no GUI, and no
    # figure left registered in pyplot's manager (a long training process would leak them).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_PNG_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, **savefig) -> bytes:
    # Drawn in memory, then written by `atomic_write`: savefig(path) would open a planted link at path.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig)
    return buffer.getvalue()


def plot_confusion_matrix(
    path: str | os.PathLike,
    meter: AccuracyMeter,
    classes: Sequence[str] | None = None,
    *,
    max_classes: int = 50,
) -> Path:
    """A PNG heatmap of the confusion matrix, each row normalised by its class's number of samples.

    Beyond ``max_classes`` classes only the `most_confused_classes` are drawn, with names: a 400-class
    heatmap cannot be read.  Their rows keep the normalisation over all classes, so a row sums to less than
    1 when some of its samples went to classes not drawn.
    """
    return atomic_write(path, confusion_matrix_png(meter, classes, max_classes=max_classes))


def confusion_matrix_png(
    meter: AccuracyMeter, classes: Sequence[str] | None = None, *, max_classes: int = 50
) -> bytes:
    """The PNG of `plot_confusion_matrix`, as bytes."""
    from matplotlib.colors import PowerNorm

    names = _class_names(classes, meter.num_classes)
    counts = meter.confusion.double()
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    if meter.num_classes <= max_classes:
        shown = list(range(meter.num_classes))
        title = "Confusion matrix (rows normalised)"
    else:
        shown = most_confused_classes(meter, max_classes)
        title = f"The {max_classes} most confused of {meter.num_classes} classes (rows normalised over all)"
    index = torch.tensor(shown)
    sub = rates[index][:, index].numpy()
    n = len(shown)
    side = min(max(0.22 * n + 3.0, 5.0), 24.0)
    fontsize = max(4.0, min(9.0, 360.0 / n))
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    # A square-root colour scale: the off-diagonal rates that matter are small next to the diagonal.
    norm = PowerNorm(0.5, vmin=0.0, vmax=1.0)
    image = ax.imshow(sub, cmap="Blues", norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    labels = [plot_text(names[c][:32]) for c in shown]  # a "$" in a name would start mathtext
    ax.set_xticks(range(n), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= 15:  # few enough cells to print each rate
        for i in range(n):
            for j in range(n):
                color = "white" if sub[i, j] > 0.3 else "black"
                ax.text(j, i, f"{sub[i, j]:.2f}", ha="center", va="center", fontsize=fontsize, color=color)
    return _png(fig, bbox_inches="tight")


_CURVE_PANELS = (
    ("loss", ("loss",)),
    ("accuracy (%)", ("top1", "top5", "mean_class_accuracy")),
    ("learning rate", ("lr",)),
)


def plot_curves(path: str | os.PathLike, history: Sequence[dict[str, Any]]) -> Path:
    """A PNG of the per-epoch losses, accuracies and learning rate in ``history`` (one dict per epoch).

    Series are found by key suffix (``train_loss``, ``val_video_top1``…); an epoch may lack any of them
    (e.g. validation every few epochs).  The x axis is ``epoch`` where given, else the position in history.
    """
    return atomic_write(path, curves_png(history))


def curves_png(history: Sequence[dict[str, Any]]) -> bytes:
    """The PNG of `plot_curves`, as bytes."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for position, entry in enumerate(history, start=1):
        x = entry.get("epoch", position)
        for key, value in entry.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(x)
                ys.append(value)
    fig = _figure(6.0 * len(_CURVE_PANELS), 4.5)
    for i, (ylabel, suffixes) in enumerate(_CURVE_PANELS):
        ax = fig.add_subplot(1, len(_CURVE_PANELS), i + 1)
        keys = sorted(k for k in series if k.endswith(suffixes))
        for key in keys:
            ax.plot(*series[key], marker="o", markersize=3, label=plot_text(key))
        if keys:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------------------------------- logging


def _plain(key: str, value: Any) -> Any:
    """A JSON/CSV-ready scalar: 1-element tensors and numpy scalars become Python numbers."""
    if hasattr(value, "item"):  # torch.Tensor, numpy scalar or array
        try:
            value = value.item()
        except (ValueError, RuntimeError) as e:
            raise TypeError(f"metric {key!r} is not a scalar: {e}") from e
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"metric {key!r} is a {type(value).__name__}, not a number or string")


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {key: csv_cell(value) for key, value in row.items()}  # a logged text is a text cell


class MetricsLogger:
    """Append-only metric logs of a run: ``metrics.jsonl``, ``metrics.csv`` and TensorBoard events.

    Each `log` call is one JSON line and one CSV row, with ``step`` and ``time`` (Unix seconds) first.  The
    CSV has a column for every key ever logged: when a call brings new keys, the file is rewritten once with
    the wider header (old rows get empty cells), so it always reads as one table; this happens only the
    first time each kind of record appears.  ``metrics.jsonl`` is never rewritten.  Both are flushed after
    every call, so a crash loses nothing logged.  A logger opened on an existing directory (a resumed run)
    appends.  It does no collective communication: construct and use it on rank 0 only.

    Nothing is written through a link: the directory must not be a symlink or another user's
    (`output_dir`), the logs are appended to only when they are regular files of this user's
    (`open_append`: the run's own, from before a resume), the CSV is rewritten by `atomic_open`.
    """

    def __init__(self, directory: str | os.PathLike, *, tensorboard: bool = True):
        self.directory = output_dir(directory)
        self.jsonl_path = self.directory / "metrics.jsonl"
        self.csv_path = self.directory / "metrics.csv"
        self._jsonl = open_append(self.jsonl_path)
        try:
            self._csv = open_append(self.csv_path, newline="")
        except BaseException:
            self._jsonl.close()
            raise
        self._columns = next(csv.reader(io.StringIO(self._read_csv())), [])
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                log.warning("TensorBoard logging off: %s", e)
            else:
                # A random suffix: the event file's name (time, host, pid) cannot be foreseen, so no link
                # can wait for it (TensorBoard opens it by name).
                suffix = f".{secrets.token_hex(4)}"
                self._tb = SummaryWriter(log_dir=str(self.directory), filename_suffix=suffix)

    def _read_csv(self) -> str:
        """The CSV as written so far; never through a link (`open_append` has checked it is our file)."""
        fd = os.open(self.csv_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, encoding="utf-8", newline="") as f:
            return f.read()

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "train/") -> None:
        """Record ``metrics`` at ``step``, keys prefixed (``train/loss``: TensorBoard groups by prefix)."""
        now = time.time()
        row = {"step": int(step), "time": round(now, 3)}
        row.update({prefix + key: _plain(key, value) for key, value in metrics.items()})
        # NaN / inf are written as JSON's common extension (NaN, Infinity), which Python reads back.
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        new_columns = [key for key in row if key not in self._columns]
        if new_columns:
            self._columns += new_columns
            self._rewrite_csv(row)
        else:
            csv.DictWriter(self._csv, self._columns).writerow(_csv_row(row))
            self._csv.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("step", "time") and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, global_step=int(step), walltime=now)

    def _rewrite_csv(self, row: dict[str, Any]) -> None:
        self._csv.close()
        old_rows = list(csv.DictReader(io.StringIO(self._read_csv())))
        # `atomic_open`: a crash mid-rewrite leaves the old table, never half of one, and the temporary
        # file has a random name no link can be planted at.
        with atomic_open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, self._columns, restval="")
            writer.writeheader()
            writer.writerows(old_rows)
            writer.writerow(_csv_row(row))
        self._csv = open_append(self.csv_path, newline="")

    def close(self) -> None:
        self._jsonl.close()
        self._csv.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
