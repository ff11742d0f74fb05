"""Models from configs and checkpoints: shared by training, evaluation, feature extraction and export."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from iresvid.checkpoint_io import CheckpointError, read_checkpoint
from iresvid.config import Config, ConfigError, check_size, load_config
from iresvid.data.build import build_dataset
from iresvid.data.datasets import ClipDataset
from iresvid.data.loader import build_loader
from iresvid.data.transforms import EvalViews
from iresvid.models import create_model
from iresvid.models.weights import check_fits, check_values, extract_state_dict


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The model a config describes, with its pretrained weights (inflated 2D weights included)."""
    m = cfg.model
    kwargs = dict(
        width_scale=m.width_scale,
        drop_rate=m.drop_rate,
        zero_init_last=m.zero_init_last,
        frozen_stages=m.frozen_stages,
        norm_eval=m.norm_eval,
    )
    optional = dict(
        depth=m.depth,
        inflate=m.inflate,
        temporal_strides=m.temporal_strides,
        stem_temporal_kernel=m.stem_temporal_kernel,
        stage1_temporal_pool=m.stage1_temporal_pool,
        layers=m.layers,
    )
    kwargs.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in optional.items() if v is not None})
    # Fine-tuning loads everything but the checkpoint's classifier (num_classes=0), then adds a fresh one.
    fine_tune = bool(m.pretrained and m.reset_classifier)
    try:
        model = create_model(
            m.name,
            num_classes=0 if fine_tune else num_classes,
            pretrained=m.pretrained,
            inflate_init=m.inflate_init,
            **kwargs,
        )
        if fine_tune:
            model.reset_classifier(num_classes)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"model: {e}") from e
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def norm_stats(cfg: Config, model: nn.Module) -> tuple[list[float], list[float]]:
    """Normalisation mean/std: the config's, else the model's default (Kinetics or ImageNet values)."""
    if cfg.data.mean and cfg.data.std:  # a TorchScript model has no pretrained_cfg: the config must say
        return list(cfg.data.mean), list(cfg.data.std)
    defaults = model.pretrained_cfg
    return list(cfg.data.mean or defaults["mean"]), list(cfg.data.std or defaults["std"])


@dataclass(frozen=True)
class EvalInputs:
    """Every video of a split as ``num_clips × num_crops`` normalised views: what `evaluate` and
    `extract_features` read.  The loader yields the clips of whole videos (each video read in one pass);
    ``views`` turns each clip into ``num_crops`` crops, and the model sees ``chunk`` views per forward pass,
    so memory does not grow with the number of crops."""

    dataset: ClipDataset
    loader: DataLoader
    views: EvalViews
    chunk: int


def build_eval_inputs(
    cfg: Config,
    model: nn.Module,
    device: torch.device,
    *,
    split: str = "val",
    classes: list[str] | None = None,
    num_clips: int,
    num_crops: int,
    views_per_pass: int,
    world_size: int = 1,
    rank: int = 0,
) -> EvalInputs:
    """The evaluation inputs of ``split`` for ``model`` (its normalisation unless the config sets one);
    with ``world_size > 1`` this process's shard of the videos."""
    d = cfg.data
    dataset = build_dataset(d, split, mode="eval", classes=classes, num_clips=num_clips, seed=cfg.train.seed)
    loader = build_loader(
        dataset,
        batch_size=eval_videos_per_batch(views_per_pass, num_clips, num_crops),
        shuffle=False,
        num_workers=d.num_workers,
        start_method=d.start_method,
        num_replicas=world_size,
        rank=rank,
        pin_memory=device.type == "cuda",
        prefetch_factor=d.prefetch_factor,
    )
    return EvalInputs(dataset, loader, build_eval_views(cfg, model, device, num_crops), views_per_pass)


def build_eval_views(cfg: Config, model: nn.Module, device: torch.device, num_crops: int) -> EvalViews:
    """The test-time crops of ``cfg.data`` (``test_size``, ``test_crop_size``) normalised for ``model``: the
    one definition of an evaluation view, shared by testing, validation, feature extraction and prediction."""
    d = cfg.data
    mean, std = norm_stats(cfg, model)
    return EvalViews(
        d.test_size,
        num_crops,
        crop_size=d.test_crop_size,
        mean=mean,
        std=std,
        channels_last=cfg.model.channels_last,
    ).to(device)


def eval_videos_per_batch(views_per_pass: int, num_clips: int, num_crops: int) -> int:
    """Videos per evaluation batch: an item is a whole video, so as many as keep a batch within
    ``views_per_pass`` views, and at least one: a batch holds at most max(views_per_pass, num_clips ×
    num_crops) views, however many videos the split has."""
    return max(1, views_per_pass // (num_clips * num_crops))


def progress_bar(enabled: bool, **settings) -> Callable[[Iterable], Iterable] | None:
    """A tqdm bar with these settings around an iterable, or None (no bar) when not ``enabled``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda iterable: tqdm(iterable, dynamic_ncols=True, **settings)


# What a checkpoint's saved config is trusted for: the model it describes and the clip that model was
# trained and evaluated on, numbers only.  Paths, workers, devices and outputs are the user's (the user's
# config or overrides, else the defaults): a checkpoint is a file from anywhere.
CHECKPOINT_DATA_KEYS = (
    "num_frames",
    "frame_stride",
    "test_size",
    "test_crop_size",
    "num_clips",
    "num_crops",
    "mean",
    "std",
)
NO_DATA = "data.root=."  # a config that reads no dataset (export, prediction) needs no dataset folder


def load_trained(
    checkpoint: str | Path,
    cfg: Config | None = None,
    *,
    overrides: Sequence[str] = (),
    use_ema: bool = True,
    needs_data: bool = False,
) -> tuple[nn.Module, Config, list[str]]:
    """A model trained by `Trainer`, from its checkpoint: (model in eval mode, config, class names).

    Without ``cfg`` the config is the defaults, then the checkpoint's ``model`` settings and evaluation
    clip (`CHECKPOINT_DATA_KEYS`) as plain data (never composed, interpolated or followed to defaults),
    then ``overrides``; ``needs_data``: the caller reads a dataset, so ``overrides`` must give
    ``data.root``.  The EMA weights are used when present.  Weights that do not fit the model, or that are
    not finite floating point where the model has floating point, are a `CheckpointError` naming the file
    and the keys.
    """
    state = read_checkpoint(checkpoint)
    if not isinstance(state, dict) or "classes" not in state or "model" not in state:
        raise CheckpointError(
            f"{checkpoint} is not an iresvid training checkpoint (no 'model'/'classes'); to evaluate other "
            f"weights, build the model with iresvid.create_model(name, pretrained=...)"
        )
    if cfg is None:
        cfg = checkpoint_config(state.get("config"), str(checkpoint), overrides, needs_data=needs_data)
    classes = state["classes"]
    if not isinstance(classes, list | tuple) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{checkpoint}: 'classes' is not a list of class names")
    classes = list(classes)
    cfg.model.pretrained = None
    model = build_model(cfg, len(classes))
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    weights = extract_state_dict(weights, source=str(checkpoint))
    weights = {k.removeprefix("module."): v for k, v in weights.items() if k != "n_averaged"}
    check_fits(weights, model, str(checkpoint))  # the named refusal training's resume gives
    check_values(weights, model, str(checkpoint))
    model.load_state_dict(weights, strict=False)  # strictness was check_fits's
    return model.eval(), cfg, classes


def checkpoint_config(
    saved, source: str, overrides: Sequence[str] = (), *, needs_data: bool = False
) -> Config:
    """The config to use a checkpoint with: its saved ``model`` settings and evaluation clip, bounded and
    taken as plain values, under the defaults and over-ridden by ``overrides``."""
    saved = {} if saved is None else saved
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{source}: its saved config is a {type(saved).__name__}, not a mapping")
    check_size(saved, f"{source} (its saved config)")
    model = saved.get("model") or {}
    data = saved.get("data") or {}
    if not isinstance(model, Mapping) or not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: its saved config's 'model' and 'data' are not mappings")
    node = {"model": dict(model), "data": {k: data[k] for k in CHECKPOINT_DATA_KEYS if k in data}}
    _refuse_interpolation(node, source, "")
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    if "data.root" not in given:
        if needs_data:
            raise ConfigError(
                f"{source}: give the dataset folder as data.root=... (a checkpoint's own data paths are not "
                f"used; --config FILE gives a whole config)"
            )
        overrides = [NO_DATA, *overrides]
    return load_config(node, list(overrides))


def _refuse_interpolation(node, source: str, key: str) -> None:
    """A saved config is resolved data: a ``${...}`` in it would be resolved again (``${oc.env:...}``
    reads this machine's environment), so it is refused."""
    if isinstance(node, Mapping):
        for name, value in node.items():
            _refuse_interpolation(value, source, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _refuse_interpolation(value, source, f"{key}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise CheckpointError(
            f"{source}: its saved config's '{key}' holds an interpolation ({node!r}); a checkpoint's config "
            f"is taken as plain values, never resolved"
        )
