"""Checkpoints of other libraries (timm, pytorchvideo) give that library's own logits once loaded."""

import pytest
import torch
from test_weights import randomize_bn

import iresvid

timm = pytest.importorskip("timm")


def _randomize_se(model, seed=2):
    """Random SE biases too (timm initialises them to zero), so a dropped or misplaced bias shows."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if ".se." in name and name.endswith("bias"):
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _timm_reference(name):
    torch.manual_seed(0)
    return _randomize_se(randomize_bn(timm.create_model(name, pretrained=False))).eval()


# timm's SE pools with ``mean((2, 3))`` and gates with 1×1 convs, ours with ``Linear``: the same function, a
# different float32 rounding (≈2e-6 of the logits' scale at depth 50).  Compared in float64, a conversion
# error cannot hide in that noise and the tolerance can be far below 1e-5.
EXACT = dict(rtol=1e-9, atol=1e-9)


# (timm name, our create_model arguments)
TIMM_SE = [
    ("seresnet50", dict(name="se_resnet50")),
    ("seresnext50_32x4d", dict(name="se_resnext50_32x4d")),
    ("seresnet18", dict(name="se_resnet", depth=18)),
    ("seresnet34", dict(name="se_resnet", depth=34)),
]


@pytest.mark.parametrize("timm_name,ours", TIMM_SE, ids=[t for t, _ in TIMM_SE])
def test_timm_se_state_dict_gives_timm_logits(tmp_path, timm_name, ours):
    reference = _timm_reference(timm_name)
    path = tmp_path / f"timm_{timm_name}.pth"
    torch.save(reference.state_dict(), path)
    ours = dict(ours)
    model = iresvid.create_model(ours.pop("name"), pretrained=str(path), **ours).eval()
    assert model.pretrained_cfg["source"] == "timm"
    assert model.pretrained_cfg["classifier_loaded"] and model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        expected = reference.double()(x)
        torch.testing.assert_close(model.double()(x), expected, **EXACT)


def test_timm_se_width_rounding_is_timms():
    """timm rounds the SE width to a multiple of 8 (64 / 16 → 8): basic-block SE nets build it so."""
    model = iresvid.create_model("se_resnet", depth=18)
    assert model.layer1[0].se.fc1.weight.shape == (8, 64)
    assert iresvid.create_model("se_resnet50").layer1[0].se.fc1.weight.shape == (16, 256)


def test_timm_se_inflates_into_a_3d_se_model(tmp_path):
    """A timm SE-ResNet-50, center-inflated into se_resnet3d50: a static clip gives timm's 2D logits."""
    reference = _timm_reference("seresnet50")
    path = tmp_path / "timm_seresnet50.pth"
    torch.save(reference.state_dict(), path)
    model = iresvid.create_model(
        "se_resnet3d50", pretrained=str(path), num_classes=1000, inflate="slow"
    ).eval()
    assert model.pretrained_cfg["source"] == "timm" and model.pretrained_cfg["inflate_init"] == "center"
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    clip = x[:, :, None].expand(-1, -1, 4, -1, -1)
    with torch.no_grad():
        expected = reference.double()(x)
        torch.testing.assert_close(model.double()(clip), expected, **EXACT)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_timm_plain_resnet_state_dict_loads_exactly(tmp_path, name):
    """timm's plain ResNet(Xt)s have torchvision's keys: through ``pretrained=``, bit-identical logits."""
    reference = randomize_bn(timm.create_model(name, pretrained=False)).eval()
    path = tmp_path / f"timm_{name}.pth"
    torch.save(reference.state_dict(), path)
    model = iresvid.create_model(name, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


# pytorchvideo hub model, our create_model arguments for the same network
PYTORCHVIDEO = [
    ("c2d_r50", dict(inflate="c2d", stage1_temporal_pool=2)),
    ("i3d_r50", dict(inflate="i3d_r50", stage1_temporal_pool=2)),
]


@pytest.mark.parametrize("hub_name,ours", PYTORCHVIDEO, ids=[n for n, _ in PYTORCHVIDEO])
def test_pytorchvideo_c2d_and_i3d_give_pytorchvideo_logits(tmp_path, hub_name, ours):
    from pytorchvideo.models import hub

    torch.manual_seed(0)
    # 8 × 64 × 64: the pool after stage 1 halves the clip, stage 4 maps are 4 × 2 × 2; the head's average
    # pool is sized to them so it is the global average, as the hub's (4, 7, 7) is at 8 × 224 × 224.
    reference = getattr(hub, hub_name)(pretrained=False, head_pool_kernel_size=(4, 2, 2))
    reference = randomize_bn(reference).eval()
    path = tmp_path / f"{hub_name}.pyth"
    torch.save({"model_state": reference.state_dict()}, path)  # the hub checkpoints' layout
    model = iresvid.create_model("resnet3d50", pretrained=str(path), **ours).eval()
    assert model.pretrained_cfg["source"] == "pytorchvideo" and model.num_classes == 400
    x = torch.randn(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        expected = reference.double()(x)
        torch.testing.assert_close(model.double()(x), expected, **EXACT)


def test_stage1_temporal_pool_keeps_keys_and_halves_the_clip():
    plain = iresvid.create_model("resnet3d50", inflate="c2d", width_scale=0.125)
    pooled = iresvid.create_model("resnet3d50", inflate="c2d", width_scale=0.125, stage1_temporal_pool=2)
    assert list(plain.state_dict()) == list(pooled.state_dict())
    maps = pooled.forward_intermediates(torch.randn(1, 3, 8, 32, 32), intermediates_only=True)
    assert [m.shape[2] for m in maps] == [8, 8, 4, 4, 4]  # level 1 is stage 1's output, before the pool
    with pytest.raises(TypeError, match="2D model"):
        iresvid.create_model("resnet50", stage1_temporal_pool=2)
