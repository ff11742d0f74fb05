"""Residual networks for images and video: one dims-generic code path, families as specs, a registry."""

from iresvid.models.registry import (
    FeatureExtractor,
    create_model,
    get_model_entry,
    list_families,
    list_models,
)
from iresvid.models.resnet import ResNet, ResNetSpec
from iresvid.models.weights import CheckpointError, load_pretrained

__all__ = [
    "CheckpointError",
    "FeatureExtractor",
    "ResNet",
    "ResNetSpec",
    "create_model",
    "get_model_entry",
    "list_families",
    "list_models",
    "load_pretrained",
]
