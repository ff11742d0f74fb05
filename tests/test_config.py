"""The config engine: Hydra's composition over the typed schema, from files, dicts and defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import initialize
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra

from iresvid.config import SCHEMA, Config, ConfigError, load_config, to_dict, to_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_composes_and_round_trips(path, tmp_path):
    cfg = load_config(path, ["data.root=/data/x"])
    assert cfg.name == path.stem and cfg.data.root == "/data/x"
    assert cfg.train.output_dir == ("demo_output/" if "demo" in path.stem else "runs/") + path.stem
    # what a run saves (config.yaml, the checkpoint's dict) gives back the very same config
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved) == cfg
    assert load_config(to_dict(cfg)) == cfg


def test_a_defaults_list_composes_the_base_first():
    base = load_config(REPO / "configs" / "iresnet3d50_kinetics.yaml", ["data.root=/d"])
    child = load_config(REPO / "configs" / "resnet3d50_kinetics.yaml", ["data.root=/d"])
    assert (child.model.name, child.name) == ("resnet3d50", "resnet3d50_kinetics")
    # everything else is the base's recipe, including what the base changed from the schema's defaults
    same = dataclasses.replace(
        child, name=base.name, model=dataclasses.replace(child.model, name="iresnet3d50")
    )
    same.train.output_dir = base.train.output_dir
    assert same == base and base.train.precise_bn_batches == 200 != Config().train.precise_bn_batches


def test_a_config_of_ones_own_may_start_from_a_shipped_one_by_name(tmp_path):
    mine = tmp_path / "elsewhere" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("defaults: [iresnet3d50_ucf101, _self_]\nname: mine\noptim:\n  lr: 0.02\n")
    cfg = load_config(mine, ["data.root=/d", "data.jitter_sizes=[240,300]"])
    shipped = load_config(REPO / "configs" / "iresnet3d50_ucf101.yaml", ["data.root=/d"])
    assert (cfg.name, cfg.optim.lr, cfg.data.jitter_sizes) == ("mine", 0.02, [240, 300])
    assert cfg.schedule == shipped.schedule and cfg.model == shipped.model


def test_a_mistake_in_a_base_file_names_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text("data:\n  root: /d\nschedule:\n  epoch: 3\n")
    (tmp_path / "child.yaml").write_text("defaults: [base, _self_]\nname: child\n")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "child.yaml")
    assert str(error.value).startswith(
        f"{tmp_path / 'base.yaml'}: unknown config key 'schedule.epoch'; did you mean 'schedule.epochs'?"
    )
    (tmp_path / "orphan.yaml").write_text("defaults: [nowhere, _self_]\n")
    with pytest.raises(ConfigError, match="orphan.yaml: 'defaults' names 'nowhere', which is not a config"):
        load_config(tmp_path / "orphan.yaml")


def test_hydra_grammar_in_overrides():
    lists = ["data.jitter_sizes=[230,240]", "model.temporal_strides=[1,2,2,2]"]
    cfg = load_config(None, ["data.root=/d", *lists])
    assert cfg.data.jitter_sizes == [230, 240] and cfg.model.temporal_strides == [1, 2, 2, 2]
    with pytest.raises(ConfigError, match="'model.depth' is a schema key and cannot be removed"):
        load_config(None, ["data.root=/d", "~model.depth"])  # a schema key is always there
    with pytest.raises(
        ConfigError, match="^command-line overrides: unknown config key 'train.sead'; did you "
    ):
        load_config(None, ["data.root=/d", "+train.sead=3"])
    with pytest.raises(ConfigError, match="^override 'train.seed' is not key=value"):
        load_config(None, ["data.root=/d", "train.seed"])


def test_a_dict_is_plain_data():
    cfg = load_config({"data": {"root": "/d", "batch_size": 4}}, ["optim.lr=0.5"])
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.model) == (4, 0.5, Config().model)
    with pytest.raises(ConfigError, match="^the given config: unknown config key 'data.batchsize'"):
        load_config({"data": {"root": "/d", "batchsize": 4}})
    with pytest.raises(ConfigError, match="'defaults' list"):
        load_config({"defaults": ["iresnet3d50_kinetics"], "data": {"root": "/d"}})


def test_composing_inside_a_hydra_job_leaves_its_hydra_alone():
    ConfigStore.instance().store(name="outer_job", node={"x": 1})
    with initialize(version_base="1.3", config_path=None):
        outer = GlobalHydra.instance().hydra
        assert load_config(None, ["data.root=/d"]).data.root == "/d"
        assert GlobalHydra.instance().hydra is outer
    assert not GlobalHydra.instance().is_initialized()


def test_the_schema_is_in_hydras_config_store():
    load_config(None, ["data.root=/d"])
    node = ConfigStore.instance().load(f"{SCHEMA}.yaml").node
    assert set(node) == {f.name for f in dataclasses.fields(Config)} and node.optim.lr == Config().optim.lr
