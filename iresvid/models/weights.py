"""Loading the weights people already have, exactly; the network code never knows where weights came from.

Sources recognised from the keys, after unwrapping ``{"state_dict": …}`` / ``{"model": …}`` and stripping
``module.`` (DataParallel / DDP) and ``_orig_mod.`` (torch.compile) prefixes:

- official iduta/iresnet checkpoints (resnet, resstage, iresnet, resgroup(fix), iresgroup(fix)) and
  torchvision ResNet / ResNeXt state dicts: our module names are theirs, so they load by name;
- pytorchvideo ResNet state dicts (``blocks.0.conv…``; ``slow_r50``, ``c2d_r50``, ``i3d_r50``): keys are
  renamed (c2d / i3d need ``stage1_temporal_pool=2``, i3d ``inflate="i3d_r50"``, c2d ``inflate="c2d"``);
- timm SE-ResNet / SE-ResNeXt state dicts (``seresnet50``, ``seresnext50_32x4d``, ``seresnet18``…):
  torchvision names, but the SE gates are 1×1 convs (``se.fc1.weight`` of shape (c', c, 1, 1)) where ours
  are ``Linear`` layers of the same parameters: reshaped.  timm's plain ResNets have torchvision's keys and
  load as those;
- a 2D checkpoint into a 3D model: every conv kernel is inflated along time, ``center`` (the 2D kernel in
  the middle temporal slice, zeros elsewhere: a static clip gives the 2D logits) or ``average`` (kernel / kt
  on every slice, as in I3D).

Files are read by `iresvid.checkpoint_io.read_checkpoint` (``torch.load(weights_only=True)``: a file that
needs arbitrary code to unpickle is refused).  A checkpoint that does not fit the model is refused naming
the first mismatching keys, and one holding a non-floating or non-finite value where the model has floating
point naming the first such key; one whose only difference is the classifier's number of classes has its
classifier dropped (fine-tuning).

What was loaded is recorded on ``model.pretrained_cfg``: file, sha256, the source layout it was converted
from, the inflation, and the normalisation the weights expect.  A small local table (`register_weights`,
keyed by the file's sha256) states those facts for known files; it is empty by default (no weights ship
and nothing is downloaded) and ``create_model(name, pretrained=True)`` consults it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# Reading files is checkpoint_io's job; read_checkpoint and CheckpointError stay importable from here too,
# where older importers look for them.
from iresvid.checkpoint_io import CheckpointError, read_checkpoint

log = logging.getLogger(__name__)

INFLATE_INITS = ("center", "average")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Kinetics models in SlowFast / pytorchvideo normalise with these.
KINETICS_MEAN, KINETICS_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# The layouts a checkpoint can come in; what `pretrained_cfg["source"]` says.
SOURCES = {
    "official_iresnet": "official iduta/iresnet code (ResNet, ResStage, iResNet, ResGroup families)",
    "torchvision": "torchvision ResNet / ResNeXt (same key names as the official ResNet-50)",
    "pytorchvideo": "pytorchvideo create_resnet (e.g. slow_r50), keys renamed",
    "timm": "timm SE-ResNet / SE-ResNeXt (torchvision names; 1×1-conv SE gates reshaped to Linear)",
    "iresvid": "this package's own models or training checkpoints",
}
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


# ------------------------------------------------------------------------------------ weights table


@dataclass(frozen=True)
class WeightsEntry:
    """What is known about one weights file, keyed by its sha256."""

    sha256: str
    architectures: tuple[str, ...]  # registry names the weights are for
    source: str  # a key of SOURCES
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    input_size: tuple[int, ...]
    inflated_from: str | None = None  # the 2D architecture a 3D file was inflated from
    file: str | None = None  # a local copy; ``pretrained=True`` loads it
    description: str = ""
    extra: dict = field(default_factory=dict)


_WEIGHTS: dict[str, WeightsEntry] = {}


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register_weights(
    file: str | os.PathLike | None = None,
    *,
    architecture: str | Sequence[str],
    source: str,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    input_size: Sequence[int],
    sha256: str | None = None,
    inflated_from: str | None = None,
    description: str = "",
) -> WeightsEntry:
    """Record the facts of a weights file in the local table, keyed by its sha256 (give ``file``, ``sha256``
    or both).

    With ``file``, ``create_model(architecture, pretrained=True)`` loads it; any load of a file with this
    sha256 records these facts (source, mean/std…) on the model's ``pretrained_cfg``.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}; expected one of {sorted(SOURCES)}")
    if file is None and sha256 is None:
        raise ValueError("register_weights needs the file, its sha256, or both")
    if file is not None:
        actual = file_sha256(file)
        if sha256 is not None and sha256 != actual:
            raise CheckpointError(f"{file}: sha256 is {actual}, not the {sha256} given")
        sha256 = actual
    architectures = (architecture,) if isinstance(architecture, str) else tuple(architecture)
    entry = WeightsEntry(
        sha256=sha256,
        architectures=architectures,
        source=source,
        mean=tuple(mean),
        std=tuple(std),
        num_classes=num_classes,
        input_size=tuple(input_size),
        inflated_from=inflated_from,
        file=None if file is None else str(file),
        description=description,
    )
    _WEIGHTS[sha256] = entry
    return entry


def unregister_weights(sha256: str) -> None:
    _WEIGHTS.pop(sha256, None)


def registered_weights(architecture: str | None = None) -> list[WeightsEntry]:
    """The table's entries, or those for one registry name."""
    return [e for e in _WEIGHTS.values() if architecture is None or architecture in e.architectures]


def registered_file(architecture: str) -> str:
    """The local file ``pretrained=True`` loads for ``architecture``, else a `CheckpointError` saying why."""
    entries = registered_weights(architecture)
    found = [e for e in entries if e.file is not None and Path(e.file).is_file()]
    if found:
        return found[0].file
    if entries:
        listed = "; ".join(
            f"sha256 {e.sha256[:12]}… ({e.source}{', file ' + e.file + ' is missing' if e.file else ''})"
            for e in entries
        )
        known = f"weights registered locally for it: {listed}, none with a local file"
    else:
        known = "no weights are registered locally for it (none ship with iresvid, and nothing is downloaded)"
    raise CheckpointError(
        f"pretrained=True for {architecture!r}: {known}. Pass a checkpoint file instead: "
        f'create_model({architecture!r}, pretrained="path/to/file.pth") (official iResNet, torchvision, '
        f"pytorchvideo, timm SE-ResNet or iresvid checkpoints), or register one with "
        f'iresvid.models.register_weights("path/to/file.pth", architecture={architecture!r}, ...)'
    )


def extract_state_dict(checkpoint: dict, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint, unwrapped and with wrapper prefixes stripped."""
    obj = checkpoint
    for _ in range(3):  # e.g. {"model": {"state_dict": …}}
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source}: no state dict found (got {type(obj).__name__})")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; expected "
                f"a state dict or one under one of the keys {list(_WRAPPER_KEYS)}"
            )
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


# --------------------------------------------------------------------------------------- converters


def is_pytorchvideo(state: dict[str, torch.Tensor]) -> bool:
    return "blocks.0.conv.weight" in state


_PTV_BLOCK = {
    "branch1_conv": "downsample.0",
    "branch1_norm": "downsample.1",
    "branch2.conv_a": "conv1",
    "branch2.norm_a": "bn1",
    "branch2.conv_b": "conv2",
    "branch2.norm_b": "bn2",
    "branch2.conv_c": "conv3",
    "branch2.norm_c": "bn3",
}
_PTV_STAGE = re.compile(
    r"^blocks\.(\d+)\.res_blocks\.(\d+)\.(" + "|".join(map(re.escape, _PTV_BLOCK)) + r")\."
)


def convert_pytorchvideo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorchvideo ``create_resnet`` names (``blocks.{stage}.res_blocks.{i}.branch2.conv_a``…) → ours.

    blocks.0 is the stem, the blocks holding ``res_blocks`` are the stages in order, the last block the head
    (``proj`` → ``fc``).  ``c2d_r50`` / ``i3d_r50`` put a parameterless temporal max-pool at blocks.2 (our
    ``stage1_temporal_pool=2``), so there the stages are blocks 1, 3, 4, 5 and the head is blocks.6.
    """
    stage_blocks = sorted({int(m.group(1)) for k in state if (m := _PTV_STAGE.match(k))})
    layer = {b: i for i, b in enumerate(stage_blocks, 1)}
    renames = [
        (r"^blocks\.0\.conv\.", "conv1."),
        (r"^blocks\.0\.norm\.", "bn1."),
        (r"^blocks\.\d+\.proj\.", "fc."),
    ]
    converted = {}
    for key, value in state.items():
        m = _PTV_STAGE.match(key)
        if m:
            new = f"layer{layer[int(m.group(1))]}.{m.group(2)}.{_PTV_BLOCK[m.group(3)]}.{key[m.end() :]}"
        else:
            for pattern, repl in renames:
                new, n = re.subn(pattern, repl, key)
                if n:
                    break
            else:
                raise CheckpointError(
                    f"pytorchvideo checkpoint: no rule for key {key!r} (only ResNet "
                    f"`create_resnet` networks such as slow_r50, c2d_r50, i3d_r50 convert)"
                )
        converted[new] = value
    return converted


_TIMM_SE = re.compile(r"\.se\.fc[12]\.weight$")


def is_timm_se(state: dict[str, torch.Tensor]) -> bool:
    """timm's SE modules are 1×1 convs (4-D weights); ours are Linear (2-D), so the shape tells them apart."""
    return any(_TIMM_SE.search(k) and v.ndim == 4 for k, v in state.items())


def convert_timm_se(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm SE-ResNet(Xt) → ours: every other key is already ours (timm keeps torchvision's names); the SE's
    1×1 conv weights ``(c_out, c_in, 1, 1)`` become the equal ``Linear`` weights ``(c_out, c_in)``.

    timm's SE sits where ours does (on the branch after its last BN, before the add), pools over space,
    has biases and a ReLU; its width is ``make_divisible(c / 16, 8)``, what ``se_divisor=8`` builds
    (bottleneck widths at full width agree with ``c // 16``).
    """
    converted = {}
    for key, value in state.items():
        if _TIMM_SE.search(key) and value.ndim == 4:
            if value.shape[2:] != (1, 1):
                raise CheckpointError(
                    f"timm checkpoint: SE weight {key!r} has shape {tuple(value.shape)}; expected a 1×1 conv"
                )
            value = value.flatten(1)
        converted[key] = value
    return converted


def inflate_state_dict(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], mode: str = "center"
) -> dict[str, torch.Tensor]:
    """Give every 2D conv kernel of ``state`` the temporal size its 3D counterpart has in ``target``."""
    if mode not in INFLATE_INITS:
        raise ValueError(f"inflate_init must be one of {INFLATE_INITS}, got {mode!r}")
    inflated = dict(state)
    for key, weight in state.items():
        ref = target.get(key)
        if ref is None or weight.ndim != 4 or ref.ndim != 5 or ref.shape[:2] + ref.shape[3:] != weight.shape:
            continue
        kt = ref.shape[2]
        if mode == "center":
            w = weight.new_zeros(ref.shape)
            w[:, :, kt // 2] = weight
        else:
            w = weight.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt
        inflated[key] = w
    return inflated


def _is_classifier(key: str) -> bool:
    return key.startswith("fc.")


def check_fits(
    state: dict[str, torch.Tensor], model: nn.Module, source: str, *, ignore_classifier: bool = False
) -> None:
    """Raise `CheckpointError` naming the first missing, unexpected and mis-shaped keys, if any.

    ``ignore_classifier``: the model's classifier is not expected in ``state`` (it is a fresh one).
    """
    expected = model.state_dict()
    if ignore_classifier:
        expected = {k: v for k, v in expected.items() if not _is_classifier(k)}
    # BN counters are bookkeeping, absent from old checkpoints; they never change a logit.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    parts = [f"checkpoint {source} does not fit model {arch}:"]
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"  {label}: {', '.join(items[:5])}{more}")
    if shapes and all(_is_classifier(s.split(":")[0]) for s in shapes) and not (missing or unexpected):
        parts.append(
            "  only the classifier differs: create_model(..., pretrained=path, num_classes=N) drops the "
            "checkpoint's classifier; or load, then call model.reset_classifier(num_classes) to fine-tune"
        )
    raise CheckpointError("\n".join(parts))


def check_values(state: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Raise `CheckpointError` naming the first tensor that is not a finite floating-point value where
    ``model`` holds floating point (int8, bool, complex or NaN weights would load silently otherwise).
    Integer buffers the model keeps as integers (``num_batches_tracked``) are not checked."""
    expected = model.state_dict()
    for key, value in state.items():
        ref = expected.get(key)
        if ref is None or not ref.is_floating_point():
            continue
        if not value.is_floating_point():
            raise CheckpointError(
                f"checkpoint {source}: {key!r} is {value.dtype}, the model expects floating point "
                f"({ref.dtype})"
            )
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"checkpoint {source}: {key!r} holds NaN or infinite values")


@dataclass
class Checkpoint:
    """A checkpoint file, read, unwrapped and renamed to our keys, with what is known about it."""

    path: Path
    sha256: str
    state: dict[str, torch.Tensor]
    source: str | None  # known from the file (pytorchvideo keys, our training checkpoint, the table)
    entry: WeightsEntry | None  # the weights table's facts about this file

    @property
    def num_classes(self) -> int | None:
        weight = self.state.get("fc.weight")
        return weight.shape[0] if weight is not None and weight.ndim == 2 else None

    @property
    def dims(self) -> int | None:
        weight = self.state.get("conv1.weight")
        return weight.ndim - 2 if weight is not None else None


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file for `load_pretrained` (before the model exists: its class count, its layout)."""
    raw = read_checkpoint(path)
    state = extract_state_dict(raw, source=str(path))
    source = None
    if is_pytorchvideo(state):
        state, source = convert_pytorchvideo(state), "pytorchvideo"
    elif is_timm_se(state):
        state, source = convert_timm_se(state), "timm"
    elif isinstance(raw, dict) and "iresvid_version" in raw:  # written by our trainer
        source = "iresvid"
    sha256 = file_sha256(path)
    entry = _WEIGHTS.get(sha256)
    return Checkpoint(Path(path), sha256, state, entry.source if entry else source, entry)


def _layout_source(model: nn.Module, dims: int | None) -> str:
    """Where a state dict in our key names most likely comes from, judged by the family it fits.

    torchvision's ResNet-50 and the official one share every key: such files are reported as torchvision
    unless the weights table says otherwise.
    """
    spec = getattr(model, "spec", None)
    if spec is None or dims == 3 or spec.se_reduction or spec.roles == "preact" or spec.stem == "conv3":
        return "iresvid"  # nobody else publishes these layouts
    if spec.roles == "resstage" or spec.shortcut == "improved" or spec.out_channels[-1] < spec.widths[-1]:
        return "official_iresnet"  # ResStage, iResNet, ResGroup: only the official code has them
    return "torchvision"


def _expected_normalisation(model: nn.Module, ckpt: Checkpoint, source: str) -> tuple[tuple, tuple]:
    if ckpt.entry is not None:
        return ckpt.entry.mean, ckpt.entry.std
    if source == "pytorchvideo":
        return KINETICS_MEAN, KINETICS_STD
    if ckpt.dims == 2:  # an image checkpoint keeps its dataset's statistics when inflated into a video model
        spec = getattr(model, "spec", None)
        if spec is not None and spec.stem == "conv3":
            return CIFAR_MEAN, CIFAR_STD
        return IMAGENET_MEAN, IMAGENET_STD
    cfg = getattr(model, "pretrained_cfg", {})
    return tuple(cfg.get("mean", KINETICS_MEAN)), tuple(cfg.get("std", KINETICS_STD))


def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike | Checkpoint,
    *,
    inflate_init: str = "center",
    num_classes: int | None = None,
) -> dict:
    """Load a checkpoint file into ``model`` (in place), converting and inflating as needed.

    ``num_classes`` (default: the model's) is the classifier wanted: when the checkpoint's has another
    number of classes, it is dropped (one log line) and the model gets a fresh classifier, as
    ``model.reset_classifier(num_classes)`` after loading would give; 0 keeps no classifier.  Anything else
    that does not fit is an error naming the keys, never a silent partial load.

    Returns what was loaded, also merged into ``model.pretrained_cfg``: ``file``, ``sha256``, ``source``
    (a key of `SOURCES`), ``inflated_from`` / ``inflate_init``, ``mean`` / ``std`` the weights expect,
    ``num_classes`` of the weights and whether their ``classifier_loaded``.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
    state, label = (
        ckpt.state,
        str(ckpt.path) + (f" ({ckpt.source})" if ckpt.source in ("pytorchvideo", "timm") else ""),
    )
    target = model.state_dict()
    conv_dims = {v.ndim for k, v in target.items() if k.endswith("conv1.weight")}
    inflated = 5 in conv_dims and ckpt.dims == 2
    if inflated:
        state = inflate_state_dict(state, target, inflate_init)
        label += f" (2D, inflated '{inflate_init}')"
    model_classes = getattr(model, "num_classes", None)
    wanted = model_classes if num_classes is None else num_classes
    source_classes = ckpt.num_classes
    drop = source_classes is not None and wanted is not None and wanted != source_classes
    if drop:
        state = {k: v for k, v in state.items() if not _is_classifier(k)}
        if wanted != model_classes:
            model.reset_classifier(wanted)
    check_fits(state, model, label, ignore_classifier=drop)
    check_values(state, model, label)
    model.load_state_dict(state, strict=False)  # strictness is check_fits's job, with better messages
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    if drop:
        log.info(
            "loaded %s into %s without its classifier: it has %d classes, the model %d (a fresh classifier)",
            label,
            arch,
            source_classes,
            wanted,
        )
    else:
        log.info("loaded %s into %s", label, arch)

    source = ckpt.source or _layout_source(model, ckpt.dims)
    mean, std = _expected_normalisation(model, ckpt, source)
    entry = ckpt.entry
    record = dict(
        file=str(ckpt.path),
        sha256=ckpt.sha256,
        source=source,
        inflated_from=entry.inflated_from if entry and entry.inflated_from else None,
        inflate_init=inflate_init if inflated else None,
        mean=tuple(mean),
        std=tuple(std),
        num_classes=source_classes,
        classifier_loaded=source_classes is not None and not drop,
    )
    if inflated:
        record["inflated_from"] = re.sub(r"3d", "", arch, count=1) if isinstance(arch, str) else "2D"
    if entry is not None:
        record["input_size"] = entry.input_size
    if hasattr(model, "pretrained_cfg"):
        model.pretrained_cfg.update(record)
    return record
