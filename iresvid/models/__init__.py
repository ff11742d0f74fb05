"""Residual networks for images and video: one dims-generic code path, families as specs, a registry."""

from iresvid.models.features import FeatureExtractor, FeatureInfo
from iresvid.models.registry import (
    create_model,
    get_model_entry,
    list_families,
    list_models,
    register_model,
)
from iresvid.models.resnet import ResNet, ResNetSpec
from iresvid.models.weights import (
    CheckpointError,
    load_pretrained,
    register_weights,
    registered_weights,
    unregister_weights,
)

__all__ = [
    "CheckpointError",
    "FeatureExtractor",
    "FeatureInfo",
    "ResNet",
    "ResNetSpec",
    "create_model",
    "get_model_entry",
    "list_families",
    "list_models",
    "load_pretrained",
    "register_model",
    "register_weights",
    "registered_weights",
    "unregister_weights",
]
