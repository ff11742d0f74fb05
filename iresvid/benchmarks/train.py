"""Training-step speed: iresnet3d50 against our resnet3d50 and pytorchvideo's slow_r50, in one run.

One step is zero_grad → forward → cross-entropy → backward → SGD step, on the same clip batch for every
candidate.  Our two nets use the same "slow" inflation as slow_r50 (temporal kernels in res4/res5 only), so
the ratios isolate the cost of iResNet's changes and of our implementation against pytorchvideo's.
Every candidate is timed in both memory layouts (contiguous, and ``channels_last_3d`` as the shipped 3D
configs train); on CUDA the fast path (bf16 autocast, ``channels_last_3d``, ``torch.compile``) too.
"""

from __future__ import annotations

import argparse
import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iresvid.benchmarks.common import goal, measure_interleaved
from iresvid.engine.device import autocast
from iresvid.models import create_model

NUM_CLASSES = 400  # Kinetics-400, the default of our 3D models and of slow_r50
OURS = ("iresnet3d50", "resnet3d50")
PEER = "pytorchvideo_slow_r50"
FAST = "bf16 autocast + channels_last_3d + torch.compile"
CL = "channels_last_3d"


@dataclass(frozen=True)
class TrainConfig:
    batch: int
    frames: int
    size: int
    width_scale: float
    warmup: int
    repeats: int
    fast_path: bool
    note: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, 3, self.frames, self.size, self.size)


def config_for(device: torch.device, quick: bool) -> TrainConfig:
    if quick:
        return TrainConfig(2, 4, 32, 1 / 8, 1, 3, False, "quick: tiny sizes for the smoke test, not a result")
    if device.type == "cuda":
        return TrainConfig(16, 8, 224, 1.0, 3, 20, True, "the Slow 8x8 training input at full size")
    return TrainConfig(2, 8, 112, 1.0, 2, 10, False, "CPU: 112x112, since 224x224 is too slow on a few cores")


def pytorchvideo_slow_r50(config: TrainConfig) -> nn.Module:
    """pytorchvideo's hub ``slow_r50`` (same builder arguments), with its head pool sized to the input.

    The hub's (8, 7, 7) head pool is the whole final map of an 8×224×224 clip; at other sizes the pool is
    that map's size, so the head still averages over everything, as ours does.  Its head keeps slow_r50's
    dropout (0.5), which costs nothing measurable on a 2048-vector.
    """
    with warnings.catch_warnings():  # pytorchvideo's import-time torch.jit.script calls warn; not ours to fix
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        from pytorchvideo.models.resnet import create_resnet

    return create_resnet(
        model_depth=50,
        model_num_class=NUM_CLASSES,
        stem_dim_out=round(64 * config.width_scale),
        stem_conv_kernel_size=(1, 7, 7),
        head_pool_kernel_size=(config.frames, math.ceil(config.size / 32), math.ceil(config.size / 32)),
    )


def candidate(name: str, config: TrainConfig) -> nn.Module:
    """A fresh network of one of the compared candidates: a name of ``OURS``, or ``PEER``."""
    if name == PEER:
        return pytorchvideo_slow_r50(config)
    return create_model(name, width_scale=config.width_scale)


def random_batch(config: TrainConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded clip batch and labels every candidate trains on."""
    generator = torch.Generator().manual_seed(0)
    clips = torch.randn(config.input_shape, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (config.batch,), generator=generator).to(device)
    return clips, labels


def sgd_step(model: nn.Module, *, bf16: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One SGD training step of ``model`` on the batch it is called with."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step(clips: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(clips.device, torch.bfloat16 if bf16 else None):
            loss = F.cross_entropy(model(clips), labels)
        loss.backward()
        optimizer.step()

    return step


def training_step(
    model: nn.Module, clips: torch.Tensor, labels: torch.Tensor, *, bf16: bool
) -> Callable[[], None]:
    """One SGD training step of ``model`` on a fixed batch, as a closure to time."""
    step = sgd_step(model, bf16=bf16)
    return lambda: step(clips, labels)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    config = config_for(device, args.quick)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    clips, labels = random_batch(config, device)

    torch.manual_seed(0)
    models = {name: candidate(name, config) for name in (*OURS, PEER)}
    variants = dict.fromkeys(models, "eager fp32")
    steps = {
        name: training_step(model.to(device).train(), clips, labels, bf16=False)
        for name, model in models.items()
    }
    # The layout the shipped 3D configs train in (model.channels_last): on CPUs too it changes the ranking,
    # because the channels-last 3×3×3 max-pool of iResNet shortcuts is ~10× faster than the contiguous one.
    cl_clips = clips.contiguous(memory_format=torch.channels_last_3d)
    for name in list(models):
        model = copy.deepcopy(models[name]).to(memory_format=torch.channels_last_3d)
        models[f"{name} {CL}"] = model
        variants[f"{name} {CL}"] = f"eager fp32, {CL}"
        steps[f"{name} {CL}"] = training_step(model, cl_clips, labels, bf16=False)
    if config.fast_path:
        fast_clips = clips.contiguous(memory_format=torch.channels_last_3d)
        for name in OURS:
            model = create_model(name, width_scale=config.width_scale).to(device)
            model = model.to(memory_format=torch.channels_last_3d).train()
            models[f"{name} fast"] = model
            variants[f"{name} fast"] = FAST
            steps[f"{name} fast"] = training_step(torch.compile(model), fast_clips, labels, bf16=True)

    measured = measure_interleaved(steps, device, warmup=config.warmup, repeats=config.repeats)
    results = []
    for name, m in measured.items():
        stats = m.as_dict()
        row = {
            "model": name,
            "variant": variants[name],
            "params_m": sum(p.numel() for p in models[name].parameters()) / 1e6,
            "step_ms": stats.pop("median_ms"),
            "clips_per_s": config.batch / m.median_s,
        }
        results.append(row | stats)

    def ratio(a: str, b: str) -> float:
        return measured[a].median_s / measured[b].median_s

    goal_pairs = [("iresnet3d50", "resnet3d50", 1.05), ("resnet3d50", PEER, 1.0), ("iresnet3d50", PEER, 1.0)]
    pairs = [(a, b) for a, b, _ in goal_pairs] + [(f"{a} {CL}", f"{b} {CL}") for a, b, _ in goal_pairs]
    if config.fast_path:
        pairs += [("iresnet3d50 fast", "resnet3d50 fast")] + [(f"{n} fast", n) for n in OURS]
    ratios = {f"{a} / {b}": ratio(a, b) for a, b in pairs}
    goals = [
        goal(f"step time {a}{suffix} / {b}{suffix}", ratios[f"{a}{suffix} / {b}{suffix}"], limit)
        for suffix in ("", f" {CL}")
        for a, b, limit in goal_pairs
    ]
    return {
        "config": asdict(config)
        | {
            "input_shape": list(config.input_shape),
            "step": "zero_grad, forward, cross-entropy, backward, SGD(momentum 0.9, wd 1e-4) step",
            "order": "interleaved round-robin over candidates; ratios are of median step times",
            "cudnn_benchmark": device.type == "cuda",
        },
        "results": results,
        "ratios": ratios,
        "goals": goals,
    }
