"""Configuration: the typed schema in Hydra's ConfigStore, a YAML file composed over it, then overrides.

    cfg = load_config("configs/iresnet3d50_kinetics.yaml", ["data.root=/data/k400", "optim.lr=0.2"])
    cfg = load_config({"data": {"root": "/data/k400"}})          # a dict (e.g. a checkpoint's saved config)

Composition is Hydra's: a file may start from others with a ``defaults:`` list (config names or paths
relative to it, e.g. ``defaults: [iresnet3d50_kinetics, _self_]``), and overrides use Hydra's grammar
(``key=value``, ``+key=value``, ``~key``, lists ``[1,2]``).  What Hydra reports as a composition error is
turned into one line naming the key, its nearest valid spelling and the file it came from; wrong types and
out-of-range values name the key.  ``tools/train.py`` runs the same composition through ``hydra.main``
(multirun, launchers): see `iresvid.engine.launch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from iresvid.config.schema import (
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    check_value,
)
from iresvid.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "SCHEMA",
    "compose",
    "describe_schema",
    "from_composed",
    "load_config",
    "check_size",
    "register_schema",
    "to_dict",
    "to_yaml",
]

SCHEMA = "iresvid_schema"  # the typed schema's name in Hydra's ConfigStore
_ENTRY = "iresvid_compose"  # the primary config `compose` builds: the schema, then the user's config
_GIVEN = "iresvid_given"  # a config given as a dict, stored so that overrides apply to it the same way
CLI_SOURCE = "command-line overrides"
# The shipped configs, on Hydra's search path: a config of one's own anywhere may start from them by name
# (``defaults: [iresnet3d50_kinetics, _self_]``).  Absent when iresvid is installed without the repository.
SHIPPED_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Bounds on a config before it is expanded (OmegaConf copies every alias: nine lists of nine aliases, seven
# levels deep, are 9**7 nodes from a few lines).  The real configs are a few hundred nodes, a few levels.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000


def register_schema() -> None:
    """Put the schema into Hydra's ConfigStore (idempotent): configs composed over it are typed."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA, node=Config)


def load_config(source: str | Path | Mapping | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config of a YAML file, of a dict, or the defaults (``None``), with ``overrides``, checked."""
    composed, origin = compose(source, overrides)
    return from_composed(composed, origin, overrides)


def compose(
    source: str | Path | Mapping | None, overrides: Sequence[str] = ()
) -> tuple[DictConfig, dict[str, str]]:
    """Hydra's composition of ``source`` over the schema: (config, where each config name came from).

    Hydra errors become `ConfigError` naming the key and the file.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    register_schema()
    store = ConfigStore.instance()
    overrides = list(overrides)
    if source is None or isinstance(source, Mapping | DictConfig):
        name, folder = (None, None) if source is None else (_GIVEN, None)
        origin = {"": CLI_SOURCE} if source is None else {"": "the given config", _GIVEN: "the given config"}
        if source is not None:
            node = OmegaConf.to_container(source) if isinstance(source, DictConfig) else dict(source)
            check_size(node, "the given config")
            if "defaults" in node:  # a dict is plain data: what it is made of was composed already
                raise ConfigError("the given config has a 'defaults' list: give a YAML file to compose it")
            store.store(name=_GIVEN, node=node)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        _check_yaml(path)
        name, folder = path.stem, path.resolve().parent
        origin = {"": str(path), name: str(path)} | _names_in(folder, path)
    store.store(name=_ENTRY, node=entry_node(name))
    with _own_hydra():
        # (Hydra's initialisers take effect when constructed, and undo themselves on exit.)
        init = (
            initialize(version_base="1.3", config_path=None)
            if folder is None
            else initialize_config_dir(config_dir=str(folder), version_base="1.3")
        )
        with init:
            try:
                return hydra_compose(config_name=_ENTRY, overrides=overrides), origin
            except Exception as e:  # noqa: BLE001 — Hydra's and OmegaConf's errors, read for the key
                raise translate_error(e, origin) from e


def entry_node(config_name: str | None) -> dict:
    """A primary config: the schema, then the named config over it (its own defaults list included)."""
    node: dict = {"defaults": [SCHEMA, "_self_", *([config_name] if config_name else [])]}
    if SHIPPED_CONFIGS.is_dir():
        node["hydra"] = {"searchpath": [SHIPPED_CONFIGS.as_uri()]}
    return node


def from_composed(
    composed: DictConfig, origin: Mapping[str, str] | None = None, overrides: Sequence[str] = ()
) -> Config:
    """The typed, checked `Config` of a composed config (Hydra's job config in ``tools/train.py``)."""
    container = OmegaConf.to_container(composed, resolve=False)
    container.pop("hydra", None)
    source = (origin or {}).get("", "the config")
    try:
        _check_keys(container, Config, "", source)
    except ConfigError as e:  # a key that `+key=value` added is the command line's, not the file's
        added = [o for o in overrides if o.startswith("+") and f"'{o.lstrip('+').split('=')[0]}'" in str(e)]
        if not added:
            raise
        raise ConfigError(CLI_SOURCE + str(e)[str(e).index(": unknown") :]) from e
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), container)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        if "missing mandatory" in str(e).lower():
            raise ConfigError(
                f"'{key}': a required value is missing (set it in the YAML file or as {key}=...)"
            ) from e
        raise ConfigError(f"{source}: bad value for '{key}': {_first_line(e)}") from e
    _check_values(cfg, "")
    # Values read from the environment (``${oc.env:TOKEN}``) may be secrets: what the run saves keeps the
    # interpolation, not the value (`to_dict`).
    cfg._from_environment = dict(_environment_lookups(container))
    return cfg


def _environment_lookups(node, prefix: str = ""):
    """(dotted key, raw text) of every value that reads the environment."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _environment_lookups(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _environment_lookups(value, f"{prefix}{i}.")
    elif isinstance(node, str) and "${oc.env:" in node:
        yield prefix.rstrip("."), node


def to_dict(cfg: Config) -> dict:
    """The config as plain, resolved containers (for checkpoints and logs), except the values read from
    the environment: those keep their ``${oc.env:…}`` (a token or a password must not be copied into every
    checkpoint; a run repeated from its ``config.yaml`` reads the environment again)."""
    data = dataclasses.asdict(cfg)
    for key, raw in getattr(cfg, "_from_environment", {}).items():
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = raw
    return data


def to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML: what a run saves beside its checkpoints (``config.yaml``)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


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


# ---------------------------------------------------------------------------------- Hydra's errors


def translate_error(error: Exception, origin: Mapping[str, str]) -> ConfigError:
    """One line from what Hydra or OmegaConf raised while composing: the key, the file, the way out."""
    if isinstance(error, ConfigError):
        return error
    text = str(error)
    cause = error.__cause__ or error
    found = re.match(r"In '([^']+)': ", text)
    source = origin.get(found.group(1), f"{found.group(1)}.yaml") if found else CLI_SOURCE
    key = getattr(cause, "full_key", None) or _search(r"full_key: (\S+)", str(cause))
    if type(error).__name__ == "OverrideParseException":
        override = _search(r"override '([^']*)'", text) or text
        return ConfigError(
            f"override {override!r} is not key=value (e.g. optim.lr=0.1; Hydra's grammar: +key=value "
            f"adds, ~key removes): {text.splitlines()[1] if len(text.splitlines()) > 1 else text}"
        )
    if type(error).__name__ == "MissingConfigException":
        missing = _search(r"Could not (?:load|find) '([^']+)'", text) or "?"
        return ConfigError(f"{source}: 'defaults' names {missing!r}, which is not a config next to it")
    deleted = _search(r"Could not delete from config\. '([^']+)'", text) or (
        key if "does not support deletion" in str(cause) else None
    )
    if deleted:
        message = f"'{deleted}' is a schema key and cannot be removed (set it to null)"
        return ConfigError(f"{CLI_SOURCE}: {message}")
    if key and re.search(r"Key '[^']+' (is )?not in", str(cause)):
        return ConfigError(_unknown_key_message(key, source))
    if isinstance(cause, yaml.YAMLError):
        return ConfigError(f"{source} (or a file in its defaults): not valid YAML: {cause}")
    if key:
        reason = _first_line(cause)
        if "is not a subclass of" in reason:
            return ConfigError(f"{source}: '{key}' is a section; expected keys under it ({reason})")
        return ConfigError(f"{source}: bad value for '{key}': {reason}")
    return ConfigError(f"{source}: {_first_line(error)}")


def _unknown_key_message(key: str, source: str) -> str:
    *parents, leaf = key.split(".")
    cls, prefix = Config, ""
    for part in parents:
        hint = typing.get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(hint):
            break
        cls, prefix = hint, f"{prefix}{part}."
    fields = sorted(f.name for f in dataclasses.fields(cls))
    close = difflib.get_close_matches(leaf, fields, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    return f"{source}: unknown config key '{key}'{hint} (valid keys here: {', '.join(fields)})"


def _search(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text)
    return found.group(1) if found else None


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def check_size(data, source: str) -> None:
    """Raise `ConfigError` naming ``source`` when ``data`` (dicts and lists) nests deeper than `MAX_DEPTH`,
    would expand to more than `MAX_NODES` nodes with its shared parts copied, or contains itself.

    Shared parts are counted as often as they are referenced, but each is walked once: nothing is expanded.
    """
    _walk_size(
        data,
        source,
        lambda node: node.values() if isinstance(node, Mapping) else node,
        lambda node: isinstance(node, Mapping | list | tuple),
    )


def _walk_size(root, source: str, children, is_container) -> None:
    sizes: dict[int, tuple[int, int]] = {}  # id → (nodes, depth) of a container already walked
    active: set[int] = set()

    def walk(node, level: int) -> tuple[int, int]:
        if not is_container(node):
            return 1, 0
        if level > MAX_DEPTH:  # checked on the way down: a deep file never reaches Python's recursion limit
            raise ConfigError(f"{source}: the config nests deeper than {MAX_DEPTH} levels")
        if id(node) in active:
            raise ConfigError(f"{source}: a config value contains itself (a recursive alias)")
        if id(node) not in sizes:
            active.add(id(node))
            nodes, depth = 1, 0
            for child in children(node):
                n, d = walk(child, level + 1)
                nodes, depth = nodes + n, max(depth, d + 1)
                if nodes > MAX_NODES:
                    raise ConfigError(
                        f"{source}: the config expands to more than {MAX_NODES} values (aliases counted as "
                        f"copies, as they are expanded)"
                    )
            active.discard(id(node))
            sizes[id(node)] = nodes, depth
        nodes, depth = sizes[id(node)]
        if level + depth > MAX_DEPTH:  # a shared part met again, deeper than before
            raise ConfigError(f"{source}: the config nests deeper than {MAX_DEPTH} levels")
        return nodes, depth

    walk(root, 0)


def _yaml_children(node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return node.value


def _check_yaml(path: Path) -> None:
    """The given file itself: Hydra's YAML errors do not say which file they are in.  Bounded first: its
    size, then its depth and expanded size from the composed node graph (aliases are shared nodes there)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {size} bytes, over the {MAX_FILE_BYTES} a config file may have")
    try:
        text = path.read_text(encoding="utf-8-sig")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            _walk_size(
                root,
                str(path),
                _yaml_children,
                lambda node: isinstance(node, yaml.MappingNode | yaml.SequenceNode),
            )
        data = yaml.safe_load(text)
    except RecursionError as e:
        raise ConfigError(f"{path}: the config nests too deeply to read") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")


def _names_in(folder: Path, primary: Path) -> dict[str, str]:
    """Config name → file, for the YAML files Hydra can reach from the primary config's folder."""
    names = {}
    for path in folder.rglob("*.y*ml"):
        relative = path.relative_to(folder).with_suffix("").as_posix()
        names[relative] = str(primary.parent / path.relative_to(folder))
    return names


@contextlib.contextmanager
def _own_hydra() -> Iterator[None]:
    """Compose even inside a Hydra job (whose GlobalHydra is initialised), restoring it afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    if not hydra.is_initialized():
        yield
        return
    saved = hydra.hydra
    hydra.clear()
    try:
        yield
    finally:
        GlobalHydra.instance().initialize(saved)


# ------------------------------------------------------------------------------------ the schema


def _check_keys(node: dict, cls, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in node.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown_key_message(full, source))
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
        check_value(key, value, f.metadata)
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
    if len(d.area_scale) != 2 or d.area_scale[0] > d.area_scale[1]:
        raise ConfigError(f"'data.area_scale' needs two fractions [min, max], min <= max, got {d.area_scale}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"'optim.betas' needs two values [beta1, beta2], got {cfg.optim.betas}")
    if cfg.train.overwrite and cfg.train.resume:
        raise ConfigError(
            f"'train.overwrite' starts the run over and 'train.resume' ({cfg.train.resume}) continues it: "
            f"set only one"
        )
    if cfg.schedule.warmup_epochs >= cfg.schedule.epochs and cfg.schedule.warmup_epochs > 0:
        raise ConfigError(
            f"'schedule.warmup_epochs' ({cfg.schedule.warmup_epochs}) must be shorter than "
            f"schedule.epochs ({cfg.schedule.epochs})"
        )
