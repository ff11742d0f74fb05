"""A functional transcription of the official iduta/iresnet forward pass, driven by checkpoint keys.

It shares no code with `iresvid.models`: it walks a state dict and applies `torch.nn.functional` ops the way
the official `models/*.py` do — including the in-place ReLU on a block's input when its leading BN is absent,
which the identity then carries too.  Tests compare our models loaded from the same tensors against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bn(state, prefix, x):
    return F.batch_norm(
        x,
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
        state[f"{prefix}.weight"],
        state[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def _conv(state, key, x, stride=1):
    w = state[key]
    groups = x.shape[1] // w.shape[1]
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)


def _block(state, p, x, stride, *, first, roles, improved):
    """One official block. ``roles``: ResStage/iResNet block (start/middle/end by keys)."""
    convs = 3 if f"{p}.conv3.weight" in state else 2
    last = f"{p}.bn{convs}"
    has_last = f"{last}.weight" in state
    end = roles and has_last and not first
    identity = x
    if not roles or first:
        out = x
    elif f"{p}.bn0.weight" in state:
        out = F.relu(_bn(state, f"{p}.bn0", x))
    else:
        out = x.relu_()  # in place, as the official code: `identity` sees it too
    # The official stride sits on conv1 of basic blocks and on conv2 (3×3) of bottlenecks.
    for i in range(1, convs):
        out = _conv(state, f"{p}.conv{i}.weight", out, stride if (i == 1) == (convs == 2) else 1)
        out = F.relu(_bn(state, f"{p}.bn{i}", out))
    out = _conv(state, f"{p}.conv{convs}.weight", out)
    if has_last and not end:
        out = _bn(state, last, out)
    if first:
        if f"{p}.downsample.0.weight" in state:  # strided 1×1 conv → BN
            identity = _bn(state, f"{p}.downsample.1", _conv(state, f"{p}.downsample.0.weight", x, stride))
        elif f"{p}.downsample.1.weight" in state:  # improved: max-pool → 1×1 conv → BN
            pooled = F.max_pool2d(x, 3, stride, 1) if stride != 1 else x
            identity = _bn(state, f"{p}.downsample.2", _conv(state, f"{p}.downsample.1.weight", pooled))
        elif stride != 1 and improved:  # stride only: the max-pool alone
            identity = F.max_pool2d(x, 3, stride, 1)
    out = out + identity
    if end:
        out = _bn(state, last, out)
    if end or not roles:
        out = F.relu(out)
    return out


def official_forward(state: dict[str, torch.Tensor], x: torch.Tensor, *, roles: bool, improved: bool):
    """Logits of an official network (``roles``: ResStage roles; ``improved``: iResNet stem + shortcut)."""
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    x = F.relu(_bn(state, "bn1", F.conv2d(x.double(), state["conv1.weight"], stride=2, padding=3)))
    if not improved:
        x = F.max_pool2d(x, 3, 2, 1)
    for stage in range(1, 5):
        num_blocks = len({k.split(".")[1] for k in state if k.startswith(f"layer{stage}.")})
        for b in range(num_blocks):
            stride = 2 if b == 0 and (stage > 1 or improved) else 1
            x = _block(state, f"layer{stage}.{b}", x, stride, first=b == 0, roles=roles, improved=improved)
    x = x.mean((2, 3))
    return F.linear(x, state["fc.weight"], state["fc.bias"]).float()
