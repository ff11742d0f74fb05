"""Export a model for deployment (TorchScript, ONNX), and prove each file computes what the model does.

An exported file is only trusted after it is reloaded (``torch.jit.load``, an onnxruntime session) and run
on fixed random inputs at two batch sizes (the batch axis is dynamic, T/H/W are fixed at export): the
largest difference to the eager model is written to ``export.json`` and must stay within ``rtol`` times
the output scale.  Tracing, not scripting: our models trace to the same graph for any batch size.

Each file is exported into memory, checked from those bytes, and written by `atomic_write`: what is checked
is what lands on disk, and a link planted at ``model.pt`` is replaced, never followed.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from iresvid.engine.build import load_trained, norm_stats
from iresvid.errors import UserError
from iresvid.files import atomic_write, output_dir
from iresvid.models import create_model

FORMATS = ("torchscript", "onnx")
FILENAMES = {"torchscript": "model.pt", "onnx": "model.onnx"}
LAYOUTS = {2: "(N, C, H, W)", 3: "(N, C, T, H, W)"}
# Deprecation notices for the legacy exporters (still the working path for conv nets on torch 2.x); they
# would drown out the warnings that matter, such as a TracerWarning about data-dependent control flow.
_QUIET = (
    r".*legacy TorchScript-based ONNX export.*",
    r".*The feature will be removed.*",
    r".*torch\.jit\.\w+.*deprecated.*",
)


class ExportCheckError(UserError, RuntimeError):
    """A reloaded export computes something other than the eager model."""


def load_for_export(
    *,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    pretrained: str | Path | None = None,
    num_classes: int | None = None,
    overrides: Sequence[str] = (),
    use_ema: bool = True,
) -> tuple[nn.Module, tuple[int, ...], dict]:
    """A model in eval mode from a training checkpoint or a registry name, its default clip shape ([T,] H,
    W: the checkpoint's evaluation clip, else the model's default input), and the metadata a deployment
    needs (``mean``/``std``, ``classes``, where the weights came from)."""
    if (checkpoint is None) == (model_name is None):
        raise ValueError("give either a training checkpoint or a registry model name")
    if checkpoint is not None:
        model, cfg, classes = load_trained(checkpoint, overrides=list(overrides), use_ema=use_ema)
        mean, std = norm_stats(cfg, model)
        crop = cfg.data.test_crop_size or cfg.data.test_size
        spatial = (crop, crop)
        clip_shape = (cfg.data.num_frames, *spatial) if model.dims == 3 else spatial
        d = cfg.data
        # The evaluation protocol: `iresvid predict` on the exported file then sees what tools/test.py sees.
        source = {
            "checkpoint": str(checkpoint),
            "model": cfg.model.name,
            "clip": {"num_frames": d.num_frames, "frame_stride": d.frame_stride},
            "views": {
                "test_size": d.test_size,
                "crop_size": crop,
                "num_clips": d.num_clips,
                "num_crops": d.num_crops,
            },
        }
    else:
        model = create_model(
            model_name, pretrained=str(pretrained) if pretrained else None, num_classes=num_classes
        )
        classes = None
        defaults = model.pretrained_cfg
        mean, std = list(defaults["mean"]), list(defaults["std"])
        clip_shape = tuple(defaults["input_size"][1:])
        source = {"model": model_name, "pretrained": str(pretrained) if pretrained else None}
    return model.eval(), tuple(clip_shape), dict(source, mean=list(mean), std=list(std), classes=classes)


def example_input(model: nn.Module, clip_shape: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A fixed random normalised input ``(batch, C, [T,] H, W)`` for ``model`` (``clip_shape``: [T,] H, W)."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    dims = getattr(model, "dims", len(clip_shape))
    if len(clip_shape) != dims:
        sizes = "T,H,W" if dims == 3 else "H,W"
        raise ValueError(f"a {dims}D model needs a clip shape {sizes}, got {','.join(map(str, clip_shape))}")
    in_chans = model.conv1.in_channels if hasattr(model, "conv1") else 3
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_chans, *clip_shape, generator=generator)


@torch.no_grad()
def export_model(
    model: nn.Module,
    example: torch.Tensor,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    *,
    metadata: dict | None = None,
    opset: int = 17,
    rtol: float = 1e-4,
) -> dict:
    """Write ``model`` (on the CPU, in eval mode) in each of ``formats`` to ``out_dir``, reload each file and
    compare it to the eager model on ``example`` and on a batch one larger; write ``export.json``.

    Returns the report written to ``export.json``.  Raises `ExportCheckError` when a reloaded file differs
    from the eager model by more than ``rtol × max(1, max |eager output|)`` (the files stay, for inspection).
    ``out_dir`` is checked first (`output_dir`: not a symlink, nor another user's, writable).
    """
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be some of {FORMATS}, got {list(formats)}")
    out_dir = output_dir(out_dir)
    model = model.cpu().eval()
    example = example.cpu().float()
    second = torch.randn(example.shape[0] + 1, *example.shape[1:], generator=torch.Generator().manual_seed(1))
    inputs = {example.shape[0]: example, second.shape[0]: second}
    expected = {n: model(x) for n, x in inputs.items()}
    scale = max(1.0, max(out.abs().max().item() for out in expected.values()))
    tolerance = rtol * scale

    diffs: dict[str, dict[str, float]] = {}
    for fmt in formats:
        data, run = _EXPORTERS[fmt](model, example, opset)
        diffs[fmt] = {f"batch_{n}": (run(x) - expected[n]).abs().max().item() for n, x in inputs.items()}
        atomic_write(out_dir / FILENAMES[fmt], data)
    report = {
        **(metadata or {}),
        "files": {fmt: FILENAMES[fmt] for fmt in formats},
        "input": {
            "layout": LAYOUTS[example.ndim - 2],
            "shape": list(example.shape),
            "dtype": "float32",
            "dynamic_axes": ["N"],
            "preprocessing": "RGB scaled to [0, 1], then (x - mean) / std per channel",
        },
        "output": {"name": _output_name(model), "shape": ["N", int(expected[example.shape[0]].shape[-1])]},
        "max_abs_diff": diffs,
        "output_scale": scale,
        "tolerance": tolerance,
        "torch": torch.__version__,
        "onnx_opset": opset if "onnx" in formats else None,
    }
    bad = {
        f"{fmt} {batch}": d for fmt, per in diffs.items() for batch, d in per.items() if not d <= tolerance
    }
    if bad:
        raise ExportCheckError(
            f"reloaded exports differ from the eager model by more than {tolerance:.3g} "
            f"({rtol} × output scale {scale:.3g}): {bad}; the files in {out_dir} are kept for inspection"
        )
    atomic_write(out_dir / "export.json", json.dumps(report, indent=2))
    return report


def _output_name(model: nn.Module) -> str:
    return "logits" if getattr(model, "num_classes", 1) > 0 else "features"


@contextlib.contextmanager
def _quiet_exporters():
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        yield


# An exporter returns the file's bytes and a function running the model reloaded from exactly those bytes.


def _export_torchscript(model: nn.Module, example: torch.Tensor, opset: int):
    buffer = io.BytesIO()
    with _quiet_exporters():
        # check_trace re-runs the trace for an eager comparison that the reload check below does better.
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), buffer)
        data = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    return data, loaded


def _export_onnx(model: nn.Module, example: torch.Tensor, opset: int):
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxruntime (pip install 'iresvid[onnx]'): {e}") from e

    output = _output_name(model)
    buffer = io.BytesIO()
    with _quiet_exporters():
        # The TorchScript-based exporter: it needs no onnxscript and handles every layer of our conv nets.
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=[output],
            dynamic_axes={"input": {0: "N"}, output: {0: "N"}},
        )
    data = buffer.getvalue()
    onnx.checker.check_model(data)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return data, lambda x: torch.from_numpy(session.run([output], {"input": x.numpy()})[0])


_EXPORTERS = {"torchscript": _export_torchscript, "onnx": _export_onnx}
