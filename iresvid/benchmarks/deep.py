"""Gradients at initialisation in very deep nets: the iResNet paper's central claim, measured.

Duta et al. argue that a plain ResNet's signal grows with depth, so at initialisation the gradient reaching
the first layers explodes, while iResNet (ResStage roles, improved shortcut) keeps it in check.  Here each
net gets one forward + backward of cross-entropy on a fixed seeded batch in train mode; the first-conv and
classifier gradient norms, their ratio and the logit spread show the effect.  Measured earlier at full width,
seed 0: first-conv gradient norm of ResNet-1001 ≈ 2.8e7 vs iResNet-1001 ≈ 5.7e4, and of CIFAR ResNet-3002
≈ 8.4e5 vs iResNet-3002 ≈ 3.0e3.

Gradient checkpointing is not used: at batch 4 on these inputs the largest net needs under 3 GB (weights,
gradients, activations), and the recorded peak memory shows it.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from iresvid.benchmarks.common import PeakMemory, synchronize
from iresvid.models import create_model

BATCH = 4
SEED = 0
# (families, depths, input size): ImageNet-style nets on 64×64, CIFAR nets on 32×32.
SUITES = (
    (("resnet", "iresnet"), (404, 1001), 64),
    (("resnet_cifar", "preact_resnet_cifar", "iresnet_cifar"), (3002,), 32),
)
# (numerator, denominator, depth) of the reported first-conv gradient ratios.
RATIOS = (
    ("resnet", "iresnet", 404),
    ("resnet", "iresnet", 1001),
    ("resnet_cifar", "iresnet_cifar", 3002),
    ("preact_resnet_cifar", "iresnet_cifar", 3002),
)


def probe(family: str, depth: int, *, size: int, width_scale: float, device: torch.device) -> dict:
    """One forward + backward at initialisation; gradient norms, logit spread, time and peak memory."""
    torch.manual_seed(SEED)
    model = create_model(family, depth=depth, width_scale=width_scale).to(device).train()
    generator = torch.Generator().manual_seed(SEED)
    images = torch.randn(BATCH, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, model.num_classes, (BATCH,), generator=generator).to(device)
    with PeakMemory(device) as mem:
        synchronize(device)
        start = time.perf_counter()
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        synchronize(device)
        elapsed = time.perf_counter() - start
    tensors = [loss, logits] + [p.grad for p in model.parameters() if p.grad is not None]
    finite = all(bool(t.isfinite().all()) for t in tensors)
    conv1 = model.conv1.weight.grad.norm().item()
    fc = model.fc.weight.grad.norm().item()
    return {
        "model": family,
        "depth": depth,
        "width_scale": width_scale,
        "input": f"{BATCH}x3x{size}x{size}",
        "conv1_grad_norm": conv1,
        "fc_grad_norm": fc,
        "conv1_over_fc": conv1 / fc,
        "logit_std": logits.detach().std().item(),
        "loss": loss.item(),
        "time_s": elapsed,
        "peak_mem_mib": mem.mib,
        "finite": finite,
    }


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    width_scale = 1 / 8 if args.quick else 1.0
    results = [
        probe(family, depth, size=size, width_scale=width_scale, device=device)
        for families, depths, size in SUITES
        for depth in depths
        for family in families
    ]
    conv1 = {(r["model"], r["depth"]): r["conv1_grad_norm"] for r in results}
    ratios = {f"first-conv grad {a}{d} / {b}{d}": conv1[a, d] / conv1[b, d] for a, b, d in RATIOS}
    return {
        "config": {
            "batch": BATCH,
            "seed": SEED,
            "width_scale": width_scale,
            "mode": "train (batch statistics), one forward + backward of cross-entropy at initialisation",
            "grad_checkpointing": False,
            "peak_mem": "see iresvid.benchmarks.common: growth during the pass over what was resident",
        },
        "results": results,
        "ratios": ratios,
    }
