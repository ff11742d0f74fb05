"""The model registry: every name is a family spec at a depth, in 2D or 3D.

``create_model("iresnet3d50")`` and ``create_model("iresnet3d", depth=50)`` build the same network.  Names
insert ``3d`` after the family (``se_resnext3d50_32x4d``).  Any `ResNet` argument (``inflate``,
``temporal_strides``, ``drop_rate``…) or `ResNetSpec` field (``layers``, ``se_reduction``…) can be overridden
by keyword, and ``width_scale`` shrinks a model for tests and demos.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from torch import nn

from iresvid.models.features import FeatureExtractor, take_indices
from iresvid.models.resnet import ResNet, ResNetSpec, cifar_spec, resgroup_spec, resnet_spec
from iresvid.models.weights import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINETICS_MEAN,
    KINETICS_STD,
    load_pretrained,
    open_checkpoint,
    registered_file,
)

DEFAULT_CFG = {
    "imagenet": dict(input_size=(3, 224, 224), num_classes=1000, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "kinetics": dict(
        input_size=(3, 8, 224, 224), num_classes=400, mean=KINETICS_MEAN, std=KINETICS_STD, frame_stride=8
    ),
    "cifar": dict(input_size=(3, 32, 32), num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD),
}


@dataclass(frozen=True)
class Family:
    """A family: how to make its spec at a depth, the depths that get their own registry names."""

    name: str
    make_spec: Callable[[int], ResNetSpec]
    depths: tuple[int, ...]
    dims: tuple[int, ...] = (2, 3)
    suffix: str = ""  # e.g. "_32x4d": the name is f"{name}{depth}{suffix}"
    default_depth: int | None = None  # for families registered without a depth (CIFAR nets)
    description: str = ""  # for the zoo table, where the name alone does not say it


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: Family
    depth: int | None  # None: the family builder, which takes ``depth=``
    dims: int
    default_cfg: dict = field(default_factory=dict)
    builder: Callable[..., nn.Module] | None = None  # a model added with `register_model`

    def spec(self, depth: int | None) -> ResNetSpec:
        depth = depth if depth is not None else self.depth or self.family.default_depth
        if depth is None:
            raise TypeError(
                f"'{self.name}' is a family builder: give depth=, e.g. create_model('{self.name}', "
                f"depth={self.family.depths[0]}); registered depths: {list(self.family.depths)}"
            )
        return self.family.make_spec(depth)


_DEPTHS = (18, 34, 50, 101, 152, 200)
_resnet, _resgroup, _cifar = resnet_spec, resgroup_spec, cifar_spec
_RESSTAGE, _IRESNET = dict(roles="resstage"), dict(roles="resstage", improved=True)

FAMILIES = [
    Family("resnet", _resnet, _DEPTHS, description="ResNet (v1.5)"),
    Family("preact_resnet", partial(_resnet, roles="preact"), _DEPTHS, description="pre-activation ResNet"),
    Family("resstage", partial(_resnet, **_RESSTAGE), (50, 101, 152, 200), description="ResStage roles only"),
    Family("iresnet", partial(_resnet, **_IRESNET), _DEPTHS + (302, 404, 1001), description="iResNet"),
    Family("resnext", partial(_resnet, groups=32, width_per_group=4), (50, 101), suffix="_32x4d"),
    Family("resnext", partial(_resnet, groups=32, width_per_group=8), (101,), suffix="_32x8d"),
    Family("se_resnet", partial(_resnet, se=True), (50, 101, 152)),
    Family("se_resnext", partial(_resnet, groups=32, width_per_group=4, se=True), (50, 101), suffix="_32x4d"),
    Family("se_iresnet", partial(_resnet, se=True, **_IRESNET), (50,), description="SE on iResNet"),
    Family("resgroup", partial(_resgroup, fixed_groups=False), (50, 101, 152)),
    Family("resgroupfix", partial(_resgroup, fixed_groups=True), (50, 101, 152)),
    Family("iresgroup", partial(_resgroup, fixed_groups=False, improved=True), (50, 101, 152)),
    Family("iresgroupfix", partial(_resgroup, fixed_groups=True, improved=True), (50, 101, 152)),
    Family("resnet_cifar", _cifar, (), dims=(2,), default_depth=110),
    Family("preact_resnet_cifar", partial(_cifar, roles="preact"), (), dims=(2,), default_depth=110),
    Family("iresnet_cifar", partial(_cifar, **_IRESNET), (), dims=(2,), default_depth=110),
]

_MODELS: dict[str, ModelEntry] = {}  # concrete names, listed by list_models
_BUILDERS: dict[str, ModelEntry] = {}  # family builders taking depth= ("iresnet", "iresnet3d", …)


def _dataset_cfg(family: Family, dims: int) -> dict:
    if family.name.endswith("_cifar"):
        return DEFAULT_CFG["cifar"]
    return DEFAULT_CFG["kinetics" if dims == 3 else "imagenet"]


def _register_all() -> None:
    for family in FAMILIES:
        for dims in family.dims:
            base = family.name + ("3d" if dims == 3 else "")
            cfg = _dataset_cfg(family, dims)
            if family.default_depth is not None:
                _MODELS[base] = ModelEntry(base, family, None, dims, cfg)
            builder = base + family.suffix  # "iresnet3d", "resnext_32x8d"
            _BUILDERS[builder] = ModelEntry(builder, family, None, dims, cfg)
            for depth in family.depths:
                name = f"{base}{depth}{family.suffix}"
                _MODELS[name] = ModelEntry(name, family, depth, dims, cfg)


_register_all()

_SPEC_FIELDS = {f.name for f in dataclasses.fields(ResNetSpec)}
_MODEL_ARGS = set(inspect.signature(ResNet.__init__).parameters) - {"self", "spec", "dims"}


def list_models(
    pattern: str = "*", *, dims: int | None = None, exclude: str | None = None, by_family: bool = False
) -> list[str]:
    """Registered model names matching a shell-style pattern, e.g. ``list_models("iresnet3d*")``.

    Sorted by name, or with ``by_family`` in the order of the family table, 2D before 3D (the zoo table's).
    """
    names = [
        n
        for n, e in _MODELS.items()
        if fnmatch.fnmatch(n, pattern)
        and (dims is None or e.dims == dims)
        and not (exclude and fnmatch.fnmatch(n, exclude))
    ]
    if by_family:
        return sorted(names, key=lambda n: _MODELS[n].dims)  # stable: keeps the table order within a dims
    return sorted(names, key=_natural_key)


def list_families() -> list[str]:
    """Names that build any depth: ``create_model(name, depth=...)``."""
    return sorted(_BUILDERS)


def get_model_entry(name: str) -> ModelEntry:
    entry = _MODELS.get(name) or _BUILDERS.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_MODELS) + list(_BUILDERS), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see iresvid.list_models())")
    return entry


def register_model(name_or_builder=None, builder: Callable[..., nn.Module] | None = None, **entry_options):
    """Add a model to the registry: ``register_model("name", fn)``, ``@register_model`` or
    ``@register_model("name")``.

    ``fn(**kwargs)`` returns the model; `create_model` passes it ``num_classes`` and any other keywords,
    and then applies ``pretrained`` and ``features_only`` as for every entry (the model needs the
    `ResNet` interface for those).  Options: ``dims`` (2 or 3, default 2), ``default_cfg`` (mean, std,
    input_size, num_classes; default the ImageNet or Kinetics one), ``description``.  A name already
    registered is refused.
    """
    if callable(name_or_builder) and builder is None:  # @register_model
        return _register_builder(name_or_builder.__name__, name_or_builder, **entry_options)
    if builder is not None:  # register_model("name", fn)
        return _register_builder(name_or_builder, builder, **entry_options)

    def decorate(fn):  # @register_model("name") or @register_model()
        return _register_builder(name_or_builder or fn.__name__, fn, **entry_options)

    return decorate


def _register_builder(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    dims: int = 2,
    default_cfg: dict | None = None,
    description: str = "",
) -> Callable[..., nn.Module]:
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_model needs a model name (a non-empty str), got {name!r}")
    if not callable(builder):
        raise TypeError(f"register_model({name!r}, builder): builder must be callable, got {builder!r}")
    if name in _MODELS or name in _BUILDERS:
        raise ValueError(
            f"model {name!r} is already registered; pick another name (see iresvid.list_models())"
        )
    if dims not in (2, 3):
        raise ValueError(f"register_model({name!r}): dims must be 2 or 3, got {dims!r}")
    cfg = dict(DEFAULT_CFG["kinetics" if dims == 3 else "imagenet"], **(default_cfg or {}))

    def no_spec(depth: int) -> ResNetSpec:
        raise TypeError(f"{name!r} was added with register_model: it has no family spec")

    family = Family(name, no_spec, (), dims=(dims,), description=description or name)
    _MODELS[name] = ModelEntry(name, family, None, dims, cfg, builder=builder)
    return builder


def create_model(
    name: str,
    *,
    pretrained: bool | str | os.PathLike | None = None,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    depth: int | None = None,
    width_scale: float = 1.0,
    inflate_init: str = "center",
    **overrides,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registry name (``list_models()``) or a family builder (``list_families()``) with ``depth``.
        pretrained: False / None: random init.  A path: a checkpoint to load (official iResNet / torchvision /
            timm SE-ResNet / pytorchvideo state dicts or our own training checkpoints); a 2D checkpoint into a
            3D model is inflated (``inflate_init`` "center" or "average").  True: the local file the weights
            table (`iresvid.models.register_weights`) holds for ``name``; none ship, so without one it is a
            `CheckpointError` saying how to pass a file.  What was loaded (file, sha256, source, inflation,
            the mean/std the weights expect) is recorded in ``model.pretrained_cfg``.
        num_classes: classifier size (default: the checkpoint's, else the model's default dataset's); 0
            returns pooled features.  When it differs from the checkpoint's, the checkpoint's classifier
            is dropped for a fresh one (fine-tuning in one call: the same as loading, then
            ``model.reset_classifier(num_classes)``).
        features_only: return a `FeatureExtractor` giving the maps of ``out_indices`` (0 = stem before
            its max-pool, k = stage k; default all; an int n: the last n); stages after the last one asked
            for and the head are removed from the model built.
        width_scale: shrink every width (tests, demos); channels per group are kept.
        overrides: `ResNet` arguments (``inflate``, ``temporal_strides``, ``drop_rate``, ``frozen_stages``…)
            or `ResNetSpec` fields (``layers``, ``se_reduction``…).
    """
    entry = get_model_entry(name)
    if pretrained is True:
        pretrained = registered_file(name)
    checkpoint = open_checkpoint(pretrained) if pretrained not in (None, False) else None
    build_classes = num_classes
    if checkpoint is not None and checkpoint.num_classes is not None and num_classes != 0:
        # Built with the checkpoint's classifier, loaded, then given a fresh one if another size is asked
        # for: exactly load-then-reset_classifier, random state included.
        build_classes = checkpoint.num_classes
        num_classes = build_classes if num_classes is None else num_classes
    if entry.builder is not None:
        model = _build_registered(entry, build_classes, depth, width_scale, overrides)
    else:
        model = _build_family(entry, build_classes, depth, width_scale, overrides)
    if checkpoint is not None:
        load_pretrained(model, checkpoint, inflate_init=inflate_init, num_classes=num_classes)
    if features_only:
        return _features_only(model, out_indices)
    return model


def _build_family(entry: ModelEntry, num_classes, depth, width_scale, overrides) -> ResNet:
    name = entry.name
    if depth is not None and entry.depth is not None:
        raise TypeError(
            f"'{name}' already has a depth ({entry.depth}); give depth= to a family builder "
            f"instead: {list_families()}"
        )
    spec_overrides = {k: overrides.pop(k) for k in list(overrides) if k in _SPEC_FIELDS}
    unknown = set(overrides) - _MODEL_ARGS
    if unknown:
        valid = sorted(_MODEL_ARGS | _SPEC_FIELDS | {"depth", "width_scale", "inflate_init"})
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"create_model('{name}'): unknown argument {key!r}{hint} Valid: {', '.join(valid)}")
    if entry.dims == 2 and any(
        k in overrides
        for k in ("inflate", "temporal_strides", "stem_temporal_kernel", "stage1_temporal_pool")
    ):
        raise TypeError(f"'{name}' is a 2D model; 3D options need its 3D twin (e.g. names with '3d')")

    spec = entry.spec(depth)
    if spec_overrides:
        spec = dataclasses.replace(spec, **spec_overrides)
    spec = spec.scaled(width_scale)
    if num_classes is None:
        num_classes = entry.default_cfg["num_classes"]
    model = ResNet(spec, dims=entry.dims, num_classes=num_classes, **overrides)
    model.pretrained_cfg = _default_pretrained_cfg(entry, num_classes)
    return model


def _build_registered(entry: ModelEntry, num_classes, depth, width_scale, overrides) -> nn.Module:
    kwargs = dict(overrides)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if depth is not None:
        kwargs["depth"] = depth
    if width_scale != 1.0:
        kwargs["width_scale"] = width_scale
    model = entry.builder(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"the builder registered as {entry.name!r} returned {type(model).__name__}, not a Module"
        )
    classes = getattr(
        model, "num_classes", num_classes if num_classes is not None else entry.default_cfg["num_classes"]
    )
    cfg = _default_pretrained_cfg(entry, classes)
    model.pretrained_cfg = {**cfg, **getattr(model, "pretrained_cfg", {}), "architecture": entry.name}
    return model


def _default_pretrained_cfg(entry: ModelEntry, num_classes: int) -> dict:
    # timm's keys: the first conv (for in_chans adaptation), the classifier (for heads), the dataset's
    # statistics; `load_pretrained` replaces them with what the loaded weights expect.
    return dict(
        entry.default_cfg,
        architecture=entry.name,
        num_classes=num_classes,
        first_conv="conv1",
        classifier="fc",
        file=None,
        sha256=None,
        source=None,
        inflated_from=None,
        inflate_init=None,
    )


def _features_only(model: nn.Module, out_indices) -> FeatureExtractor:
    """The model built for ``features_only``: the stages after the last level asked for, the final norm and
    the head are removed (they would be dead parameters); other models are never changed."""
    levels, _ = take_indices(len(model.feature_info), out_indices)  # absolute: pruning shortens the list
    if hasattr(model, "prune_intermediate_layers"):
        model.prune_intermediate_layers(levels, prune_norm=True, prune_head=True)
    return FeatureExtractor(model, levels)


def _natural_key(name: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
