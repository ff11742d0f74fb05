"""Counting the host's reads of device values: each one makes the CPU wait until the GPU has caught up.

A training step that reads nothing back lets the CPU queue the next step's kernels (and collate its batch)
while the GPU still runs this one; one ``loss.item()`` per step serialises them.  `count_host_reads` counts
those reads in any code it wraps, on the CPU too (a CPU tensor's ``.item()`` goes through the same
operator), so a test proves a step free of them without a GPU; on a GPU,
``torch.cuda.set_sync_debug_mode("error")`` is the stricter check (`tools/gpu_check.sh` uses both).
"""

from __future__ import annotations

import collections
import itertools
import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# What a read back looks like at the operator level: ``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``,
# a Python ``if`` on a tensor: all call ``_local_scalar_dense``.  A copy from a CUDA tensor to the CPU
# (``.cpu()``, ``.to("cpu")``) is counted as ``to_host``.  (``.tolist()`` reads in C++ past the dispatcher:
# on a CUDA tensor it shows as its copy to the host, on a CPU tensor, where it costs no wait, not at all.)
_SCALAR_READ = torch.ops.aten._local_scalar_dense.default


class count_host_reads(TorchDispatchMode):  # noqa: N801 - used as a context manager, like torch's own
    """``with count_host_reads() as reads: ...``; then ``reads.total`` and ``reads.counts`` (by kind:
    ``"scalar"``, ``"to_host"``).

    Given ``modules``, only the reads of values computed from their parameters and buffers are counted —
    what lives on the GPU in a real run (activations, the loss, gradients, their sums) — so that on the CPU
    a test tells them from reads of host data (a batch's labels, a CPU step counter), which cost no wait.
    The values derived are followed through every operator, in-place ones included.
    """

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self._derived: dict[int, weakref.ref] | None = None
        if modules:
            self._derived = {}
            for module in modules:
                for tensor in itertools.chain(module.parameters(), module.buffers()):
                    self._mark(tensor)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _mark(self, tensor: torch.Tensor) -> None:
        self._derived[id(tensor)] = weakref.ref(tensor)

    def _is_derived(self, tensor: torch.Tensor) -> bool:
        # By identity: a tensor's == is elementwise, so no set or weak set can hold tensors.
        ref = self._derived.get(id(tensor))
        return ref is not None and ref() is tensor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        counted = self._derived is None or any(self._is_derived(t) for t in tensors)
        if counted and func is _SCALAR_READ:
            self.counts["scalar"] += 1
        elif counted and _copies_to_host(func, args, kwargs):
            self.counts["to_host"] += 1
        out = func(*args, **kwargs)
        if self._derived is not None and counted and func is not _SCALAR_READ:
            results = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            if func._schema.is_mutable:  # written in place (``totals[0] += loss``): the target, and its base
                results += [t for t in tensors[:1]] + [t._base for t in tensors[:1] if t._base is not None]
            for tensor in results:
                self._mark(tensor)
        return out


def _copies_to_host(func, args, kwargs) -> bool:
    """A copy out of a CUDA tensor into host memory (``.cpu()``, ``.to("cpu")``, ``cpu_tensor.copy_(t)``)."""
    if func.overloadpacket is torch.ops.aten._to_copy:
        source, target = args[0], kwargs.get("device")
    elif func.overloadpacket is torch.ops.aten.copy_:
        source, target = args[1], args[0].device
    else:
        return False
    on_gpu = isinstance(source, torch.Tensor) and source.device.type == "cuda"
    return on_gpu and target is not None and torch.device(target).type == "cpu"
