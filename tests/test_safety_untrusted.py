"""Untrusted files are bounded: checkpoints before torch.load, configs before expansion, a checkpoint's config
taken as plain data, loaded weights checked."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from test_engine import DEMO_CONFIG, tiny

from iresvid.checkpoint_io import CheckpointError, read_checkpoint
from iresvid.config import ConfigError, load_config, to_dict
from iresvid.engine.build import build_model, load_trained
from iresvid.engine.trainer import Trainer

TINY = ["data.root=.", "model.name=iresnet3d18", "model.width_scale=0.0625", "data.num_frames=4"]


def _rewrite(source: Path, target: Path, replace: dict[str, tuple[int, int]]) -> None:
    """Copy a torch zip, giving the named records (record suffix → (bytes, compression)) zero bytes."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            found = next((v for k, v in replace.items() if info.filename.endswith(k)), None)
            if found is None:
                new.writestr(info, old.read(info), compress_type=zipfile.ZIP_STORED)
                continue
            size, compression = found
            with new.open(zipfile.ZipInfo(info.filename), "w", force_zip64=True) as out:
                out._compress_type = compression  # noqa: SLF001 — set before the first write
                for _ in range(size >> 20):
                    out.write(bytes(1 << 20))


def _no_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was reached")

    monkeypatch.setattr(torch, "load", refuse)


def test_a_compressed_record_is_refused_without_inflating(tmp_path, monkeypatch):
    torch.save({"w": torch.ones(4)}, tmp_path / "ok.pth")
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(tmp_path / "ok.pth") as old, zipfile.ZipFile(bomb, "w") as new:
        for info in old.infolist():
            compress = zipfile.ZIP_DEFLATED if info.filename.endswith("data/0") else zipfile.ZIP_STORED
            data = bytes(64 << 20) if compress == zipfile.ZIP_DEFLATED else old.read(info)
            new.writestr(info.filename, data, compress_type=compress)
    assert bomb.stat().st_size < 1 << 20  # 64 MiB of zeros in well under 1 MiB
    _no_torch_load(monkeypatch)
    with pytest.raises(CheckpointError, match=r"^refusing to load \S+: record '.*data/0' is compressed"):
        read_checkpoint(bomb)


def test_a_storage_record_larger_than_declared_is_refused(tmp_path, monkeypatch):
    torch.save({"w": torch.ones(4)}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as old, zipfile.ZipFile(tmp_path / "big.pth", "w") as new:
        for info in old.infolist():
            data = bytes(1 << 16) if info.filename.endswith("data/0") else old.read(info)
            new.writestr(info.filename, data)
    _no_torch_load(monkeypatch)
    with pytest.raises(
        CheckpointError,
        match=r"^refusing to load \S+: storage record data/0 holds 65536 bytes but the file declares 16",
    ):
        read_checkpoint(tmp_path / "big.pth")


def test_a_legacy_file_loads_and_one_declaring_more_than_it_holds_is_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    assert read_checkpoint(path)["w"].tolist() == [0.0, 1.0, 2.0]
    torch.save({"w": torch.ones(10_000)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:2000])  # the pickles, not the 40 kB of storage
    with pytest.raises(
        CheckpointError, match=r"^refusing to load \S+: it declares 40000 bytes of tensors but holds 2000"
    ):
        read_checkpoint(path)


BOMB = "\n".join(
    ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdef", "bcdefg", strict=True)]
)


def test_a_yaml_alias_bomb_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(ConfigError, match=rf"^{path}: the config expands to more than 100000 values"):
        load_config(path)


def test_a_self_referencing_yaml_list_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("model: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: a config value contains itself"):
        load_config(path)


def test_a_deep_or_large_config_file_is_refused(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 40 + "]" * 40 + "\n")
    with pytest.raises(ConfigError, match="nests deeper than 32 levels"):
        load_config(deep)
    large = tmp_path / "large.yaml"
    large.write_text("name: x\n" + "#" * (1 << 20))
    with pytest.raises(ConfigError, match="over the 1048576 a config file may have"):
        load_config(large)


def _checkpoint(tmp_path: Path, config: dict | None = None, **weights) -> Path:
    cfg = load_config(None, TINY)
    model = build_model(cfg, 2)
    state = model.state_dict() | weights
    path = tmp_path / "best.pth"
    torch.save({"model": state, "classes": ["a", "b"], "config": config or to_dict(cfg)}, path)
    return path


def test_a_checkpoint_config_sharing_one_list_is_refused(tmp_path):
    cfg = to_dict(load_config(None, TINY))
    shared = [1] * 9
    for _ in range(6):
        shared = [shared] * 9
    cfg["model"]["layers"] = shared  # 9**7 values once expanded, a few hundred bytes pickled
    path = _checkpoint(tmp_path, cfg)
    with pytest.raises(ConfigError, match=rf"^{path} \(its saved config\): the config expands"):
        load_trained(path)


def test_a_checkpoint_config_is_plain_data_and_only_its_model_is_taken(tmp_path, monkeypatch):
    cfg = to_dict(load_config(None, TINY))
    cfg["data"] |= {"val_dir": "/etc", "num_workers": 64, "root": "/elsewhere"}
    cfg["train"]["output_dir"] = "/tmp/theirs"
    path = _checkpoint(tmp_path, cfg)
    _, loaded, classes = load_trained(path, overrides=["data.root=/mine"])
    assert classes == ["a", "b"] and loaded.model.name == "iresnet3d18" and loaded.data.num_frames == 4
    assert loaded.data.root == "/mine" and loaded.data.val_dir == "val" and loaded.data.num_workers != 64
    assert loaded.train.output_dir != "/tmp/theirs"
    with pytest.raises(ConfigError, match=r"give the dataset folder as data.root="):
        load_trained(path, needs_data=True)

    monkeypatch.setenv("IRESVID_SECRET", "s3cret")
    cfg["model"]["name"] = "${oc.env:IRESVID_SECRET}"
    path = _checkpoint(tmp_path, cfg)
    with pytest.raises(CheckpointError, match=r"'model.name' holds an interpolation"):
        load_trained(path)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(8, dtype=torch.int8), "torch.int8, the model expects floating point"),
        (torch.zeros(8, dtype=torch.bool), "torch.bool"),
        (torch.zeros(8, dtype=torch.complex64), "torch.complex64"),
        (torch.full((8,), float("nan")), "NaN or infinite"),
    ],
)
def test_weights_that_are_not_finite_floating_point_are_refused(tmp_path, bad, match):
    width = build_model(load_config(None, TINY), 2).state_dict()["bn1.weight"].shape[0]
    path = _checkpoint(tmp_path, **{"bn1.weight": bad[:1].expand(width).clone()})
    with pytest.raises(CheckpointError, match=rf"{path}: 'bn1.weight' .*{match}"):
        load_trained(path)


def test_weights_that_do_not_fit_are_a_named_refusal(tmp_path):
    path = _checkpoint(tmp_path, **{"extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=rf"(?s){path} does not fit .*unexpected keys: extra"):
        load_trained(path)


def test_a_value_read_from_the_environment_is_never_saved(demo_root, tmp_path, monkeypatch):
    """``${oc.env:TOKEN}`` in a config is resolved for the run, but what the run saves (``config.yaml`` and
    every checkpoint) keeps the interpolation: a secret is not copied into files that get shared."""
    monkeypatch.setenv("IRESVID_TEST_SECRET", "hunter2")
    out = tmp_path / "run"
    settings = tiny(
        demo_root, out, "schedule.epochs=1", "train.eval_every=0", "name=${oc.env:IRESVID_TEST_SECRET}"
    )
    cfg = load_config(DEMO_CONFIG, settings)
    assert cfg.name == "hunter2"
    assert to_dict(cfg)["name"] == "${oc.env:IRESVID_TEST_SECRET}"
    Trainer(cfg).fit()
    saved = [out / "config.yaml", *sorted(out.glob("*.pth"))]
    assert len(saved) >= 3
    for path in saved:
        assert b"hunter2" not in path.read_bytes(), path
    assert read_checkpoint(out / "last.pth")["config"]["name"] == "${oc.env:IRESVID_TEST_SECRET}"
