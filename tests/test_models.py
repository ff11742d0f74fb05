"""The model zoo: exact parameter counts, the registry sweep, roles, inflation, deep nets."""

import pytest
import torch

import iresvid
from iresvid.models import get_model_entry, list_families
from iresvid.models.blocks import END, END_NO_BN0, FIRST_MIDDLE, MIDDLE, PLAIN, START, stage_roles
from iresvid.models.resnet import block_temporal_kernels, stage_layers


def num_params(model):
    return sum(p.numel() for p in model.parameters())


# Official code counts (ARCHITECTURE.md); torchvision / timm for ResNeXt and SE-ResNet.
PARAMS = {
    "resnet50": 25_557_032,
    "resstage50": 25_557_032,
    "iresnet50": 25_557_032,
    "iresnet18": 11_689_512,
    "iresnet101": 44_549_160,
    "resgroup50": 24_887_080,
    "iresgroup50": 24_887_080,
    "resgroupfix50": 23_366_440,
    "iresgroupfix50": 23_366_440,
    "resnet18": 11_689_512,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "se_resnet50": 28_088_024,
}


@pytest.mark.parametrize("name,expected", PARAMS.items())
def test_parameter_counts(name, expected):
    assert num_params(iresvid.create_model(name)) == expected


@pytest.mark.parametrize("inflate", ["slow", "i3d", "full", "c2d"])
@pytest.mark.parametrize("depth", [18, 50, 101])
def test_3d_iresnet_has_its_3d_resnet_twins_parameters(depth, inflate):
    """The improvements cost no parameters in 3D either, under every inflation."""
    resnet = num_params(iresvid.create_model(f"resnet3d{depth}", inflate=inflate))
    assert num_params(iresvid.create_model(f"iresnet3d{depth}", inflate=inflate)) == resnet
    if depth >= 50:
        assert num_params(iresvid.create_model(f"resstage3d{depth}", inflate=inflate)) == resnet


def test_slow_r50_parameter_count():
    # pytorchvideo slow_r50 (400 classes) has 32,454,096 parameters; ours with the same inflation too.
    assert num_params(iresvid.create_model("resnet3d50")) == 32_454_096


def test_registry_covers_every_family_in_2d_and_3d():
    names = set(iresvid.list_models())
    for family in ["resnet", "preact_resnet", "iresnet"]:
        for depth in [18, 34, 50, 101, 152, 200]:
            assert {f"{family}{depth}", f"{family}3d{depth}"} <= names
    for depth in [302, 404, 1001]:
        assert {f"iresnet{depth}", f"iresnet3d{depth}"} <= names
    for family in ["resstage", "resgroup", "resgroupfix", "iresgroup", "iresgroupfix", "se_resnet"]:
        assert {f"{family}50", f"{family}3d50", f"{family}101", f"{family}3d101", f"{family}152"} <= names
    assert {
        "resstage200",
        "resnext50_32x4d",
        "resnext101_32x4d",
        "resnext101_32x8d",
        "resnext3d50_32x4d",
        "se_resnext50_32x4d",
        "se_resnext101_32x4d",
        "se_resnext3d50_32x4d",
        "se_iresnet50",
        "se_iresnet3d50",
        "resnet_cifar",
        "preact_resnet_cifar",
        "iresnet_cifar",
    } <= names
    assert iresvid.list_models("iresnet3d*") == [
        f"iresnet3d{d}" for d in (18, 34, 50, 101, 152, 200, 302, 404, 1001)
    ]
    assert {"iresnet", "iresnet3d", "resnext_32x8d", "iresnet_cifar"} <= set(list_families())


def test_family_builders_take_any_depth():
    assert num_params(iresvid.create_model("iresnet", depth=50)) == PARAMS["iresnet50"]
    deep = iresvid.create_model("iresnet", depth=404, width_scale=1 / 16)
    assert deep.spec.layers == (4, 46, 80, 4)
    assert stage_layers(1001, "bottleneck") == (4, 155, 170, 4)
    odd = stage_layers(77, "bottleneck")  # not an official depth: derived, and the depth is exact
    assert 3 * sum(odd) + 2 == 77
    assert iresvid.create_model("iresnet_cifar", depth=3002, width_scale=0.5).spec.layers == (500, 500, 500)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        iresvid.create_model("resnet_cifar", depth=100)
    with pytest.raises(TypeError, match="family builder"):
        iresvid.create_model("iresnet3d")
    with pytest.raises(ValueError, match="did you mean 'iresnet50'"):
        iresvid.create_model("iresnet5O")
    with pytest.raises(TypeError, match="'temporal_stride'.*did you mean 'temporal_strides'"):
        iresvid.create_model("iresnet3d50", temporal_stride=(1, 1, 2, 2))


def test_stage_roles_follow_the_official_make_layer():
    assert stage_roles(2, "resstage") == [START, END_NO_BN0]
    assert stage_roles(3, "resstage") == [START, FIRST_MIDDLE, END]
    assert stage_roles(6, "resstage") == [START, FIRST_MIDDLE, MIDDLE, MIDDLE, MIDDLE, END]
    assert stage_roles(3, "plain") == [PLAIN] * 3
    with pytest.raises(ValueError, match="at least 2 blocks"):
        stage_roles(1, "resstage")


def test_iresnet_stem_and_shortcuts():
    model = iresvid.create_model("iresnet18")
    assert model.maxpool is None and model.layer1[0].conv1.stride == (2, 2)
    assert isinstance(model.layer1[0].downsample, torch.nn.MaxPool2d)  # 64 → 64, stride only
    conv_shortcut = model.layer2[0].downsample
    assert [type(m).__name__ for m in conv_shortcut] == ["MaxPool2d", "Conv2d", "BatchNorm2d"]
    assert conv_shortcut[1].stride == (1, 1)
    model3d = iresvid.create_model("iresnet3d50", temporal_strides=(1, 1, 2, 1))
    pool = model3d.layer3[0].downsample[0]
    assert pool.kernel_size == (3, 3, 3) and pool.stride == (2, 2, 2) and pool.padding == (1, 1, 1)
    assert model3d.layer3[0].conv2.stride == (2, 2, 2)
    c2d = iresvid.create_model("iresnet3d50", inflate="c2d")
    assert c2d.layer2[0].downsample[0].kernel_size == (1, 3, 3)  # C2D never mixes frames


@pytest.mark.parametrize(
    "inflate,expected",
    [
        ("slow", {(0, 0): (1, 1, 1), (2, 0): (3, 1, 1), (3, 2): (3, 1, 1)}),
        (
            "i3d",
            {(0, 0): (3, 1, 1), (0, 1): (1, 1, 1), (1, 2): (3, 1, 1), (3, 0): (1, 1, 1), (3, 1): (3, 1, 1)},
        ),
        ("full", {(0, 0): (1, 3, 1), (3, 2): (1, 3, 1)}),
        ("c2d", {(2, 0): (1, 1, 1)}),
    ],
)
def test_inflation_patterns(inflate, expected):
    for (stage, block), kernels in expected.items():
        assert block_temporal_kernels(inflate, 3, stage, block, 4) == kernels
    model = iresvid.create_model("resnet3d50", inflate=inflate)
    for (stage, block), kernels in expected.items():
        convs = [getattr(model, f"layer{stage + 1}")[block].__getattr__(f"conv{i}") for i in (1, 2, 3)]
        assert tuple(c.kernel_size[0] for c in convs) == kernels


def test_stem_temporal_kernel_defaults_and_override():
    assert iresvid.create_model("resnet3d50").conv1.kernel_size == (1, 7, 7)
    assert iresvid.create_model("resnet3d50", inflate="i3d").conv1.kernel_size == (5, 7, 7)
    assert iresvid.create_model("resnet3d18", inflate="full").conv1.kernel_size == (3, 7, 7)
    assert iresvid.create_model("resnet3d50", stem_temporal_kernel=3).conv1.kernel_size == (3, 7, 7)
    with pytest.raises(TypeError, match="2D model"):
        iresvid.create_model("resnet50", inflate="i3d")


# -------------------------------------------------------------------------------------- the sweep

# The very deep nets are swept by the deep-network test below at their full depth.
SWEEP = [n for n in iresvid.list_models() if not n.endswith(("302", "404", "1001"))]


def _tiny_input(name, batch=2):
    dims = get_model_entry(name).dims
    return torch.randn(batch, 3, 32, 32) if dims == 2 else torch.randn(batch, 3, 4, 32, 32)


@pytest.mark.parametrize("name", SWEEP)
def test_registry_sweep(name):
    """Every entry: forward + backward, head API, features_only, num_classes=0, TorchScript tracing."""
    torch.manual_seed(0)
    model = iresvid.create_model(name, width_scale=1 / 16, num_classes=7)
    x = _tiny_input(name)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(features), model(x))
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)

    # Tracing cost grows with depth and adds nothing past three blocks a stage (every role and shortcut is
    # there by then), so each entry is traced at that depth.
    shallow = tuple(min(3, n) for n in model.spec.layers)
    model = iresvid.create_model(name, width_scale=1 / 16, num_classes=7, layers=shallow).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(x), model(x))

    extractor = iresvid.create_model(name, width_scale=1 / 16, features_only=True).eval()
    with torch.no_grad():
        maps = extractor(x)
    assert len(maps) == len(extractor.feature_info) == len(model.spec.layers) + 1
    for fmap, info in zip(maps, extractor.feature_info, strict=True):
        assert fmap.shape[1] == info["num_chs"]
        assert fmap.shape[-1] == 32 // info["reduction"]


def test_features_only_out_indices():
    extractor = iresvid.create_model(
        "iresnet3d50", width_scale=1 / 16, features_only=True, out_indices=(2, -1)
    )
    maps = extractor(torch.randn(1, 3, 4, 64, 64))
    assert [m.shape for m in maps] == [(1, 32, 4, 8, 8), (1, 128, 4, 2, 2)]
    assert [i["reduction"] for i in extractor.feature_info] == [8, 32]
    with pytest.raises(ValueError, match="out_indices"):
        iresvid.create_model("resnet18", features_only=True, out_indices=(5,))


def test_wrong_input_layout_is_named():
    with pytest.raises(ValueError, match=r"expects a \(N, C, T, H, W\) input, got shape \(2, 3, 32, 32\)"):
        iresvid.create_model("iresnet3d18", width_scale=1 / 16)(torch.randn(2, 3, 32, 32))


def test_temporal_strides_shrink_time():
    model = iresvid.create_model(
        "iresnet3d50", width_scale=1 / 16, temporal_strides=(1, 2, 2, 1), features_only=True, out_indices=(4,)
    )
    assert model(torch.randn(1, 3, 8, 64, 64))[0].shape[2] == 2


def test_backbone_knobs():
    model = iresvid.create_model("resnet3d50", width_scale=1 / 16, frozen_stages=1, norm_eval=True)
    model.train()
    assert not model.conv1.weight.requires_grad and not any(
        p.requires_grad for p in model.layer1.parameters()
    )
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert not model.layer3[0].bn1.training  # norm_eval
    zero = iresvid.create_model("iresnet50", width_scale=1 / 16, zero_init_last=True).eval()
    x = torch.randn(1, 64 // 16, 8, 8)
    for block in (zero.layer1[0], zero.layer1[1], zero.layer1[2]):  # start, first middle, end
        with torch.no_grad():
            y = block(x if block is zero.layer1[0] else torch.randn(1, 16, 4, 4))
        assert torch.isfinite(y).all()
    start = zero.layer2[1]  # first middle: output = ReLU(x) + 0
    inp = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(start(inp.clone()), torch.relu(inp))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = iresvid.create_model("iresnet3d50", width_scale=1 / 16, num_classes=3)
    x = torch.randn(2, 3, 4, 32, 32)
    model(x).sum().backward()
    expected = model.conv1.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    torch.testing.assert_close(model.conv1.weight.grad, expected)


# ---------------------------------------------------------------------------- the paper's claim


def _first_conv_grad(name, depth, x, **kwargs):
    torch.manual_seed(0)
    model = iresvid.create_model(name, depth=depth, **kwargs)
    logits = model(x)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.arange(len(x)) % logits.shape[1]).backward()
    return model.conv1.weight.grad.norm().item()


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,depth,width_scale,size",
    [
        ("iresnet", 404, 1 / 8, 64),
        ("iresnet", 1001, 1 / 8, 64),
        ("iresnet_cifar", 3002, 1 / 4, 32),
    ],
)
def test_very_deep_networks_train_and_keep_gradients_bounded(family, depth, width_scale, size):
    """Forward + backward through 404 / 1001 / 3002 layers.  At init, the plain ResNet's first-conv gradient
    blows up with depth, while iResNet's stays orders of magnitude smaller (the paper's central claim; full
    widths in `tools/benchmark.py deep`)."""
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    improved = _first_conv_grad(family, depth, x, width_scale=width_scale)
    plain = _first_conv_grad(family.replace("iresnet", "resnet"), depth, x, width_scale=width_scale)
    assert 0 < improved < float("inf")
    assert plain > 20 * improved
