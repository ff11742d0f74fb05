"""The typed configuration schema: every key, its type, its default and what it means, in one place.

YAML files under ``configs/`` only override these defaults (PySlowFast's ``defaults.py`` idea, with types).
``iresvid config`` prints this schema with the help texts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from iresvid.data.video_io import BACKENDS, DEFAULT_BACKEND
from iresvid.errors import ConfigError
from iresvid.models.resnet import INFLATIONS


def doc(default, help: str, **checks):
    """A field with its help text and value checks kept as metadata: ``choices``, and the bounds ``min`` /
    ``max`` (inclusive) and ``above`` / ``below`` (exclusive), which bound every element of a list.  Every
    float must be finite (`check_value`)."""
    factory = isinstance(default, list | dict)
    metadata = {"help": help, **checks}
    if factory:
        return field(
            default_factory=lambda: list(default) if isinstance(default, list) else dict(default),
            metadata=metadata,
        )
    return field(default=default, metadata=metadata)


def check_value(key: str, value, checks: Mapping) -> None:
    """Refuse, in one `ConfigError` line naming ``key``, a value outside its ``choices`` or bounds, and NaN
    or an infinity in any float: NaN passes every ``<`` comparison, so it must be named to be refused."""
    choices = checks.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"'{key}' must be one of {list(choices)}, got {value!r}")
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue
        if not math.isfinite(item):
            raise ConfigError(f"'{key}' must be a finite number, got {value!r}")
        if not _within(item, checks):
            bounds = _bounds_text(checks)
            if isinstance(value, list):
                raise ConfigError(
                    f"'{key}' must not contain {item!r}: each value must be {bounds}, got {value}"
                )
            raise ConfigError(f"'{key}' must be {bounds}, got {value!r}")


def _within(x: float, checks: Mapping) -> bool:
    low, high = checks.get("min"), checks.get("max")
    above, below = checks.get("above"), checks.get("below")
    return (
        (low is None or x >= low)
        and (high is None or x <= high)
        and (above is None or x > above)
        and (below is None or x < below)
    )


def _bounds_text(checks: Mapping) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``: the bounds as a person reads them."""
    low = ("[", checks["min"]) if "min" in checks else ("(", checks["above"]) if "above" in checks else None
    high = ("]", checks["max"]) if "max" in checks else (")", checks["below"]) if "below" in checks else None
    if low and high:
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    return f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"


def _number(x: float) -> str:
    return format(x, "g") if isinstance(x, float) else str(x)


@dataclass
class ModelConfig:
    name: str = doc("iresnet3d50", "registry name (iresvid.list_models()) or family builder with `depth`")
    depth: int | None = doc(None, "depth for a family builder name such as 'iresnet3d'", min=8)
    pretrained: str | None = doc(
        None,
        "checkpoint to start from: official iResNet / torchvision / pytorchvideo / ours; a 2D checkpoint "
        "is inflated into a 3D model",
    )
    inflate_init: str = doc("center", "2D→3D kernel inflation", choices=("center", "average"))
    reset_classifier: bool = doc(
        False, "load `pretrained` with its own classifier, then replace it for data.num_classes (fine-tuning)"
    )
    inflate: str | None = doc(
        None, "3D inflation pattern (None: the model's, 'slow')", choices=(None, *INFLATIONS)
    )
    stage1_temporal_pool: int | None = doc(
        None,
        "3D: temporal max-pool (kernel = stride) after stage 1, as pytorchvideo's c2d_r50/i3d_r50: 2",
        min=1,
    )
    temporal_strides: list[int] | None = doc(None, "temporal stride per stage (None: 1 everywhere)", min=1)
    stem_temporal_kernel: int | None = doc(
        None, "temporal kernel of the stem conv (None: per pattern)", min=1
    )
    width_scale: float = doc(1.0, "multiply every width (tiny models for demos and tests)", min=0.01)
    layers: list[int] | None = doc(None, "blocks per stage, overriding the depth's", min=1)
    drop_rate: float = doc(
        0.5, "dropout before the classifier (SlowFast/pytorchvideo use 0.5)", min=0.0, below=1.0
    )
    zero_init_last: bool = doc(False, "start every residual branch at zero")
    frozen_stages: int = doc(-1, "freeze the stem (0) and stages 1..k (-1: nothing)", min=-1)
    norm_eval: bool = doc(False, "keep BN statistics frozen while training (small-batch fine-tuning)")
    grad_checkpointing: bool = doc(False, "recompute blocks in the backward pass to save memory")
    sync_bn: bool = doc(False, "SyncBatchNorm across processes (DDP)")
    channels_last: bool = doc(False, "channels_last(_3d) memory format (faster convs with AMP on GPUs)")
    compile: bool = doc(False, "torch.compile the model")


@dataclass
class DataConfig:
    format: str = doc(
        "kinetics", "annotation format", choices=("kinetics", "ucf101", "list", "folder", "imagefolder")
    )
    root: str = doc("???", "dataset root; relative paths below are resolved against it")
    train_annotations: str | None = doc(
        "annotations/train.csv", "kinetics: the official CSV or a 'path label' list; list: a list file"
    )
    val_annotations: str | None = doc("annotations/validate.csv", "as train_annotations, for evaluation")
    train_dir: str = doc("train", "folder of the training videos (images for imagefolder)")
    val_dir: str = doc("val", "folder of the evaluation videos")
    annotation_dir: str = doc("ucfTrainTestlist", "ucf101: folder with classInd.txt and the split lists")
    split: int = doc(1, "ucf101 split", choices=(1, 2, 3))
    classes_file: str | None = doc(None, "class-index file (default: UCF101 classInd / sorted class names)")
    num_classes: int | None = doc(None, "classes (None: from the annotations); checked against them", min=1)
    num_frames: int = doc(8, "frames per clip", min=1)
    frame_stride: int = doc(8, "take every k-th frame", min=1)
    sampling: str = doc(
        "clip", "training sampler: one random clip, or TSN segments", choices=("clip", "segments")
    )
    decode_short_side: int = doc(
        320, "workers resize the short side to this (uint8) before the batch moves", min=1
    )
    crop_size: int = doc(224, "training crop", min=1)
    crop_mode: str = doc(
        "short_side_jitter", "training crop scheme", choices=("short_side_jitter", "random_resized_crop")
    )
    jitter_sizes: list[int] = doc([256, 320], "short_side_jitter: short side drawn from this range", min=1)
    area_scale: list[float] = doc(
        [0.08, 1.0], "random_resized_crop: area range, fractions of the frame", above=0.0, max=1.0
    )
    flip_prob: float = doc(0.5, "horizontal flip probability", min=0.0, max=1.0)
    mean: list[float] | None = doc(
        None, "normalisation mean in 0-1 units (None: the model's default)", min=0.0, max=1.0
    )
    std: list[float] | None = doc(
        None, "normalisation std in 0-1 units (None: the model's default)", above=0.0
    )
    test_size: int = doc(256, "evaluation: short side of the frames", min=1)
    test_crop_size: int | None = doc(None, "evaluation crop (None: test_size, full-height crops)", min=1)
    num_clips: int = doc(10, "evaluation: uniformly spaced clips per video", min=1)
    num_crops: int = doc(3, "evaluation: spatial crops per clip", choices=(1, 3))
    val_num_clips: int = doc(1, "validation during training: clips per video (fast)", min=1)
    val_num_crops: int = doc(1, "validation during training: crops per clip", choices=(1, 3))
    manifest: str | None = doc(
        "manifest.jsonl",
        "a prepared set's manifest under root (iresvid prepare), used when it exists: no file is checked "
        "or probed at start-up, unusable videos are left out (None: ignore it)",
    )
    backend: str = doc(
        DEFAULT_BACKEND, "video decoder (each one proven frame-exact per file)", choices=tuple(BACKENDS)
    )
    batch_size: int = doc(64, "global batch size, split across processes", min=1)
    eval_batch_size: int | None = doc(
        None,
        "views per evaluation batch per process (None: twice the training micro-batch in validation, "
        "batch_size in tools/test.py, extraction and prediction)",
        min=1,
    )
    num_workers: int = doc(
        8,
        "data-loader processes per training process (-1: one per CPU core this process has, the node's "
        "cores shared among its training processes, less one for the process itself)",
        min=-1,
    )
    start_method: str | None = doc(
        None,
        "how loader workers start (None: Python's default; spawn and forkserver are safe with CUDA)",
        choices=(None, "fork", "spawn", "forkserver"),
    )
    prefetch_factor: int = doc(2, "batches each worker prepares ahead", min=1)
    max_decode_retries: int = doc(
        10, "a bad video is replaced by another sample at most this many times", min=0
    )


@dataclass
class OptimConfig:
    name: str = doc("sgd", "optimizer", choices=("sgd", "adamw"))
    lr: float = doc(0.1, "peak learning rate for `base_batch_size`", above=0.0)
    base_batch_size: int = doc(64, "lr is scaled linearly by batch_size / base_batch_size", min=1)
    momentum: float = doc(0.9, "SGD momentum", min=0.0, below=1.0)
    nesterov: bool = doc(True, "SGD Nesterov momentum")
    betas: list[float] = doc([0.9, 0.999], "AdamW betas", min=0.0, below=1.0)
    weight_decay: float = doc(1e-4, "weight decay", min=0.0)
    no_decay_norm_bias: bool = doc(True, "no weight decay on BN parameters and biases")


@dataclass
class ScheduleConfig:
    name: str = doc(
        "cosine", "learning-rate schedule (per step)", choices=("cosine", "multistep", "constant")
    )
    epochs: int = doc(196, "training epochs", min=1)
    warmup_epochs: float = doc(34.0, "linear warm-up length", min=0.0)
    warmup_start_factor: float = doc(0.1, "warm-up starts at lr × this", min=0.0, max=1.0)
    milestones: list[int] = doc([30, 60, 80], "multistep: epochs where lr is multiplied by gamma", min=0)
    gamma: float = doc(0.1, "multistep factor", above=0.0, max=1.0)
    min_lr_factor: float = doc(0.0, "cosine: final lr = lr × this", min=0.0, max=1.0)


@dataclass
class TrainConfig:
    output_dir: str = doc("runs/${name}", "checkpoints, logs, metrics, plots")
    resume: str | None = doc(None, "'auto' (latest in output_dir), a checkpoint path, or None")
    overwrite: bool = doc(
        False,
        "start a new run in an output_dir that holds another run's files: deletes that run's checkpoints "
        "(last, best, epoch_*), config.yaml, log.txt, metrics, TensorBoard events and reports first "
        "(not with resume; without it such a folder is refused)",
    )
    seed: int = doc(0, "seed of every random choice (data, augmentation, init)", min=0, max=2**63 - 1)
    device: str = doc("auto", "'auto' (cuda if available), 'cpu', 'cuda'")
    amp: str = doc("none", "mixed precision", choices=("none", "bf16", "fp16"))
    label_smoothing: float = doc(0.0, "cross-entropy label smoothing", min=0.0, below=1.0)
    mixup_alpha: float = doc(0.0, "mixup Beta(α, α) (0: off)", min=0.0)
    cutmix_alpha: float = doc(0.0, "cutmix Beta(α, α) (0: off)", min=0.0)
    accum_steps: int = doc(1, "gradient accumulation steps per optimizer step", min=1)
    clip_grad_norm: float | None = doc(None, "clip the gradient norm to this (None: off)", above=0.0)
    ema_decay: float | None = doc(
        None, "exponential moving average of the weights (e.g. 0.9998; None: off)", above=0.0, below=1.0
    )
    precise_bn_batches: int = doc(0, "recompute BN statistics on this many batches before evaluation", min=0)
    eval_every: int = doc(1, "evaluate every k epochs (0: only at the end)", min=0)
    save_every: int = doc(10, "keep a checkpoint every k epochs besides last/best (0: none)", min=0)
    save_every_steps: int = doc(0, "also checkpoint every k optimizer steps within an epoch (0: off)", min=0)
    log_every: int = doc(20, "log training metrics every k steps", min=1)
    max_steps_per_epoch: int | None = doc(None, "cut epochs short (smoke tests)", min=1)
    progress: bool = doc(True, "tqdm progress bars")
    cudnn_benchmark: bool = doc(
        True, "let cuDNN time its convolution algorithms for each input shape on CUDA (fixed-size clips)"
    )
    deterministic: str = doc(
        "off",
        "deterministic algorithms: off; warn (torch warns at each nondeterministic op); strict (the first "
        "such op stops the run, naming it). On the CPU training is deterministic in any case",
        choices=("off", "warn", "strict"),
    )
    dist_backend: str = doc(
        "auto", "torch.distributed backend: auto (nccl on GPUs, else gloo)", choices=("auto", "nccl", "gloo")
    )


@dataclass
class Config:
    name: str = doc("run", "run name (the default output folder is runs/<name>)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
