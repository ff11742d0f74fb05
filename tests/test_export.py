"""Exports are checked by value: reloaded TorchScript / ONNX files against the eager model."""

import json

import pytest
import torch
from cli_tools import tool_main
from torch import nn

from iresvid.config import load_config, to_dict
from iresvid.engine.build import build_model, load_trained
from iresvid.engine.export import ExportCheckError, example_input, export_model
from iresvid.models import create_model


def _tiny(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return create_model("iresnet3d18", width_scale=1 / 16, num_classes=num_classes).eval()


def test_export_both_formats_reload_and_match(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    model = _tiny()
    example = example_input(model, (4, 32, 32))
    assert example.shape == (1, 3, 4, 32, 32)
    report = export_model(model, example, tmp_path, metadata={"classes": list("abcde")})

    on_disk = json.loads((tmp_path / "export.json").read_text())
    assert on_disk == report
    assert report["input"]["layout"] == "(N, C, T, H, W)" and report["input"]["shape"] == [1, 3, 4, 32, 32]
    assert report["classes"] == list("abcde") and report["output"] == {"name": "logits", "shape": ["N", 5]}
    assert set(report["max_abs_diff"]) == {"torchscript", "onnx"}
    for diffs in report["max_abs_diff"].values():
        assert set(diffs) == {"batch_1", "batch_2"} and max(diffs.values()) <= report["tolerance"]

    # Independently of export_model's own check: a third batch size, through the files as a user loads them.
    x = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.load(str(tmp_path / "model.pt"))(x)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert expected.abs().max() > 0.01  # a non-trivial output, so the comparison means something
    torch.testing.assert_close(scripted, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(onnx_out, expected, rtol=0, atol=1e-4)


def test_export_from_training_checkpoint_via_tool(tmp_path):
    main = tool_main("export")
    cfg = load_config(
        None,
        [
            "data.root=/tmp",
            "model.name=iresnet3d18",
            "model.width_scale=0.0625",
            "data.num_frames=4",
            "data.test_size=32",
            "data.mean=[0.5,0.5,0.5]",
            "data.std=[0.25,0.25,0.25]",
        ],
    )
    classes = ["jump", "run", "swim"]
    torch.manual_seed(0)
    trained = build_model(cfg, len(classes))
    checkpoint = tmp_path / "best.pth"
    torch.save({"model": trained.state_dict(), "classes": classes, "config": to_dict(cfg)}, checkpoint)

    out = tmp_path / "export"
    assert main(["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["classes"] == classes and report["checkpoint"] == str(checkpoint)
    assert report["mean"] == [0.5] * 3 and report["std"] == [0.25] * 3
    assert report["input"]["shape"] == [1, 3, 4, 32, 32]  # the checkpoint's evaluation clip by default
    assert set(report["files"]) == {"torchscript"} and not (out / "model.onnx").exists()

    model, _, _ = load_trained(checkpoint)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out / "model.pt"))(x), model(x), rtol=0, atol=1e-5)


class _BatchDependent(nn.Module):
    """Python control flow on the batch size: a trace freezes the branch taken for the example."""

    def forward(self, x):
        return x.flatten(1).sum(1, keepdim=True) * (2.0 if x.shape[0] == 1 else 1.0)


def test_export_refuses_a_file_that_differs_from_the_model(tmp_path):
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(ExportCheckError, match="torchscript batch_2"):
        export_model(_BatchDependent(), torch.ones(1, 3, 2, 4, 4), tmp_path, ["torchscript"])
    assert not (tmp_path / "export.json").exists()


def test_example_input_checks_the_clip_shape():
    with pytest.raises(ValueError, match="needs a clip shape T,H,W"):
        example_input(_tiny(), (32, 32))
