"""The timm feature contract: `FeatureInfo`, `take_indices` and the `features_only` wrapper.

Level 0 is the stem's output, level k the output of stage k.  ``FeatureInfo.module_name(i)`` names the
module whose forward output *is* level i, so ``model.get_submodule(name).register_forward_hook`` sees the
same tensor `forward_intermediates` returns (the contract timm users rely on).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FeatureInfo(list):
    """A list of ``dict(num_chs=, reduction=, module=)``, one per feature level, with timm's accessors.

    A plain ``list`` underneath, so ``info[i]["num_chs"]`` and ``len(info)`` keep working; the accessors take
    an optional index or sequence of indices (default: every level).
    """

    def get(self, key: str, idx: int | Sequence[int] | None = None):
        if idx is None:
            return [f[key] for f in self]
        if isinstance(idx, int):
            return self[idx][key]
        return [self[i][key] for i in idx]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None):
        def pick(f: dict) -> dict:
            return dict(f) if keys is None else {k: f[k] for k in keys}

        if idx is None:
            return [pick(f) for f in self]
        if isinstance(idx, int):
            return pick(self[idx])
        return [pick(self[i]) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None):
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None):
        return self.get("module", idx)


def take_indices(num_levels: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``: (absolute levels to take, the largest of them).

    None takes every level, an int ``n`` the last ``n``, a sequence the levels it names (negative ones
    count from the end).  Out-of-range levels are refused, naming how many this model has.
    """
    levels = f"this model has {num_levels} feature levels (0 = stem, 1..{num_levels - 1} = stages)"
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"indices={indices} (the last n levels) is out of range: {levels}")
        taken = list(range(num_levels - indices, num_levels))
    else:
        bad = [i for i in indices if not -num_levels <= i < num_levels]
        if bad or not len(indices):
            raise ValueError(f"out_indices {list(indices)} out of range: {levels}")
        taken = [i % num_levels for i in indices]
    return taken, max(taken)


class FeatureExtractor(nn.Module):
    """A backbone returning the maps of ``out_indices`` as a list (timm's ``features_only``).

    It never changes the model it wraps: it runs `forward_intermediates` with ``stop_early``, so stages past
    the last requested level are not run.  `create_model(features_only=True)` also prunes those stages and
    the head from the model it built for the purpose (they would be dead parameters).
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None):
        super().__init__()
        self.out_indices, _ = take_indices(len(model.feature_info), out_indices)
        self.model = model
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = sorted(set(self.out_indices))  # forward_intermediates returns levels in network order
        maps = self.model.forward_intermediates(x, levels, stop_early=True, intermediates_only=True)
        by_level = dict(zip(levels, maps, strict=True))
        return [by_level[i] for i in self.out_indices]
