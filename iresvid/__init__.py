"""iresvid: improved residual networks (iResNet, ResGroup) and the ResNet family for video, in 2D and 3D."""

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "__version__"]


def __getattr__(name):
    # Lazy, so that data-loader workers importing `iresvid.data` do not pay for building the model registry.
    if name in ("create_model", "list_models"):
        from iresvid import models

        return getattr(models, name)
    raise AttributeError(f"module 'iresvid' has no attribute {name!r}")
