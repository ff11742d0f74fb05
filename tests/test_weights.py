"""Checkpoint conversion: official iResNet, torchvision and pytorchvideo weights give their own logits."""

import json
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from official_reference import official_forward

import iresvid
from iresvid.models import CheckpointError

# Key names and shapes of the official iduta/iresnet checkpoints (a copy of shared/reference/).
REFERENCE = Path(__file__).resolve().parent / "reference" / "official_iresnet_state_dicts.json"
# The official families: (name, ResStage roles, iResNet stem + shortcut)
OFFICIAL = [
    ("iresnet18", True, True),
    ("iresnet50", True, True),
    ("iresnet101", True, True),
    ("resstage50", True, False),
    ("resnet50", False, False),
    ("resgroup50", False, False),
    ("resgroupfix50", False, False),
    ("iresgroup50", True, True),
    ("iresgroupfix50", True, True),
]


def _official_keys() -> dict:
    if REFERENCE.is_file():
        return json.loads(REFERENCE.read_text())
    pytest.fail(f"reference data missing: {REFERENCE}")


def _random_state(keys_and_shapes, seed=0):
    """Random tensors for every key, BN statistics included, so equal logits mean every tensor was used."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys_and_shapes:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif (
            key.endswith("running_var")
            or key.endswith(
                (
                    "bn0.weight",
                    "bn1.weight",
                    "bn2.weight",
                    "bn3.weight",
                    "downsample.1.weight",
                    "downsample.2.weight",
                )
            )
            and len(shape) == 1
        ):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 4:  # conv: fan-in scaled so deep nets stay finite
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def randomize_bn(model, seed: int = 1):
    """Random BN statistics and affine parameters, so equal logits mean every BN tensor was used."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


@pytest.mark.parametrize("name,roles,improved", OFFICIAL)
def test_official_state_dict_layout_is_ours(name, roles, improved):
    """Our module names, order and shapes are the official checkpoint's, key for key."""
    reference = _official_keys()[name]
    model = iresvid.create_model(name)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == reference["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == reference["params"]


@pytest.mark.parametrize("wrapper", ["bare", "state_dict", "dataparallel"])
@pytest.mark.parametrize("name,roles,improved", OFFICIAL)
def test_official_checkpoint_gives_official_logits(tmp_path, name, roles, improved, wrapper):
    state = _random_state(_official_keys()[name]["state_dict"], seed=hash(name) % 1000)
    if wrapper == "dataparallel":
        saved = {f"module.{k}": v for k, v in state.items()}
    elif wrapper == "state_dict":
        saved = {"state_dict": state, "epoch": 90, "best_acc1": torch.tensor(77.0)}
    else:
        saved = state
    path = tmp_path / f"{name}.pth"
    torch.save(saved, path)

    model = iresvid.create_model(name, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x)
    expected = official_forward({k: v.clone() for k, v in state.items()}, x, roles=roles, improved=improved)
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_the_in_place_relu_matters():
    """Without the ReLU on the identity of first-Middle blocks, the official logits are not reproduced."""
    name = "iresnet50"
    state = _random_state(_official_keys()[name]["state_dict"])
    x = torch.randn(1, 3, 64, 64)
    model = iresvid.create_model(name).eval()
    model.load_state_dict(state)
    for block in model.modules():
        if getattr(block, "role", None) == "first_middle":
            block.pre_relu = False
            block.bn0 = None
    with torch.no_grad():
        broken = model(x)
    expected = official_forward(state, x, roles=True, improved=True)
    assert (broken - expected).abs().max() > 1e-2 * expected.abs().max()


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "resnext101_32x8d"])
def test_torchvision_state_dict_gives_torchvision_logits(tmp_path, name):
    torch.manual_seed(0)
    reference = randomize_bn(getattr(torchvision.models, name)(weights=None)).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = iresvid.create_model(name, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_pytorchvideo_slow_r50_gives_pytorchvideo_logits(tmp_path):
    from pytorchvideo.models.resnet import create_resnet

    # The hub's slow_r50(pretrained=False) is exactly this call.
    torch.manual_seed(0)
    reference = create_resnet(
        stem_conv_kernel_size=(1, 7, 7), head_pool_kernel_size=(8, 7, 7), model_depth=50
    )
    reference = randomize_bn(reference).eval()
    path = tmp_path / "slow_r50.pyth"
    torch.save({"model_state": reference.state_dict()}, path)
    model = iresvid.create_model("resnet3d50", pretrained=str(path), inflate="slow").eval()
    x = torch.randn(1, 3, 8, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("inflate", ["slow", "i3d", "full"])
@pytest.mark.parametrize(
    "name", ["iresnet50", "resnet18", "iresgroupfix50", "preact_resnet50", "se_iresnet50"]
)
def test_center_inflation_of_a_static_clip_gives_the_2d_logits(tmp_path, name, inflate):
    parent = randomize_bn(iresvid.create_model(name, width_scale=0.25)).eval()
    path = tmp_path / "2d.pth"
    torch.save(parent.state_dict(), path)
    name3d = name.replace("resnet", "resnet3d").replace("resgroupfix", "resgroupfix3d")
    child = iresvid.create_model(
        name3d, width_scale=0.25, num_classes=1000, pretrained=str(path), inflate=inflate
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    clip = x[:, :, None].expand(-1, -1, 4, -1, -1)  # one frame repeated
    with torch.no_grad():
        expected = parent(x)
        torch.testing.assert_close(child(clip), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_average_inflation_divides_the_kernel_over_time(tmp_path):
    parent = iresvid.create_model("resnet18", width_scale=0.25)
    path = tmp_path / "2d.pth"
    torch.save(parent.state_dict(), path)
    child = iresvid.create_model(
        "resnet3d18",
        width_scale=0.25,
        num_classes=1000,
        pretrained=str(path),
        inflate="full",
        inflate_init="average",
    )
    w2, w3 = parent.layer1[0].conv1.weight, child.layer1[0].conv1.weight
    assert w3.shape[2] == 3
    for t in range(3):
        torch.testing.assert_close(w3[:, :, t], w2 / 3)
    # the static clip also gives the 2D logits with "average" (the slices sum to the 2D kernel) away from
    # temporal borders; the stem here is 3×7×7, so only the shapes are compared for the whole net
    assert child.conv1.weight.shape[2] == 3


def test_wrong_architecture_names_the_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(iresvid.create_model("resnet18").state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        iresvid.create_model("iresnet18", pretrained=str(path))
    message = str(err.value)
    assert "r18.pth" in message and "iresnet18" in message
    assert "layer2.0.downsample" in message  # resnet18's strided-conv shortcut vs iresnet18's max-pool + conv


def test_another_number_of_classes_drops_the_classifier_in_one_call(tmp_path, caplog):
    path = tmp_path / "k400.pth"
    source = iresvid.create_model("iresnet3d18", width_scale=0.125)
    torch.save(source.state_dict(), path)
    with caplog.at_level("INFO", logger="iresvid.models.weights"):
        model = iresvid.create_model("iresnet3d18", width_scale=0.125, num_classes=101, pretrained=str(path))
    dropped = [r.getMessage() for r in caplog.records if "classifier" in r.getMessage()]
    assert len(dropped) == 1 and "k400.pth" in dropped[0] and "400" in dropped[0] and "101" in dropped[0]
    assert model(torch.randn(1, 3, 2, 32, 32)).shape == (1, 101)
    torch.testing.assert_close(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    # num_classes=0 (a backbone) ignores the classifier
    backbone = iresvid.create_model("iresnet3d18", width_scale=0.125, num_classes=0, pretrained=str(path))
    assert backbone(torch.randn(1, 3, 2, 32, 32)).shape == (1, 64)


class _Exploit:
    def __reduce__(self):
        return (print, ("this would have run code",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # the file is not torch's
def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth"):
        iresvid.create_model("resnet18", pretrained=str(path))


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        iresvid.create_model("resnet18", pretrained=str(tmp_path / "nope.pth"))
    path = tmp_path / "half.pth"
    torch.save(iresvid.create_model("resnet18").state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="half.pth"):
        iresvid.create_model("resnet18", pretrained=str(path))
