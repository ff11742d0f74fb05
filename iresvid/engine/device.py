"""The device a command runs on and the mixed precision it computes in: one definition for training,
evaluation, feature extraction, prediction and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import re

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


def set_algorithms(device: torch.device, *, benchmark: bool = True, deterministic: str = "off") -> None:
    """The convolution algorithms and determinism of a training process (``train.cudnn_benchmark``,
    ``train.deterministic``).

    cuDNN's benchmark mode times the algorithms of each new input shape once and keeps the fastest: the
    clips of a run have one shape, so only the first steps pay, and 3D NDHWC bf16 convolutions (the C=3 stem
    too) get measured choices instead of heuristic ones.  ``deterministic``: "warn" makes torch warn at
    every op without a deterministic implementation, "strict" makes the first such op raise, naming it
    (e.g. the 3×3×3 max-pool's CUDA backward, which uses atomics); both also turn benchmark mode off, whose
    choice can differ between runs.  On the CPU every op iresvid uses is deterministic already.
    """
    if deterministic not in ("off", "warn", "strict"):
        raise ConfigError(f"train.deterministic={deterministic}: use 'off', 'warn' or 'strict'")
    exact = deterministic != "off"
    if exact:
        # cuBLAS needs a fixed workspace for reproducible matmuls; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(exact, warn_only=deterministic == "warn")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = benchmark and not exact
        torch.backends.cudnn.deterministic = exact


_NONDETERMINISTIC = re.compile(r"^(\S+) does not have a deterministic implementation")


def nondeterministic_op(error: BaseException) -> ConfigError | None:
    """torch's error for an op without a deterministic implementation under ``train.deterministic=strict``,
    as one line naming the op; None for any other error."""
    found = _NONDETERMINISTIC.search(str(error)) if isinstance(error, RuntimeError) else None
    if found is None:
        return None
    return ConfigError(
        f"train.deterministic=strict: {found.group(1)} has no deterministic implementation on this device; "
        f"run with train.deterministic=warn (it warns and goes on) or off"
    )
