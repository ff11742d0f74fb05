"""Precise BN recomputes the statistics of the BN layers that train, exactly, and leaves frozen ones alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import iresvid
from iresvid.engine.precise_bn import training_norms, update_bn_stats


def _direct_statistics(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, tuple]:
    """Each training BN layer's mean and unbiased variance of its input, per batch, averaged over batches —
    computed from the inputs the layers see (hooks), not by BN itself."""
    seen: dict[str, list] = {}
    names = {m: n for n, m in model.named_modules()}
    hooks = []
    for m in training_norms(model):

        def hook(module, args, name=names[m]):
            x = args[0].double().transpose(0, 1).flatten(1)  # channels × (batch and positions)
            seen.setdefault(name, []).append((x.mean(1), x.var(1, unbiased=True)))

        hooks.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for h in hooks:
        h.remove()
    return {
        name: (torch.stack([m for m, _ in stats]).mean(0), torch.stack([v for _, v in stats]).mean(0))
        for name, stats in seen.items()
    }


def _statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.mark.parametrize(
    "settings",
    [{}, {"norm_eval": True}, {"frozen_stages": 2}],
    ids=["all train", "norm_eval", "frozen stages 0-2"],
)
def test_precise_bn_recomputes_training_layers_exactly_and_keeps_frozen_ones(settings):
    torch.manual_seed(0)
    model = iresvid.create_model("iresnet3d18", num_classes=5, width_scale=0.125, **settings)
    # Statistics as a pretrained model has them (not BN's initial 0 / 1), to see that frozen ones survive.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(1234)
    batches = [torch.randn(2, 3, 4, 32, 32) * 2 + 1 for _ in range(3)]
    model.train()
    training = {n for n, m in model.named_modules() if m in training_norms(model)}
    all_norms = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm3d)}
    if settings.get("norm_eval"):
        assert training == set()
    elif settings.get("frozen_stages"):
        assert 0 < len(training) < len(all_norms) and not any(
            n.startswith(("bn1", "layer1.", "layer2.")) for n in training
        )
    else:
        assert training == all_norms
    expected = _direct_statistics(model, batches)  # in training mode: frozen layers untouched by it too
    before = _statistics(model)
    model.eval()

    assert update_bn_stats(model, iter(batches)) == 3
    assert not model.training  # its mode is given back
    after = _statistics(model)
    for name in all_norms:
        if name in training:
            mean, var = expected[name]
            torch.testing.assert_close(after[f"{name}.running_mean"].double(), mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(after[f"{name}.running_var"].double(), var, rtol=1e-4, atol=1e-5)
            assert not torch.equal(after[f"{name}.running_mean"], before[f"{name}.running_mean"])
        else:  # frozen: bit for bit the pretrained statistics
            for key in ("running_mean", "running_var"):
                assert torch.equal(after[f"{name}.{key}"], before[f"{name}.{key}"]), name
        assert after[f"{name}.num_batches_tracked"] == before[f"{name}.num_batches_tracked"]
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm3d))


def test_precise_bn_runs_in_the_training_autocast():
    """A bf16 model's statistics are those of its bf16 activations: the forward runs under the training
    step's autocast."""
    model = iresvid.create_model("iresnet3d18", num_classes=5, width_scale=0.125)
    dtypes = []
    model.conv1.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    update_bn_stats(model, [torch.randn(1, 3, 4, 32, 32)], amp_dtype=torch.bfloat16)
    assert dtypes == [torch.bfloat16]
