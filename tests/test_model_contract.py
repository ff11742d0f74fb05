"""The timm model contract, kept over the whole registry: pretrained loading and its record, fine-tuning in
one call, `forward_intermediates` / `prune_intermediate_layers`, `feature_info` module names that a
forward hook can use, ``features_only``, and `register_model`."""

import logging
from pathlib import Path

import pytest
import torch
from test_weights import randomize_bn
from torch import nn

import iresvid
from iresvid.models import (
    CheckpointError,
    FeatureExtractor,
    FeatureInfo,
    get_model_entry,
    register_weights,
    unregister_weights,
)
from iresvid.models import registry as registry_module
from iresvid.models.weights import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, file_sha256

ALL = iresvid.list_models()
TINY = 1 / 16


def _shallow(name):
    """The entry at three blocks a stage (every role and shortcut is there by then), 1/16 wide."""
    layers = tuple(min(3, n) for n in get_model_entry(name).spec(None).layers)
    return dict(width_scale=TINY, layers=layers)


def _input(model, batch=1, size=32):
    if model.dims == 2:
        return torch.randn(batch, 3, size, size)
    return torch.randn(batch, 3, 2, size, size)


# ------------------------------------------------------------------------------ 1. pretrained=bool


def test_pretrained_false_or_none_is_random_init():
    for pretrained in (False, None):
        model = iresvid.create_model("resnet18", width_scale=TINY, pretrained=pretrained)
        assert model.pretrained_cfg["file"] is None and model.pretrained_cfg["source"] is None


def test_pretrained_true_without_local_weights_says_how_to_pass_a_file():
    with pytest.raises(CheckpointError) as err:
        iresvid.create_model("iresnet50", pretrained=True)
    message = str(err.value)
    assert "'iresnet50'" in message and "no weights are registered locally" in message
    assert 'pretrained="path/to/file.pth"' in message


def test_pretrained_true_loads_the_registered_file_and_records_its_facts(tmp_path):
    source = randomize_bn(iresvid.create_model("iresnet18", width_scale=TINY, num_classes=5))
    path = tmp_path / "ires18_tiny.pth"
    torch.save(source.state_dict(), path)
    entry = register_weights(
        path,
        architecture="iresnet18",
        source="iresvid",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        num_classes=5,
        input_size=(3, 160, 160),
    )
    try:
        assert entry.sha256 == file_sha256(path)
        model = iresvid.create_model("iresnet18", width_scale=TINY, pretrained=True).eval()
        cfg = model.pretrained_cfg
        assert cfg["file"] == str(path) and cfg["sha256"] == entry.sha256 and cfg["source"] == "iresvid"
        assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.25, 0.25, 0.25)
        assert cfg["num_classes"] == 5 and cfg["input_size"] == (3, 160, 160) and model.num_classes == 5
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model(x), source.eval()(x))
        # A registered entry without a reachable file is named in the error.
        path.unlink()
        with pytest.raises(CheckpointError, match=rf"{entry.sha256[:12]}.*is missing.*path/to/file.pth"):
            iresvid.create_model("iresnet18", width_scale=TINY, pretrained=True)
    finally:
        unregister_weights(entry.sha256)


# ------------------------------------------------------------------------------ 2. fine-tuning


def test_fine_tuning_in_one_call_equals_load_then_reset_classifier(tmp_path, caplog):
    path = tmp_path / "src1000.pth"
    torch.save(randomize_bn(iresvid.create_model("resnet3d50", width_scale=TINY)).state_dict(), path)
    torch.manual_seed(3)
    with caplog.at_level(logging.INFO, logger="iresvid.models.weights"):
        one = iresvid.create_model("resnet3d50", width_scale=TINY, pretrained=str(path), num_classes=7)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "src1000.pth" in lines[0] and "400" in lines[0] and "7" in lines[0]
    torch.manual_seed(3)
    two = iresvid.create_model("resnet3d50", width_scale=TINY, pretrained=str(path))
    two.reset_classifier(7)
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys() and a["fc.weight"].shape == (7, 128)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert one.pretrained_cfg["num_classes"] == 400 and not one.pretrained_cfg["classifier_loaded"]


def test_another_architecture_is_still_refused_with_the_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(iresvid.create_model("resnet18", width_scale=TINY).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"r18\.pth.*iresnet18(.|\n)*layer2\.0\.downsample"):
        iresvid.create_model("iresnet18", width_scale=TINY, pretrained=str(path), num_classes=3)


# ------------------------------------------------------------------------------ 3. pretrained_cfg


def test_pretrained_cfg_records_an_inflated_imagenet_source(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "tv_r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    default = iresvid.create_model("resnet3d18", width_scale=TINY).pretrained_cfg
    assert default["mean"] == KINETICS_MEAN and default["first_conv"] == "conv1"
    model = iresvid.create_model("resnet3d18", pretrained=str(path), inflate_init="average")
    cfg = model.pretrained_cfg
    assert cfg["source"] == "torchvision" and cfg["sha256"] == file_sha256(path)
    assert cfg["inflated_from"] == "resnet18" and cfg["inflate_init"] == "average"
    assert cfg["mean"] == IMAGENET_MEAN and cfg["std"] == IMAGENET_STD  # the weights', not Kinetics'
    assert cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc" and cfg["num_classes"] == 1000
    assert model.get_submodule(cfg["first_conv"]) is model.conv1
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


def test_pretrained_cfg_names_official_and_pytorchvideo_sources(tmp_path):
    path = tmp_path / "official.pth"
    torch.save(iresvid.create_model("iresgroup50", width_scale=TINY).state_dict(), path)
    cfg = iresvid.create_model("iresgroup50", width_scale=TINY, pretrained=str(path)).pretrained_cfg
    assert cfg["source"] == "official_iresnet" and cfg["inflated_from"] is None
    assert cfg["mean"] == IMAGENET_MEAN

    from pytorchvideo.models.resnet import create_resnet

    reference = create_resnet(
        stem_conv_kernel_size=(1, 7, 7), stem_dim_out=4, head_pool_kernel_size=(2, 1, 1)
    )
    path = tmp_path / "slow.pyth"
    torch.save({"model_state": reference.state_dict()}, path)
    cfg = iresvid.create_model("resnet3d50", width_scale=TINY, pretrained=str(path)).pretrained_cfg
    assert cfg["source"] == "pytorchvideo" and cfg["mean"] == KINETICS_MEAN and cfg["classifier_loaded"]


# ------------------------------------------------------------------------------ 4. forward_intermediates


def test_forward_intermediates_follows_timms_signature():
    model = iresvid.create_model("preact_resnet50", **_shallow("preact_resnet50")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [m.shape[1] for m in maps] == model.feature_info.channels()
        assert [64 // m.shape[-1] for m in maps] == model.feature_info.reduction()
        last_two = model.forward_intermediates(x, 2, intermediates_only=True)
        assert isinstance(last_two, list) and len(last_two) == 2
        torch.testing.assert_close(last_two[1], maps[4])
        picked = model.forward_intermediates(x, [-1, 1], intermediates_only=True)
        assert [p.shape for p in picked] == [maps[1].shape, maps[4].shape]  # network order, as timm
        early, (stage2,) = model.forward_intermediates(x, [2], stop_early=True)
        torch.testing.assert_close(early, stage2)
        normed = model.forward_intermediates(x, [4], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed, final)
        assert model.forward_intermediates(x, output_fmt="NCHW")[1][0].shape == maps[0].shape
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NCTHW")
    with pytest.raises(ValueError, match="5 feature levels"):
        model.forward_intermediates(x, [5])
    video = iresvid.create_model("iresnet3d18", width_scale=TINY)
    maps = video.forward_intermediates(
        torch.randn(1, 3, 2, 32, 32), output_fmt="NCTHW", intermediates_only=True
    )
    assert all(m.ndim == 5 for m in maps)


@pytest.mark.parametrize("name", ["resnet50", "resnet18", "resnext50_32x4d"])
def test_forward_intermediates_match_timm_loaded_with_our_weights(name):
    timm = pytest.importorskip("timm")
    ours = randomize_bn(iresvid.create_model(name)).eval()
    reference = timm.create_model(name, pretrained=False)
    reference.load_state_dict(ours.state_dict())  # the same key names: loads exactly
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    assert [dict(f) for f in ours.feature_info] == [dict(f) for f in reference.feature_info]
    with torch.no_grad():
        for kwargs in ({}, {"indices": 2}, {"indices": [0, 3], "stop_early": True}):
            final, maps = ours.forward_intermediates(x, **kwargs)
            ref_final, ref_maps = reference.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(final, ref_final)
            assert len(maps) == len(ref_maps)
            for a, b in zip(maps, ref_maps, strict=True):
                torch.testing.assert_close(a, b)
        torch.testing.assert_close(ours(x), reference(x))
    assert ours.prune_intermediate_layers([1, 2]) == reference.prune_intermediate_layers([1, 2])


def test_prune_intermediate_layers():
    model = iresvid.create_model("iresnet50", **_shallow("iresnet50")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, [1, 2], intermediates_only=True)
    assert model.prune_intermediate_layers((1, 2)) == [1, 2]
    assert not hasattr(model, "layer3") and not any(
        k.startswith(("layer3", "layer4", "fc")) for k in model.state_dict()
    )
    assert len(model.feature_info) == 3 and model.num_classes == 0
    with torch.no_grad():
        for a, b in zip(
            model.forward_intermediates(x, [1, 2], intermediates_only=True), expected, strict=True
        ):
            torch.testing.assert_close(a, b)
        assert model(x).shape == (1, model.feature_info[-1]["num_chs"])


# ------------------------------------------------------------------------------ 5. feature_info


def test_feature_info_accessors():
    info = iresvid.create_model("resnet50", width_scale=TINY).feature_info
    assert isinstance(info, FeatureInfo) and len(info) == 5
    assert info.channels() == [4, 16, 32, 64, 128] and info.channels(-1) == 128
    assert info.reduction([0, 2]) == [2, 8]
    assert info.module_name() == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert info[1]["num_chs"] == 16 and info.get_dicts(keys=["reduction"], idx=4) == {"reduction": 32}


@pytest.mark.parametrize("name", ALL)
def test_feature_info_module_names_give_the_features_to_a_hook(name):
    """For every entry: a forward hook on ``get_submodule(module_name)`` sees each documented feature."""
    torch.manual_seed(0)
    model = iresvid.create_model(name, num_classes=3, **_shallow(name)).eval()
    x = _input(model)
    seen = {}
    handles = [
        model.get_submodule(info["module"]).register_forward_hook(
            lambda _m, _i, out, level=level: seen.setdefault(level, out)
        )
        for level, info in enumerate(model.feature_info)
    ]
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    for h in handles:
        h.remove()
    assert len(maps) == len(model.feature_info) == len(model.spec.layers) + 1
    for level, (fmap, info) in enumerate(zip(maps, model.feature_info, strict=True)):
        assert fmap.shape[1] == info["num_chs"] and fmap.shape[-1] == 32 // info["reduction"]
        torch.testing.assert_close(seen[level], fmap, rtol=0, atol=0, msg=f"level {level} ({info['module']})")


def test_checkpoint_keys_are_unchanged_by_the_named_stem():
    keys = iresvid.create_model("iresnet18").state_dict().keys()
    assert not any(k.startswith(("act1", "maxpool")) for k in keys)


# ------------------------------------------------------------------------------ 6. features_only


def test_features_only_stops_after_the_last_level_asked_for():
    extractor = iresvid.create_model("resnet50", width_scale=TINY, features_only=True, out_indices=(-3, 1))
    assert extractor.out_indices == [2, 1] and extractor.feature_info.reduction() == [8, 4]
    assert not any(k.startswith(("model.layer3", "model.layer4", "model.fc")) for k in extractor.state_dict())
    maps = extractor(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [32, 16]
    last = iresvid.create_model("preact_resnet18", width_scale=TINY, features_only=True, out_indices=1).eval()
    assert last.out_indices == [4] and last(torch.randn(1, 3, 32, 32))[0].shape == (1, 32, 1, 1)


def test_feature_extractor_never_changes_the_model_it_wraps():
    model = iresvid.create_model("preact_resnet50", width_scale=TINY, num_classes=5).eval()
    keys, final_norm, fc = list(model.state_dict()), model.final_norm, model.fc
    ran = []
    model.layer4.register_forward_hook(lambda *_: ran.append("layer4"))
    extractor = FeatureExtractor(model, out_indices=(1, 2))
    maps = extractor(torch.randn(1, 3, 64, 64))
    assert len(maps) == 2 and ran == []  # layer3 and layer4 did not run
    assert list(model.state_dict()) == keys and model.final_norm is final_norm and model.fc is fc
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5) and ran == ["layer4"]


# ------------------------------------------------------------------------------ 7. register_model


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it (other tests sweep the registry)."""
    monkeypatch.setattr(registry_module, "_MODELS", dict(registry_module._MODELS))


def _tiny_net(num_classes=10, **kwargs):
    return iresvid.create_model("resnet18", width_scale=TINY, num_classes=num_classes, **kwargs)


def test_register_model_in_every_form(scratch_registry, tmp_path):
    iresvid.register_model("my_tiny_net", _tiny_net)

    @iresvid.register_model
    def my_decorated_net(num_classes=10, **kwargs):
        return _tiny_net(num_classes, **kwargs)

    @iresvid.register_model("my_named_net")
    def _whatever(num_classes=10, **kwargs):
        return _tiny_net(num_classes, **kwargs)

    assert {"my_tiny_net", "my_decorated_net", "my_named_net"} <= set(iresvid.list_models("my_*"))
    model = iresvid.create_model("my_named_net", num_classes=4).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert model.pretrained_cfg["architecture"] == "my_named_net"
    path = tmp_path / "mine.pth"
    torch.save(model.state_dict(), path)
    loaded = iresvid.create_model("my_tiny_net", pretrained=str(path), num_classes=6)
    assert loaded.num_classes == 6
    extractor = iresvid.create_model("my_decorated_net", features_only=True, out_indices=(1,)).eval()
    assert extractor(torch.randn(1, 3, 32, 32))[0].shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="'my_tiny_net' is already registered"):
        iresvid.register_model("my_tiny_net", _tiny_net)
    with pytest.raises(ValueError, match="'resnet50' is already registered"):
        iresvid.register_model("resnet50", _tiny_net)


# ------------------------------------------------------------------------------ 8. norm / act injection


def test_frozen_batchnorm_loads_torchvision_exactly_and_gives_batchnorms_eval_logits(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = randomize_bn(torchvision.models.resnet50(weights=None)).eval()
    path = tmp_path / "tv_r50.pth"
    torch.save(reference.state_dict(), path)
    frozen = iresvid.create_model("resnet50", pretrained=str(path), norm_layer="frozen_batchnorm").train()
    assert frozen.state_dict().keys() == reference.state_dict().keys()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in frozen.modules())
    assert sum(p.numel() for p in frozen.parameters()) == sum(
        p.numel() for n, p in reference.named_parameters() if "bn" not in n and "downsample.1" not in n
    )
    plain = iresvid.create_model("resnet50", pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), plain(x), rtol=0, atol=0)  # train mode changes nothing
        torch.testing.assert_close(frozen(x), reference(x), rtol=1e-5, atol=1e-5)


def test_groupnorm_and_act_layer_keep_module_names():
    bn = iresvid.create_model("iresnet3d50", **_shallow("iresnet3d50"))
    gn = iresvid.create_model(
        "iresnet3d50", norm_layer="groupnorm", act_layer="silu", **_shallow("iresnet3d50")
    )
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert list(gn.state_dict()) == [k for k in bn.state_dict() if not k.endswith(stats)]
    assert isinstance(gn.layer1[0].bn1, nn.GroupNorm) and isinstance(gn.act1, nn.SiLU)
    gn.train()(torch.randn(1, 3, 2, 32, 32)).sum().backward()  # a batch of one trains with GroupNorm
    silu = iresvid.create_model("resnet18", width_scale=TINY, act_layer=nn.SiLU).eval()
    relu = iresvid.create_model("resnet18", width_scale=TINY).eval()
    assert silu.state_dict().keys() == relu.state_dict().keys()
    with pytest.raises(ValueError, match="unknown norm_layer 'layernorm'"):
        iresvid.create_model("resnet18", norm_layer="layernorm")


def test_the_readme_backbone_snippet_runs_as_written(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    [snippet] = [b for b in blocks if "create_res_basic_head" in b]
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "[512, 1024, 2048] [(1, 512, 8, 28, 28), (1, 1024, 8, 14, 14), (1, 2048, 8, 7, 7)]",
        "torch.Size([1, 400])",
    ]


def test_init_weights_reinitialises_or_loads_a_checkpoint(tmp_path):
    model = iresvid.create_model("iresnet3d18", num_classes=5, width_scale=0.125)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(trained, tmp_path / "w.pth")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.bn1.running_mean.add_(3.0)
    model.init_weights()
    state = model.state_dict()
    assert torch.all(state["bn1.weight"] == 1) and torch.all(state["bn1.running_mean"] == 0)
    assert not torch.equal(state["conv1.weight"], trained["conv1.weight"] + 1)  # re-drawn, not kept
    model.init_weights(tmp_path / "w.pth")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.items())
