"""The device a command runs on and the mixed precision it computes in: one definition for training,
evaluation, feature extraction, prediction and the benchmarks."""

from __future__ import annotations

import contextlib

import torch

from iresvid.errors import ConfigError

# ``train.amp`` → the autocast dtype (None: full precision).
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device, *, setting: str = "device") -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a device.

    Asking for CUDA where there is none is an error, not a silent CPU run; ``setting`` is the name the user
    gave the device by (``train.device``, ``--device``), for the message.
    """
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{setting}={name}: not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}={name}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{setting}={name}: there are only {torch.cuda.device_count()} CUDA devices (0 to "
                f"{torch.cuda.device_count() - 1})"
            )
    return device


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in ``dtype`` on ``device``; full precision when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
