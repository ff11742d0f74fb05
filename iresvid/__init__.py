"""iresvid: improved residual networks (iResNet, ResGroup) and the ResNet family for video, in 2D and 3D."""

__version__ = "0.1.0"

__all__ = ["Predictor", "create_model", "list_models", "register_model", "__version__"]


def __getattr__(name):
    # Lazy, so that data-loader workers importing `iresvid.data` do not pay for building the model registry.
    if name in ("create_model", "list_models", "register_model"):
        from iresvid import models

        return getattr(models, name)
    if name == "Predictor":
        from iresvid.engine.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'iresvid' has no attribute {name!r}")
