"""torch.hub entry points: every registered model (``iresvid.list_models()``), weights from a path.

    model = torch.hub.load("path/to/iresvid", "iresnet3d50", source="local", pretrained="iresnet50.pth")

``pretrained``: False (random initialisation), True (the weights registered locally for the name) or the
path of a checkpoint that `iresvid.create_model` loads
(official iResNet, torchvision, pytorchvideo, ours; 2D weights are inflated into 3D models).  Other keyword
arguments are `create_model`'s (``num_classes``, ``inflate``, ``width_scale``…).
"""

import iresvid

dependencies = ["torch", "torchvision", "numpy", "yaml", "omegaconf"]


def _entry(name: str):
    def build(pretrained=False, **kwargs):
        # A path loads that file; True, the weights registered locally for the name (`register_weights`),
        # else an error saying that none ship and how to pass a file: `create_model`'s own contract.
        return iresvid.create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"``iresvid.create_model({name!r}, pretrained=path or None, **kwargs)``."
    return build


globals().update({name: _entry(name) for name in iresvid.list_models()})
