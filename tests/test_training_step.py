"""The training step as a GPU needs it: no value read back between logging steps, precise BN that leaves
frozen layers alone, EMA on the device, the loader's share of the time reported, determinism as asked."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from test_engine import DEMO_CONFIG, tiny
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import iresvid
from iresvid.config import ConfigError, load_config
from iresvid.data import loader as loaders
from iresvid.engine.device import nondeterministic_op, set_algorithms
from iresvid.engine.ema import ModelEma
from iresvid.engine.evaluate import evaluate
from iresvid.engine.syncs import count_host_reads
from iresvid.engine.trainer import Trainer

# 24 training videos in batches of 4: 6 steps an epoch.
CPU = torch.device("cpu")
SMALL_BATCHES = ("data.batch_size=4", "optim.base_batch_size=4", "schedule.epochs=1", "train.eval_every=0")


def test_a_training_step_reads_nothing_back_except_on_logging_steps(demo_root, tmp_path, monkeypatch):
    """Every ``.item()``, ``bool(tensor)`` or device→host copy of a value the GPU computes makes the CPU wait
    for it.  Counted at the operator level (values derived from the model's weights: what a GPU holds) over
    an epoch of 6 AdamW steps with EMA and gradient clipping: nothing is read within a step, nor between two
    steps except after a logging step."""
    settings = tiny(demo_root, tmp_path, *SMALL_BATCHES, "train.log_every=3", "data.num_workers=1")
    settings += ["train.ema_decay=0.9", "train.clip_grad_norm=10"]
    trainer = Trainer(load_config(DEMO_CONFIG, settings))
    assert trainer.steps_per_epoch == 6
    boundaries = []  # the count of reads at the start and the end of each step's work
    real_forward_backward, real_step = Trainer._forward_backward, Trainer._optimizer_step

    def forward_backward(self, batch):
        boundaries.append(("start", self.step + 1, reads.total))
        return real_forward_backward(self, batch)

    def optimizer_step(self):
        real_step(self)
        boundaries.append(("end", self.step, reads.total))

    monkeypatch.setattr(Trainer, "_forward_backward", forward_backward)
    monkeypatch.setattr(Trainer, "_optimizer_step", optimizer_step)
    with count_host_reads(trainer.model) as reads:
        trainer.train_one_epoch()
    assert [(kind, step) for kind, step, _ in boundaries] == [
        (k, s) for s in range(1, 7) for k in ("start", "end")
    ]
    counts = [count for _, _, count in boundaries]
    within_steps = [counts[i + 1] - counts[i] for i in range(0, 12, 2)]
    between_steps = {(i + 1) // 2: counts[i + 1] - counts[i] for i in range(1, 11, 2)}  # after step 1..5
    assert within_steps == [0] * 6
    assert between_steps[1] == between_steps[2] == between_steps[4] == between_steps[5] == 0
    assert between_steps[3] > 0  # the logging step reads the loss and the divergence flags: the count works
    assert reads.total > counts[-1]  # and the epoch's end reads its sums


def test_precise_bn_during_training_keeps_the_statistics_of_frozen_layers(demo_root, tmp_path):
    """Fine-tuning with frozen stages: precise BN recomputes the other layers' statistics and leaves the
    frozen ones' (pretrained, here made up) as they were, where resetting every BN left them at 0 / 1."""
    settings = tiny(
        demo_root, tmp_path, *SMALL_BATCHES, "train.precise_bn_batches=2", "model.frozen_stages=1"
    )
    trainer = Trainer(load_config(DEMO_CONFIG, settings))
    norms = {n: m for n, m in trainer.model.named_modules() if isinstance(m, nn.BatchNorm3d)}
    for m in norms.values():
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in norms.items()}
    trainer.validate()
    frozen = {n for n in norms if n.startswith(("bn1", "layer1."))}
    assert frozen and len(frozen) < len(norms)
    for name, m in norms.items():
        unchanged = torch.equal(m.running_mean, before[name][0]) and torch.equal(
            m.running_var, before[name][1]
        )
        assert unchanged == (name in frozen), name


def test_ema_averages_floating_tensors_copies_counters_and_reads_as_averaged_model_does():
    torch.manual_seed(0)
    model = iresvid.create_model("iresnet3d18", num_classes=3, width_scale=0.125)
    ema, reference = ModelEma(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    start = model.fc.weight.detach().clone()
    ours = count_host_reads()
    for _ in range(3):
        with torch.no_grad():
            model.fc.weight.add_(1.0)
        model.bn1.num_batches_tracked += 1
        with ours:
            ema.update_parameters(model)
        with count_host_reads() as theirs:
            reference.update_parameters(model)  # parameters only: its buffers are not averaged
    assert ours.total == 0 and theirs.total == 2  # AveragedModel reads its CPU count twice per update
    # the first update copies, then 0.9 old + 0.1 new: start+1, then +0.1·1, +0.1·(start+3 − (start+1.1))
    torch.testing.assert_close(ema.module.fc.weight, reference.module.fc.weight)
    torch.testing.assert_close(ema.module.fc.weight, start + 1 + 0.1 + 0.1 * 1.9)
    assert ema.module.bn1.num_batches_tracked == 3  # an integer buffer is copied, not "averaged"
    assert ema.updates == 3 and ema.n_averaged == 3
    # checkpoints: the same layout as AveragedModel's, either way round
    assert set(ema.state_dict()) == set(AveragedModel(model, use_buffers=True).state_dict())
    again = ModelEma(iresvid.create_model("iresnet3d18", num_classes=3, width_scale=0.125), 0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 3 and torch.equal(again.module.fc.weight, ema.module.fc.weight)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        ModelEma(model, 1.0)


class _SlowLoader:
    """The trainer's loader, handing each batch over ``delay`` seconds late: a loader that cannot keep up."""

    def __init__(self, loader, delay: float):
        self._loader, self.delay = loader, delay

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for batch in self._loader:
            time.sleep(self.delay)
            yield batch


def test_the_share_of_time_spent_waiting_for_data_is_measured_logged_and_a_slow_loader_named(
    demo_root, tmp_path, caplog
):
    trainer = Trainer(load_config(DEMO_CONFIG, tiny(demo_root, tmp_path, *SMALL_BATCHES)))
    trainer.train_loader = _SlowLoader(trainer.train_loader, 0.25)
    with caplog.at_level(logging.INFO, logger="iresvid.train"):
        metrics = trainer.train_one_epoch()
    elapsed = 24 / metrics["clips_per_s"]  # 6 batches of 4 clips
    assert 6 * 0.25 <= metrics["data_wait"] * elapsed < elapsed  # the sleeps, at least, were waited for
    assert any("% of the time waiting for data" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="iresvid.train"):
        trainer._report_data_wait(0.1, 1.0)  # a loader that keeps up: said, not warned about
        trainer._report_data_wait(0.6, 1.0)
    [low, high, warning] = [r for r in caplog.records if r.name == "iresvid.train"]
    assert low.levelno == high.levelno == logging.INFO
    assert (low.getMessage(), high.getMessage()) == (
        "epoch 1: 10% of the time waiting for data",
        "epoch 1: 60% of the time waiting for data",
    )
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("epoch 1: the model waited for data 60% of the time, the loader")
    assert "data.num_workers=0 now" in warning.getMessage() and "iresvid prepare" in warning.getMessage()


def test_num_workers_minus_one_takes_this_processes_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(loaders.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loaders.resolve_workers(-1) == 31
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 GPUs' processes on the node share its 32 cores
    assert loaders.resolve_workers(-1) == 3
    assert loaders.resolve_workers(5) == 5
    kinetics = load_config("configs/iresnet3d50_kinetics.yaml", ["data.root=/data/k400"])
    assert kinetics.data.num_workers == -1


@pytest.fixture
def restored_determinism():
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def test_train_deterministic_sets_torch_and_strict_names_the_op(restored_determinism):
    cpu = torch.device("cpu")
    set_algorithms(cpu, deterministic="strict")
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    set_algorithms(cpu, deterministic="warn")
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    set_algorithms(cpu, deterministic="off")
    assert not torch.are_deterministic_algorithms_enabled()
    # torch's own message when such an op runs (the 3×3×3 max-pool's CUDA backward) becomes one line
    torch_error = RuntimeError(
        "max_pool3d_with_indices_backward_cuda does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation..."
    )
    refusal = nondeterministic_op(torch_error)
    assert isinstance(refusal, ConfigError) and "\n" not in str(refusal)
    op = "max_pool3d_with_indices_backward_cuda"
    assert str(refusal).startswith(f"train.deterministic=strict: {op} has no deterministic implementation")
    assert nondeterministic_op(RuntimeError("CUDA out of memory")) is None
    with pytest.raises(ConfigError, match="train.deterministic=sometimes"):
        set_algorithms(cpu, deterministic="sometimes")


class _FirstBatches:
    """An evaluation loader cut to its first ``n`` batches."""

    def __init__(self, loader, n: int):
        self._loader, self.n, self.dataset = loader, n, loader.dataset

    def __iter__(self):
        for i, batch in enumerate(self._loader):
            if i == self.n:
                return
            yield batch


def test_evaluation_reads_nothing_back_per_batch(demo_root, tmp_path):
    """Evaluation keeps its sums on the device: two batches more read no value more (the reads at its end,
    of the sums, are the same however many batches there were)."""
    settings = tiny(demo_root, tmp_path, "data.batch_size=2", "optim.base_batch_size=2", "data.num_workers=1")
    trainer = Trainer(load_config(DEMO_CONFIG, settings))
    reads = {}
    for n in (2, 4):
        loader = _FirstBatches(trainer.val.loader, n)
        with count_host_reads(trainer.model) as counted:
            evaluate(trainer.model, loader, trainer.val.views, num_classes=len(trainer.classes), device=CPU)
        reads[n] = counted.total
    assert reads[4] == reads[2] > 0
