"""Loading the weights people already have, exactly; the network code never knows where weights came from.

Sources recognised from the keys, after unwrapping ``{"state_dict": …}`` / ``{"model": …}`` and stripping
``module.`` (DataParallel / DDP) and ``_orig_mod.`` (torch.compile) prefixes:

- official iduta/iresnet checkpoints (resnet, resstage, iresnet, resgroup(fix), iresgroup(fix)) and
  torchvision ResNet / ResNeXt state dicts: our module names are theirs, so they load by name;
- pytorchvideo ResNet state dicts (``blocks.0.conv…``; e.g. ``slow_r50``): keys are renamed;
- a 2D checkpoint into a 3D model: every conv kernel is inflated along time, ``center`` (the 2D kernel in
  the middle temporal slice, zeros elsewhere: a static clip gives the 2D logits) or ``average`` (kernel / kt
  on every slice, as in I3D).

Checkpoints are read with ``torch.load(weights_only=True)``: a file that needs arbitrary code to unpickle
is refused.  A checkpoint that does not fit the model is refused naming the first mismatching keys.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

INFLATE_INITS = ("center", "average")
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this model; the message names the file and the keys."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True`` and a clear error for missing, unsafe or broken files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects that only a full unpickle could build, and "
            f"unpickling can run arbitrary code. Only tensors and plain containers are accepted "
            f"(torch.load weights_only=True). Detail: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a PyTorch file?): {e}") from e


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


def convert_pytorchvideo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorchvideo ``create_resnet`` names (``blocks.{stage}.res_blocks.{i}.branch2.conv_a``…) → ours.

    blocks.0 is the stem, blocks.1–4 the stages, the last block the head (``proj`` → ``fc``).
    """
    renames = [
        (r"^blocks\.0\.conv\.", "conv1."),
        (r"^blocks\.0\.norm\.", "bn1."),
        (r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch1_conv\.", r"layer\1.\2.downsample.0."),
        (r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch1_norm\.", r"layer\1.\2.downsample.1."),
        (r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.conv_a\.", r"layer\1.\2.conv1."),
        (r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.norm_a\.", r"layer\1.\2.bn1."),
        (r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.conv_b\.", r"layer\1.\2.conv2."),
        (r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.norm_b\.", r"layer\1.\2.bn2."),
        (r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.conv_c\.", r"layer\1.\2.conv3."),
        (r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.norm_c\.", r"layer\1.\2.bn3."),
        (r"^blocks\.5\.proj\.", "fc."),
    ]
    converted = {}
    for key, value in state.items():
        new = key
        for pattern, repl in renames:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        else:
            raise CheckpointError(
                f"pytorchvideo checkpoint: no rule for key {key!r} (only ResNet "
                f"`create_resnet` networks such as slow_r50 convert)"
            )
        converted[new] = value
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


def check_fits(state: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Raise `CheckpointError` naming the first missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
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
            "  only the classifier differs: build the model with the checkpoint's num_classes, load, "
            "then call model.reset_classifier(num_classes) to fine-tune"
        )
    raise CheckpointError("\n".join(parts))


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, inflate_init: str = "center") -> None:
    """Load a checkpoint file into ``model`` (in place), converting and inflating as needed.

    A model built with ``num_classes=0`` ignores the checkpoint's classifier.  Anything else that does not
    fit is an error, never a silent partial load.
    """
    state = extract_state_dict(read_checkpoint(path), source=str(path))
    source = str(path)
    if is_pytorchvideo(state):
        state = convert_pytorchvideo(state)
        source += " (pytorchvideo)"
    target = model.state_dict()
    conv_dims = {v.ndim for k, v in target.items() if k.endswith("conv1.weight")}
    if 5 in conv_dims and state.get("conv1.weight", torch.empty(0)).ndim == 4:
        state = inflate_state_dict(state, target, inflate_init)
        source += f" (2D, inflated '{inflate_init}')"
    if getattr(model, "num_classes", None) == 0:
        state = {k: v for k, v in state.items() if not _is_classifier(k)}
    check_fits(state, model, source)
    model.load_state_dict(state, strict=False)  # strictness is check_fits's job, with better messages
    log.info("loaded %s into %s", source, getattr(model, "pretrained_cfg", {}).get("architecture", "model"))
