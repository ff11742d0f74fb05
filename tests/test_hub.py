"""torch.hub: the repository root is a hub repo whose entry points are the registry's models."""

import importlib.util
from pathlib import Path

import pytest
import torch

import iresvid

REPO = Path(__file__).resolve().parents[1]


def test_hub_lists_every_registered_model():
    # torch.hub.list reads GitHub repositories only; this is what it lists: the public callables
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert entries == set(iresvid.list_models())
    assert hubconf.dependencies[0] == "torch"


def test_hub_builds_a_model_and_loads_weights_from_a_path(tmp_path):
    kwargs = dict(num_classes=10, width_scale=0.125)
    model = torch.hub.load(str(REPO), "iresnet3d50", source="local", pretrained=False, **kwargs)
    assert model.pretrained_cfg["architecture"] == "iresnet3d50" and model.num_classes == 10
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)

    loaded = torch.hub.load(str(REPO), "iresnet3d50", source="local", pretrained=str(weights), **kwargs)
    direct = iresvid.create_model("iresnet3d50", pretrained=str(weights), **kwargs)
    fresh = iresvid.create_model("iresnet3d50", **kwargs)
    for key, value in direct.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert any(not torch.equal(v, fresh.state_dict()[k]) for k, v in direct.state_dict().items())

    x = torch.randn(1, 3, 4, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), direct.eval()(x))
    with pytest.raises(ValueError, match="no weights are registered locally"):
        torch.hub.load(str(REPO), "iresnet3d50", source="local", pretrained=True)
