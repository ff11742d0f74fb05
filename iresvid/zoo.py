"""The model-zoo table: parameters and GFLOPs (fvcore) of every registered model at its default input.

GFLOPs are fvcore's count, one multiply-add = one FLOP, the convention of the ResNet, iResNet and SlowFast
papers (ResNet-50: 4.1 GFLOPs at 224×224; Slow-only R50 8×8: 41.9 GFLOPs per 8×224×224 view).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from iresvid.models import create_model, get_model_entry, list_models


@dataclass(frozen=True)
class ZooRow:
    name: str
    dims: int
    params_m: float
    gflops: float | None
    input_size: tuple[int, ...]
    description: str


def complexity(name: str, *, flops: bool = True, **overrides) -> ZooRow:
    """Parameters (millions) and GFLOPs of one view at the model's default input size."""
    entry = get_model_entry(name)
    model = create_model(name, **overrides).eval()
    input_size = tuple(model.pretrained_cfg["input_size"])
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gflops = None
    if flops:
        from fvcore.nn import FlopCountAnalysis

        # fvcore logs every op it does not count (max-pool, add, …): they are not multiply-adds.
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, torch.zeros(1, *input_size))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            gflops = analysis.total() / 1e9
    return ZooRow(name, entry.dims, params, gflops, input_size, entry.family.description)


def zoo_rows(pattern: str = "*", *, flops: bool = True, progress=None) -> list[ZooRow]:
    rows = []
    for name in list_models(pattern, by_family=True):
        rows.append(complexity(name, flops=flops))
        if progress is not None:
            progress(rows[-1])
    return rows


def format_table(rows: list[ZooRow], *, markdown: bool = False) -> str:
    header = ("model", "dims", "params (M)", "GFLOPs", "input")
    lines = []
    for r in rows:
        gflops = "—" if r.gflops is None else f"{r.gflops:.2f}"
        lines.append(
            (r.name, f"{r.dims}D", f"{r.params_m:.2f}", gflops, "×".join(map(str, r.input_size[1:])))
        )
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [header, *lines])
