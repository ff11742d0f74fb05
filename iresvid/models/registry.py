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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from torch import nn

from iresvid.models.resnet import ResNet, ResNetSpec, cifar_spec, resgroup_spec, resnet_spec

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Kinetics models in SlowFast / pytorchvideo normalise with these.
KINETICS_MEAN, KINETICS_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

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


def create_model(
    name: str,
    *,
    pretrained: str | None = None,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    depth: int | None = None,
    width_scale: float = 1.0,
    inflate_init: str = "center",
    **overrides,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registry name (``list_models()``) or a family builder (``list_families()``) with ``depth``.
        pretrained: path to a checkpoint to load: official iResNet / torchvision / pytorchvideo state dicts
            or our own training checkpoints; a 2D checkpoint into a 3D model is inflated (``inflate_init``
            "center" or "average").  See `iresvid.models.weights`.
        num_classes: classifier size (default: the dataset of the model's default config); 0 returns pooled
            features.  With ``pretrained`` it must match the checkpoint: to fine-tune, load, then call
            ``model.reset_classifier(n)``.
        features_only: return a `FeatureExtractor` giving the maps of ``out_indices`` (0 = stem,
            k = stage k; default all).
        width_scale: shrink every width (tests, demos); channels per group are kept.
        overrides: `ResNet` arguments (``inflate``, ``temporal_strides``, ``drop_rate``, ``frozen_stages``…)
            or `ResNetSpec` fields (``layers``, ``se_reduction``…).
    """
    entry = get_model_entry(name)
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
        k in overrides for k in ("inflate", "temporal_strides", "stem_temporal_kernel")
    ):
        raise TypeError(f"'{name}' is a 2D model; 3D options need its 3D twin (e.g. names with '3d')")

    spec = entry.spec(depth)
    if spec_overrides:
        spec = dataclasses.replace(spec, **spec_overrides)
    spec = spec.scaled(width_scale)
    if num_classes is None:
        num_classes = entry.default_cfg["num_classes"]
    model = ResNet(spec, dims=entry.dims, num_classes=num_classes, **overrides)
    model.pretrained_cfg = dict(entry.default_cfg, architecture=name, num_classes=num_classes)
    if pretrained is not None:
        from iresvid.models.weights import load_pretrained

        load_pretrained(model, pretrained, inflate_init=inflate_init)
    if features_only:
        return FeatureExtractor(model, out_indices)
    return model


class FeatureExtractor(nn.Module):
    """A backbone returning a list of feature maps (timm's ``features_only``): 0 = stem, k = stage k."""

    def __init__(self, model: ResNet, out_indices: Sequence[int] | None = None):
        super().__init__()
        num_levels = len(model.feature_info)
        out_indices = tuple(range(num_levels) if out_indices is None else out_indices)
        bad = [i for i in out_indices if not -num_levels <= i < num_levels]
        if bad:
            raise ValueError(
                f"out_indices {bad} out of range: this model has {num_levels} feature levels "
                f"(0 = stem, 1..{num_levels - 1} = stages)"
            )
        self.out_indices = tuple(i % num_levels for i in out_indices)
        model.reset_classifier(0)
        model.final_norm = None  # a pre-activation net's final BN belongs to the head path
        self.model = model
        self.feature_info = [model.feature_info[i] for i in self.out_indices]

    def forward(self, x):
        features = self.model.forward_intermediates(x)
        return [features[i] for i in self.out_indices]


def _natural_key(name: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
