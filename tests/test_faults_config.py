"""Config and command-line mistakes: each is one clear line naming the key, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed
from test_engine import DEMO_CONFIG, REPO, tiny
from torch.utils.data import dataloader

from iresvid import cli
from iresvid.config import ConfigError, load_config
from iresvid.data.synthetic import make_demo_data
from iresvid.engine import parts
from iresvid.engine import trainer as trainer_module
from iresvid.engine.dist import DistInfo
from iresvid.engine.trainer import Trainer

DEMO_FRAMES = 16  # every video of the demo set below


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "ucf101"
    make_demo_data(root, layout="ucf101", videos_per_class=4, num_frames=DEMO_FRAMES, size=(32, 32))
    return root


@pytest.fixture
def train_cli(monkeypatch, capsys):
    """``iresvid train`` in this process → (exit code, stdout, stderr lines).

    The CLI's logging setup is skipped: it reconfigures the root logger for good, which would leak into
    the other tests of this process.  So stderr holds exactly what the CLI itself prints.
    """
    monkeypatch.setattr(cli, "setup_logging", lambda output_dir: None)

    def run(*args: str) -> tuple[int, str, list[str]]:
        code = cli.main(["train", "--config", str(DEMO_CONFIG), *args])
        out, err = capsys.readouterr()
        return code, out, err.splitlines()

    return run


# (override, what the message must say); data.root and the output folder are added by the test.
MISTAKES = {
    "unknown key": ("train.save_evry_steps=1", "unknown config key 'train.save_evry_steps'; did you mean "
                    "'train.save_every_steps'?"),
    "unknown key, no near spelling": ("optim.learning_rate=0.1", "unknown config key 'optim.learning_rate'"),
    "key given a value for a section": ("model=3", "'model' is a section"),
    "not an integer": ("data.batch_size=eight", "bad value for 'data.batch_size'"),
    "fractional integer": ("data.num_frames=2.5", "bad value for 'data.num_frames'"),
    "not a boolean": ("model.norm_eval=maybe", "bad value for 'model.norm_eval'"),
    "scalar for a list": ("data.jitter_sizes=28", "bad value for 'data.jitter_sizes'"),
    "negative size": ("data.crop_size=-28", "'data.crop_size' must be >= 1, got -28"),
    "zero batch": ("data.batch_size=0", "'data.batch_size' must be >= 1, got 0"),
    "negative size in a list": ("data.jitter_sizes=[-28,32]", "'data.jitter_sizes' must not contain"),
    "negative workers": ("data.num_workers=-2", "'data.num_workers' must be >= -1, got -2"),
    "no key=value": ("data.num_frames", "override 'data.num_frames' is not key=value"),
    # Found by the Trainer (it needs the videos): 17 frames at stride 1 outspan the 16-frame videos.
    "clip longer than every video": (
        "data.num_frames=17",
        f"'data.num_frames' × 'data.frame_stride' (17 × 1) spans 17 frames, more than any of the 8 training "
        f"videos probed has (the longest: {DEMO_FRAMES} frames)",
    ),
    "batch larger than the training set": ("data.batch_size=64", "'data.batch_size' (64) is larger than"),
}  # fmt: skip


@pytest.mark.parametrize("override, message", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_config_mistake_is_one_line_naming_the_key(demo_root, tmp_path, train_cli, override, message):
    code, out, err = train_cli(*tiny(demo_root, tmp_path), "data.frame_stride=1", override)
    assert (code, out) == (2, "")
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0]
    assert not (tmp_path / "last.pth").exists()


def test_a_clip_as_long_as_the_longest_video_is_accepted(demo_root, tmp_path):
    cfg = load_config(
        DEMO_CONFIG, tiny(demo_root, tmp_path, f"data.num_frames={DEMO_FRAMES}", "data.frame_stride=1")
    )
    assert Trainer(cfg).steps_per_epoch == 3


def test_a_typo_in_a_yaml_file_names_the_file_and_the_key(demo_root, tmp_path, train_cli):
    config = tmp_path / "mine.yaml"
    config.write_text("defaults: [demo_synthetic, _self_]\ndata:\n  batchsize: 8\n")  # a shipped config
    code, _, err = train_cli("--config", str(config), *tiny(demo_root, tmp_path))
    assert code == 2 and len(err) == 1
    assert f"{config}: unknown config key 'data.batchsize'; did you mean 'data.batch_size'?" in err[0]


def _no_collective(*args, **kwargs):
    raise AssertionError("the process group or a collective was used before the batch size was checked")


def test_a_batch_that_does_not_split_over_processes_fails_before_any_collective(
    demo_root, tmp_path, monkeypatch, train_cli
):
    for name in ("init_distributed", "gather_objects", "all_reduce_sum"):
        monkeypatch.setattr(trainer_module, name, _no_collective)
    monkeypatch.setattr(parts, "DistributedDataParallel", _no_collective)
    monkeypatch.setattr(torch.distributed, "init_process_group", _no_collective)
    cfg = load_config(DEMO_CONFIG, tiny(demo_root, tmp_path))  # batch 8
    three = DistInfo(world_size=3, rank=0, local_rank=0, device=torch.device("cpu"))
    expected = r"'data.batch_size' \(8\) must split evenly over 3 processes × train.accum_steps \(1\)"
    with pytest.raises(ConfigError, match=expected):
        Trainer(cfg, dist_info=three)

    # What one of `torchrun --nproc-per-node 3` would see: the error before joining the process group.
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    code, _, err = train_cli(*tiny(demo_root, tmp_path))
    assert code == 2 and len(err) == 1
    assert "'data.batch_size' (8) must split evenly over 3 processes" in err[0]


def _no_workers(*args, **kwargs):
    raise AssertionError("a data-loader worker process was started")


def test_zero_workers_load_in_the_main_process_and_train(demo_root, tmp_path, monkeypatch, train_cli):
    """``data.num_workers=0`` is valid (debugging, tiny sets): batches come from the main process."""
    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", _no_workers)
    code, out, err = train_cli(
        *tiny(demo_root, tmp_path, "schedule.epochs=1", "train.max_steps_per_epoch=2"), "data.num_workers=0"
    )
    assert code == 0 and err == []
    assert json.loads(out)["epoch"] == 1
    assert torch.load(tmp_path / "last.pth", weights_only=True)["step"] == 2


def test_the_tool_reports_a_mistake_found_while_building_the_run_without_a_traceback(demo_root, tmp_path):
    """As the user sees it: the log lines of the run being built, then one error line, exit code 2."""
    cmd = [
        sys.executable,
        str(REPO / "tools" / "train.py"),
        "--config",
        str(DEMO_CONFIG),
        *tiny(demo_root, tmp_path, "data.num_frames=16", "data.frame_stride=2"),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [done.stderr.splitlines()[-1]]
    assert "'data.num_frames' × 'data.frame_stride' (16 × 2) spans 31 frames" in errors[0]
