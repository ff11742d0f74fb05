"""Configuration: a YAML file over the typed schema, then ``key=value`` overrides (Hydra's syntax).

    cfg = load_config("configs/iresnet3d50_kinetics.yaml", ["data.root=/data/k400", "optim.lr=0.2"])

A YAML file may start from others with ``defaults: [base.yaml, ...]`` (paths relative to it).  Unknown keys
are rejected naming the key and its nearest valid spelling; wrong types and out-of-range values name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from iresvid.config.schema import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from iresvid.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "describe_schema",
    "load_config",
    "to_dict",
]


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    layers: list[tuple[str, dict]] = []
    if path is not None:
        layers.extend(_read_yaml(Path(path), seen=()))
    try:
        dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {e}") from e
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not key=value (e.g. optim.lr=0.1)")
    layers.append(("command-line overrides", dotlist))

    merged = OmegaConf.structured(Config)
    for source, layer in layers:
        _check_keys(layer, Config, "", source)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            reason = str(e).splitlines()[0]
            raise ConfigError(f"{source}: bad value for '{key}': {reason}") from e
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        missing = (
            "a required value is missing" if "missing mandatory" in str(e).lower() else str(e).splitlines()[0]
        )
        raise ConfigError(f"'{key}': {missing} (set it in the YAML file or as {key}=...)") from e
    _check_values(cfg, "")
    return cfg


def to_dict(cfg: Config) -> dict:
    """The config as plain containers (for checkpoints and logs)."""
    return dataclasses.asdict(cfg)


def describe_schema(cls=Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) of every key, for ``iresvid config`` and the docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe_schema(hints[f.name], key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        type_name = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
        rows.append((key, type_name, repr(default), f.metadata.get("help", "")))
    return rows


# --------------------------------------------------------------------------------------- internals


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config {path} includes itself through 'defaults'")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    layers = []
    for base in data.pop("defaults", None) or []:
        layers.extend(_read_yaml(path.parent / base, seen + (path.resolve(),)))
    layers.append((str(path), data))
    return layers


def _check_keys(node: dict, cls, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in node.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"{source}: unknown config key '{full}'{hint} (valid keys here: {', '.join(sorted(fields))})"
            )
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{full}' is a section; expected keys under it, got {value!r}")
            _check_keys(value, hints[key], full + ".", source)


def _check_values(node, prefix: str) -> None:
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_values(value, key + ".")
            continue
        choices, minimum = f.metadata.get("choices"), f.metadata.get("min")
        if choices is not None and value not in choices:
            raise ConfigError(f"'{key}' must be one of {list(choices)}, got {value!r}")
        if minimum is not None and value is not None and value < minimum:
            raise ConfigError(f"'{key}' must be >= {minimum}, got {value!r}")
        if isinstance(value, list) and any(isinstance(v, int | float) and v < 0 for v in value):
            raise ConfigError(f"'{key}' must not contain negative numbers, got {value}")
    if isinstance(node, Config):
        _check_cross_fields(node)


def _check_cross_fields(cfg: Config) -> None:
    d = cfg.data
    if d.root in ("", "???"):
        raise ConfigError("'data.root' is not set: give the dataset folder (data.root=/path/to/dataset)")
    low, high = d.jitter_sizes if len(d.jitter_sizes) == 2 else (None, None)
    if low is None:
        raise ConfigError(f"'data.jitter_sizes' needs two sizes [min, max], got {d.jitter_sizes}")
    if d.crop_mode == "short_side_jitter" and not d.crop_size <= low <= high:
        raise ConfigError(
            f"'data.jitter_sizes' {d.jitter_sizes} must satisfy data.crop_size ({d.crop_size}) <= min <= max"
        )
    if d.test_crop_size is not None and d.test_crop_size > d.test_size:
        raise ConfigError(
            f"'data.test_crop_size' ({d.test_crop_size}) must be <= data.test_size ({d.test_size})"
        )
    for key, values in (("data.mean", d.mean), ("data.std", d.std)):
        if values is not None and len(values) != 3:
            raise ConfigError(f"'{key}' needs 3 values (RGB), got {values}")
    if cfg.schedule.warmup_epochs >= cfg.schedule.epochs and cfg.schedule.warmup_epochs > 0:
        raise ConfigError(
            f"'schedule.warmup_epochs' ({cfg.schedule.warmup_epochs}) must be shorter than "
            f"schedule.epochs ({cfg.schedule.epochs})"
        )
