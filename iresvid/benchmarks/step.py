"""The training step on the device, piece by piece: the parts of `iresvid.benchmarks.gpu_check` that time it.

Each ``*_part`` function returns one JSON section of the check (the layout is in gpu_check's docstring); a
`StepConfig` holds every size, for an H200 or for ``--quick`` (tiny nets and inputs on any device: the code
path, not a figure).

The step timed here is written as the trainer writes it, not called from it: zero_grad, forward under
autocast, cross-entropy of the float32 logits, backward, optimizer step (SGD, Nesterov momentum 0.9, weight
decay 1e-4: the trainer's default optimizer), with the step's loss and correct count summed on the device
as a step without host reads keeps them.  The trainer's own step is measured by the `resume_part`, which
runs whole `Trainer` fits on the synthetic demo set.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import DeviceType
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from iresvid.benchmarks.common import measure_interleaved, synchronize
from iresvid.engine.device import autocast
from iresvid.engine.evaluate import device_logits
from iresvid.engine.precise_bn import update_bn_stats
from iresvid.engine.syncs import count_host_reads
from iresvid.models import create_model

GIB = 2**30
NUM_CLASSES = 400  # Kinetics-400, our 3D models' default head
EMA_DECAY = 0.9998


@dataclass(frozen=True)
class StepConfig:
    model: str
    width_scale: float
    frames: int
    size: int  # the training crop
    eval_size: int  # the evaluation views' side (a test crop of the short side)
    batches: tuple[int, ...]  # the micro-batches of step_anatomy
    batch: int  # the micro-batch of compile, ema and precise BN: 16, as the train rows' (benchmarks.train)
    warmup: int
    repeats: int
    profiled_steps: int  # steps under torch.profiler for the GPU-busy fraction
    compile_steps: int  # training steps of the compiled model before its validation pass
    compile_backend: str
    eval_batches: tuple[int, ...]  # views per evaluation forward pass
    precise_bn_batches: int
    transfer_shape: tuple[int, ...]  # a uint8 loader batch (N, C, T, H, W) at the prepared sets' size
    resume_steps: int  # the whole run; the cut one stops at half of it
    resume_width: float

    def input_shape(self, batch: int, size: int | None = None) -> tuple[int, ...]:
        return (batch, 3, self.frames, size or self.size, size or self.size)


def step_config(cuda: bool, quick: bool) -> StepConfig:
    if quick:
        return StepConfig(
            model="iresnet3d18",
            width_scale=1 / 8,
            frames=4,
            size=32,
            eval_size=40,
            batches=(1, 2),
            batch=2,
            warmup=1,
            repeats=2,
            profiled_steps=1,
            compile_steps=4,
            # aot_eager on the CPU: dynamo and AOTAutograd trace as under inductor (graphs and recompiles
            # count alike) without inductor's C++ builds, which take minutes even for a tiny net.
            compile_backend="inductor" if cuda else "aot_eager",
            eval_batches=(2, 4),
            precise_bn_batches=3,
            transfer_shape=(2, 3, 4, 32, 57),
            resume_steps=8,
            resume_width=1 / 8,
        )
    # Estimates for an H200: step_anatomy ~65 s (cuDNN tunes each new shape), compile ~110 s (inductor
    # builds and autotunes the forward and backward graphs), evaluation ~30 s, resume ~25 s, ema ~10 s.
    return StepConfig(
        model="iresnet3d50",
        width_scale=1.0,
        frames=8,
        size=224,
        eval_size=256,
        batches=(8, 16, 32, 64),
        batch=16,
        warmup=2,  # the first call tunes cuDNN (benchmark mode) or compiles; the second settles the allocator
        repeats=6,
        profiled_steps=2,
        compile_steps=30,
        compile_backend="inductor",
        eval_batches=(16, 32, 64, 128),
        precise_bn_batches=20,
        transfer_shape=(16, 3, 8, 256, 455),  # 16:9 videos at short side 256, as `iresvid prepare` writes
        resume_steps=20,
        resume_width=1 / 4,
    )


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on a GPU, as the shipped configs train; none on the CPU, where bf16 convolutions are slow."""
    return torch.bfloat16 if device.type == "cuda" else None


def new_model(config: StepConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(config.model, width_scale=config.width_scale).to(device)
    return model.to(memory_format=torch.channels_last_3d).train()


def clip_batch(
    config: StepConfig, batch: int, device: torch.device, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random clips (channels-last, as `GpuAugment` gives them) and labels, on ``device``."""
    generator = torch.Generator().manual_seed(batch)
    clips = torch.randn(config.input_shape(batch, size), generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    return clips.to(device).contiguous(memory_format=torch.channels_last_3d), labels.to(device)


def train_step(
    model: nn.Module, dtype: torch.dtype | None, parameters: Iterable[nn.Parameter] | None = None
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A training step of ``model``, as the trainer's, with its statistics kept on the device (see above).

    ``parameters``: what the optimizer steps (``model``'s own by default; those of the module a
    ``torch.compile`` wrapper calls).
    """
    optimizer = torch.optim.SGD(
        model.parameters() if parameters is None else parameters,
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
    )
    totals = None

    def step(clips: torch.Tensor, labels: torch.Tensor) -> None:
        nonlocal totals
        optimizer.zero_grad(set_to_none=True)
        with autocast(clips.device, dtype):
            logits = model(clips)
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        stats = torch.stack([loss.detach(), (logits.argmax(-1) == labels).sum().float()])
        totals = stats if totals is None else totals + stats

    return step


# ------------------------------------------------------------------------------------------ step_anatomy


def busy_fraction(intervals: Iterable[tuple[float, float]], wall_s: float) -> float:
    """The share of ``wall_s`` covered by at least one of the (start, end) ``intervals``, in [0, 1].

    A union, not a sum: kernels on several streams, or CPU operators nested in others, overlap.
    """
    if wall_s <= 0:
        raise ValueError(f"wall time must be positive, got {wall_s}")
    covered, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return min(1.0, covered / wall_s)


def profiled_busy(step: Callable[[], None], device: torch.device, steps: int, step_s: float) -> float:
    """The fraction of the step's wall time the device works, from `torch.profiler` (see ``busy_fraction``).

    On a GPU: the union of its kernels and copies over ``steps`` steps, divided by ``steps`` unprofiled
    steps' wall time (``step_s`` each), since tracing slows the host, not the kernels.  On the CPU: the union
    of the operators over the profiled steps' own wall time, which tracing slows alike.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activity, kind = (
        (ProfilerActivity.CUDA, DeviceType.CUDA) if cuda else (ProfilerActivity.CPU, DeviceType.CPU)
    )
    with profile(activities=[activity]) as prof:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall = time.perf_counter() - start
    intervals = [
        (e.time_range.start / 1e6, e.time_range.end / 1e6) for e in prof.events() if e.device_type == kind
    ]
    return busy_fraction(intervals, steps * step_s if cuda else wall)


def first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def anatomy_row(
    step: Callable[[torch.Tensor, torch.Tensor], None],
    batch: int,
    benchmark: bool,
    config: StepConfig,
    device: torch.device,
) -> dict:
    """One step_anatomy row: ``step`` on a micro-batch of ``batch`` clips with cuDNN benchmark mode as said.

    An out-of-memory is the row's answer (``{"out_of_memory": ...}``), not an error of the check.
    """
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    try:
        clips, labels = clip_batch(config, batch, device)
        run = functools.partial(step, clips, labels)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timing = measure_interleaved({"step": run}, device, warmup=config.warmup, repeats=config.repeats)
        timing = timing["step"]
        # measure_interleaved resets the peak counter just before its memory call: one steady-state step.
        peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
        with count_host_reads() as reads:  # its own step: the mode's Python hook per operator is not timed
            run()
        sync = sync_check(run, device)
        busy = profiled_busy(run, device, config.profiled_steps, timing.median_s)
    except torch.OutOfMemoryError as error:
        return {"out_of_memory": first_line(error)}
    finally:
        torch.backends.cudnn.benchmark = previous
    return {
        "clips_per_s": batch / timing.median_s,
        "step_ms": 1000 * timing.median_s,
        "first_step_s": timing.first_call_s,  # with benchmark mode: cuDNN's tuning of this shape
        "busy_fraction": busy,
        "peak_mem_gib": peak,
        "host_reads_per_step": reads.total,
        "host_reads_by_kind": dict(reads.counts),
        "sync_debug": sync,
        "input_shape": list(config.input_shape(batch)),
    }


def sync_check(run: Callable[[], None], device: torch.device) -> str | None:
    """``"clean"`` when a step runs under ``torch.cuda.set_sync_debug_mode("error")``, else what stopped it
    (the first synchronising call); None on the CPU, which has nothing to wait for."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
        return "clean"
    except RuntimeError as error:
        return first_line(error)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        synchronize(device)  # after the mode is off: this wait is the check's, not the step's


# ------------------------------------------------------------------------------------------------ compile


def _dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "frames": counters["frames"]["ok"],  # frames dynamo compiled: the first compile and each recompile
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
    }


def _since(before: dict[str, int]) -> dict[str, int]:
    now = _dynamo_counts()
    return {key: now[key] - before[key] for key in now}


def validation_pass(model: nn.Module, config: StepConfig, device: torch.device) -> int:
    """What the trainer's validation does to the model it trains, on the module itself and not on its
    compiled wrapper (`Trainer.validate` evaluates ``Trainer.model``): precise BN, then eval-mode forward
    passes without gradients at the evaluation views' size, the last one short; returns the views seen."""
    dtype = amp_dtype(device)
    clips, _ = clip_batch(config, config.batch, device)
    update_bn_stats(model, [clips, clips], amp_dtype=dtype)  # sets and restores every BN's momentum
    chunk = config.eval_batches[0]
    views = chunk + chunk // 2  # one full forward pass, one short one
    clips, _ = clip_batch(config, views, device, config.eval_size)
    model.eval()
    try:
        with torch.no_grad():
            device_logits(model, clips, device=device, amp_dtype=dtype, chunk=chunk)
        synchronize(device)
    finally:
        model.train()
    return views


def compile_part(config: StepConfig, device: torch.device) -> dict:
    """``torch.compile`` of the model as the trainer compiles it (``model.compile``: the training forward
    pass): its compile time, the frames compiled over ``compile_steps`` steps, during a validation pass and
    in the training steps after it (any is a recompile: the validation left something a guard checks
    changed), and its speed-up over eager."""
    dtype = amp_dtype(device)
    eager = new_model(config, device)
    source = copy.deepcopy(eager)
    compiled = torch.compile(source, backend=config.compile_backend)
    eager_step = train_step(eager, dtype)
    compiled_step = train_step(compiled, dtype, source.parameters())
    clips, labels = clip_batch(config, config.batch, device)
    try:
        before = _dynamo_counts()
        start = time.perf_counter()
        compiled_step(clips, labels)
        synchronize(device)
        compile_s = time.perf_counter() - start
        first = _since(before)
        before = _dynamo_counts()
        for _ in range(config.compile_steps - 1):
            compiled_step(clips, labels)
        synchronize(device)
        training = _since(before)
        before = _dynamo_counts()
        start = time.perf_counter()
        views = validation_pass(source, config, device)
        validation_s = time.perf_counter() - start
        validation = _since(before)
        before = _dynamo_counts()
        timing = measure_interleaved(
            {"eager": lambda: eager_step(clips, labels), "compiled": lambda: compiled_step(clips, labels)},
            device,
            warmup=config.warmup,
            repeats=config.repeats,
        )
        after = _since(before)
    finally:
        torch._dynamo.reset()  # its caches would keep both models alive into the next part
    return {
        "model": config.model,
        "backend": config.compile_backend,
        "batch": config.batch,
        "input_shape": list(config.input_shape(config.batch)),
        "compile_s": compile_s,  # the first step: tracing and code generation of forward and backward
        "first_step_frames": first["frames"],
        "graph_breaks": first["graph_breaks"] + training["graph_breaks"],
        "steps": config.compile_steps,
        "recompiles_training": training["frames"],  # steps 2..N, the same batch: 0 when nothing is unstable
        "validation_views": views,
        "validation_s": validation_s,
        "compiles_validation": validation["frames"],  # 0: validation runs the module, not the wrapper
        "recompiles_after_validation": after["frames"],  # 0: modes and BN momenta are back as they were
        "step_ms_eager": 1000 * timing["eager"].median_s,
        "step_ms_compiled": 1000 * timing["compiled"].median_s,
        "speedup": timing["eager"].median_s / timing["compiled"].median_s,
    }


# --------------------------------------------------------------------------------------------- evaluation


def evaluation_part(config: StepConfig, device: torch.device) -> dict:
    """Views/s of the evaluation forward pass (`device_logits`, what `evaluate` runs per batch) at each
    evaluation batch size, and the time of precise BN (`update_bn_stats`) over ``precise_bn_batches``."""
    dtype = amp_dtype(device)
    model = new_model(config, device).eval()
    rows = []
    for batch in config.eval_batches:
        rows.append({"batch": batch} | _eval_row(model, batch, config, device, dtype))
    clips, _ = clip_batch(config, config.batch, device)
    update_bn_stats(model, [clips], amp_dtype=dtype)  # cuDNN's tuning of the training-mode shapes
    synchronize(device)
    start = time.perf_counter()
    seen = update_bn_stats(model, itertools.repeat(clips, config.precise_bn_batches), amp_dtype=dtype)
    synchronize(device)
    precise_s = time.perf_counter() - start
    with count_host_reads() as reads:  # apart from the timing: the mode's per-operator hook costs time
        update_bn_stats(model, itertools.repeat(clips, 2), amp_dtype=dtype)
    return {
        "model": config.model,
        "view_shape": list(config.input_shape(1, config.eval_size))[1:],
        "rows": rows,
        "precise_bn": {
            "batches": seen,
            "batch": config.batch,
            "s": precise_s,
            "ms_per_batch": 1000 * precise_s / seen,
            "host_reads_per_batch": reads.total // 2,
        },
    }


def _eval_row(model: nn.Module, batch: int, config: StepConfig, device: torch.device, dtype) -> dict:
    try:
        views, _ = clip_batch(config, batch, device, config.eval_size)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            timing = measure_interleaved(
                {"eval": lambda: device_logits(model, views, device=device, amp_dtype=dtype, chunk=batch)},
                device,
                warmup=config.warmup,
                repeats=config.repeats,
            )["eval"]
    except torch.OutOfMemoryError as error:
        return {"out_of_memory": first_line(error)}
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return {"views_per_s": batch / timing.median_s, "batch_ms": 1000 * timing.median_s, "peak_mem_gib": peak}


# ---------------------------------------------------------------------------------------------------- ema


def ema_part(config: StepConfig, device: torch.device) -> dict:
    """The cost of an EMA update after each step: ``AveragedModel`` (EMA ``multi_avg_fn``, buffers too, on
    the device) and, where it exists, the trainer's `iresvid.engine.ema.ModelEma`; against no EMA."""
    dtype = amp_dtype(device)
    model = new_model(config, device)
    step = train_step(model, dtype)
    clips, labels = clip_batch(config, config.batch, device)
    averages: dict[str, nn.Module] = {
        "averaged_model": AveragedModel(
            model, device=device, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY), use_buffers=True
        )
    }
    try:
        from iresvid.engine.ema import ModelEma

        averages["model_ema"] = ModelEma(model, EMA_DECAY)
    except ImportError:  # an older tree: AveragedModel alone
        pass
    steps = {"none": lambda: step(clips, labels)}
    for name, average in averages.items():
        steps[name] = then_update(functools.partial(step, clips, labels), average, model)
    timing = measure_interleaved(steps, device, warmup=config.warmup, repeats=config.repeats)
    updates = measure_interleaved(
        {name: then_update(None, average, model) for name, average in averages.items()},
        device,
        warmup=config.warmup,
        repeats=config.repeats,
    )
    variants = []
    for name, average in averages.items():
        with count_host_reads() as reads:
            average.update_parameters(model)
        variants.append(
            {
                "kind": name,
                "step_ms": 1000 * timing[name].median_s,
                "cost_ms_per_step": 1000 * (timing[name].median_s - timing["none"].median_s),
                "update_ms": 1000 * updates[name].median_s,
                "host_reads_per_update": reads.total,
            }
        )
    return {
        "model": config.model,
        "batch": config.batch,
        "decay": EMA_DECAY,
        "step_ms_without": 1000 * timing["none"].median_s,
        "variants": variants,
    }


def then_update(step: Callable[[], None] | None, average: nn.Module, model: nn.Module) -> Callable[[], None]:
    """``step`` (if any), then the average's update from ``model``."""

    def run() -> None:
        if step is not None:
            step()
        average.update_parameters(model)

    return run


# ----------------------------------------------------------------------------------------------- transfer


def gb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def transfer_part(config: StepConfig, device: torch.device) -> dict:
    """Host-to-device bandwidth of a uint8 clip batch from pageable and from pinned memory (what the
    training loader's ``pin_memory`` buys)."""
    pageable = torch.randint(0, 256, config.transfer_shape, dtype=torch.uint8, generator=torch.Generator())
    pinned = pageable.pin_memory()
    timing = measure_interleaved(
        {
            "pageable": lambda: pageable.to(device),
            "pinned": lambda: pinned.to(device, non_blocking=True),
        },
        device,
        warmup=config.warmup,
        repeats=max(config.repeats, 10),
    )
    nbytes = pageable.numel() * pageable.element_size()
    return {
        "shape": list(config.transfer_shape),
        "dtype": "uint8",
        "mb": nbytes / 1e6,
        "pageable_gb_per_s": gb_per_s(nbytes, timing["pageable"].median_s),
        "pinned_gb_per_s": gb_per_s(nbytes, timing["pinned"].median_s),
        "pageable_ms": 1000 * timing["pageable"].median_s,
        "pinned_ms": 1000 * timing["pinned"].median_s,
    }


# ------------------------------------------------------------------------------------------------- resume


def resume_config(data: Path, out: Path, steps: int, config: StepConfig, device: torch.device, resume=None):
    """A tiny run of ``steps`` steps in one epoch on the demo set, as the device trains (bf16 and
    channels-last on a GPU), with loader workers on a GPU so the host reads counted are the training's."""
    from iresvid.config import load_config

    cuda = device.type == "cuda"
    return load_config(
        {
            "name": "gpu_check_resume",
            "model": {
                "name": "iresnet3d18",
                "inflate": "full",
                "stem_temporal_kernel": 3,
                "width_scale": config.resume_width,
                "drop_rate": 0.0,
                "channels_last": cuda,
            },
            "data": {
                "format": "ucf101",
                "root": str(data),
                "train_dir": "videos",
                "val_dir": "videos",
                "annotation_dir": "annotations",
                "num_frames": 4,
                "frame_stride": 2,
                "decode_short_side": 32,
                "crop_size": 28,
                "jitter_sizes": [28, 32],
                "test_size": 32,
                "test_crop_size": 28,
                "num_clips": 1,
                "num_crops": 1,
                "batch_size": 2,
                "num_workers": 2 if cuda else 0,
            },
            "optim": {"name": "sgd", "lr": 0.05, "base_batch_size": 2},
            "schedule": {"name": "cosine", "epochs": 1, "warmup_epochs": 0.25},
            "train": {
                "output_dir": str(out),
                "resume": resume,
                "device": device.type,
                "amp": "bf16" if cuda else "none",
                "max_steps_per_epoch": steps,
                "eval_every": 0,
                "save_every": 0,
                "progress": False,
            },
        }
    )


def stop_at(trainer, steps: int) -> None:
    """Make ``trainer`` stop (`Trainer.request_stop`, as a preemption does) after its step ``steps``: its
    model's ``steps``-th training forward pass asks, the trainer stops once that step is done."""
    seen = 0

    def hook(module: nn.Module, args) -> None:
        nonlocal seen
        if module.training and torch.is_grad_enabled():  # not validation, not precise BN
            seen += 1
            if seen == steps:
                trainer.request_stop()

    trainer.model.register_forward_pre_hook(hook)


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts' entries (BN's batch counts too)."""
    if a.keys() != b.keys():
        raise ValueError(f"the state dicts differ in keys: {sorted(a.keys() ^ b.keys())[:5]}")
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a), default=0.0)


def resume_part(root: Path, config: StepConfig, device: torch.device) -> dict:
    """A whole run of ``resume_steps`` steps, and the same run stopped at half and resumed
    (``train.resume=auto``): their weights' largest difference, 0 where training is deterministic (the
    CPU).  On a GPU a second whole run gives the noise floor of its nondeterministic kernels, and the host
    reads of the whole run's training epoch (`count_host_reads`) are the trainer's own step's."""
    from iresvid.data.synthetic import make_demo_data
    from iresvid.engine.trainer import Trainer, TrainingInterrupted

    data = root / "demo"
    steps, half = config.resume_steps, config.resume_steps // 2
    # 4 videos a class leave 3 a class to train on (24 clips: 12 steps of 2), 8 leave 6 (24 steps); the
    # fewer, the shorter each run's final evaluation.
    per_class = 4 if steps <= 12 else 8
    make_demo_data(data, layout="ucf101", videos_per_class=per_class, num_frames=16, size=(32, 32))
    start = time.perf_counter()
    whole = Trainer(resume_config(data, root / "whole", steps, config, device))
    epoch, reads = whole.train_one_epoch, count_host_reads()

    def counted_epoch() -> dict:
        with reads:
            return epoch()

    whole.train_one_epoch = counted_epoch  # this instance only: fit calls it once, its only epoch
    whole.fit()
    whole_s = time.perf_counter() - start

    cut = Trainer(resume_config(data, root / "cut", steps, config, device))
    stop_at(cut, half)
    try:
        cut.fit()
    except TrainingInterrupted:
        pass
    else:
        raise RuntimeError(f"the run asked to stop at step {half} ran to its end")
    stopped = cut.step
    resumed = Trainer(resume_config(data, root / "cut", steps, config, device, resume="auto"))
    resumed.fit()
    result = {
        "model": "iresnet3d18",
        "steps": steps,
        "stopped_at": stopped,
        "whole_step": whole.step,
        "resumed_step": resumed.step,
        "max_abs_diff": max_abs_diff(resumed.model.state_dict(), whole.model.state_dict()),
        "repeat_max_abs_diff": None,
        "whole_run_s": whole_s,
        "trainer_host_reads_per_step": reads.total / whole.step,
        "trainer_host_reads": reads.total,
        "trainer_host_reads_by_kind": dict(reads.counts),
    }
    if device.type == "cuda":
        again = Trainer(resume_config(data, root / "again", steps, config, device))
        again.fit()
        result["repeat_max_abs_diff"] = max_abs_diff(again.model.state_dict(), whole.model.state_dict())
    return result
