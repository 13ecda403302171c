"""Run a network's stem on cache-sized slices of the batch (CPU).

The first layers of most tile classifiers (ResNet's 7x7 stride-2 convolution, ReLU and
max-pool; DenseNet's ``conv0 -> norm0 -> relu0 -> pool0``) write the largest feature maps
of the whole network: for ResNet-18 at 224 px a 64 x 112 x 112 map per tile, 51 MB for a
bfloat16 batch of 32. On a CPU every one of these layers then streams its map through main
memory, and they run at memory speed, not arithmetic speed: measured on the benchmark CPU
(2 cores, 32 MB L3), ResNet-18's stem took 67 ms of a 320 ms bfloat16 batch of 32, and
34-36 ms when run on slices of 4-8 tiles whose maps stay in the cache (the deeper layers,
whose maps are 4-64x smaller, gain nothing from slicing and lose when sliced below 16).

:func:`plan_stem` finds that stem with :func:`torch.fx.symbolic_trace`: the chain of
per-sample modules (convolution, eval-mode batch norm, activation, pooling) that starts at
the network input, each feeding only the next and each running once. :func:`sliced_forward`
runs the chain slice by slice, concatenates the result and runs the rest of the network on
the whole batch by standing the chain's modules aside for that one call (the first returns
the concatenated result, the others pass it through); they are put back in ``finally``.
The module tree is never changed between calls, so module paths, hooks registered on the
chain's modules (they run once per slice) and parameters stay as they are. Each sample's
result is the same up to float rounding (convolutions are per sample).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from wsi_saliency.saliency.fold import fx_graph

__all__ = ["STEM_SLICE_BYTES", "StemPlan", "plan_stem", "sliced_forward", "stem_chain"]

#: Largest feature map of one slice of the stem, in bytes: the slice is the number of
#: samples whose largest stem map fits in this (about half the benchmark CPU's L3 cache;
#: slices of 4-8 ResNet-18 tiles in bfloat16 measured alike, 16 lost half the gain).
STEM_SLICE_BYTES = 16 * 1024 * 1024

# modules that act on each sample on its own (batch norm: in eval mode only)
_PER_SAMPLE: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU,
    nn.Hardswish, nn.Mish, nn.MaxPool2d, nn.AvgPool2d, nn.Identity,
)


@dataclass(frozen=True)
class StemPlan:
    """How :func:`sliced_forward` runs a network's stem.

    Parameters
    ----------
    paths
        Module paths of the stem chain, in the order they run.
    slice_size
        Samples per slice.
    """

    paths: tuple[str, ...]
    slice_size: int


def stem_chain(module: nn.Module, keep: Collection[str] = (),
               graph: torch.fx.Graph | None = None) -> tuple[str, ...]:
    """Module paths of the network's stem: the per-sample modules run first, one after another.

    The chain starts at the network's only input; each module takes the previous one's
    output as its only argument, that output feeds nothing else, the module runs once per
    forward pass, is registered under one name only, is one of the per-sample kinds
    (convolution, eval-mode batch norm, activation, pooling, identity) and is neither in
    ``keep`` nor inside a module in ``keep`` (a container's hooks must see its own output).

    Parameters
    ----------
    module
        The network (not changed).
    keep
        Module paths that must run on the whole batch, with everything inside them
        (e.g. the explained layer).
    graph
        The network's :func:`~wsi_saliency.saliency.fold.fx_graph`, if already traced.

    Returns
    -------
    tuple of str
        Empty when the network cannot be traced by :mod:`torch.fx` or starts otherwise.
    """
    kept = tuple(keep)
    graph = graph if graph is not None else fx_graph(module)
    if graph is None:
        return ()
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return ()
    mods = dict(module.named_modules())
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    # a module reachable under two names could be called through the one not stood aside
    names = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False))
    chain: list[str] = []
    node = inputs[0]
    while len(node.users) == 1:
        (nxt,) = node.users
        name = str(nxt.target)
        m = mods.get(name) if nxt.op == "call_module" else None
        if (m is None or not isinstance(m, _PER_SAMPLE) or nxt.args != (node,) or nxt.kwargs
                or calls[name] != 1 or names[id(m)] != 1 or any(name == k or name.startswith(k + ".") for k in kept)
                or (isinstance(m, nn.BatchNorm2d) and m.training)):
            break
        chain.append(name)
        node = nxt
    return tuple(chain)


def plan_stem(module: nn.Module, sample: torch.Tensor, keep: Collection[str] = (), *,
              graph: torch.fx.Graph | None = None, itemsize: int | None = None,
              slice_bytes: int = STEM_SLICE_BYTES) -> StemPlan | None:
    """The stem chain and its slice size, or ``None`` when there is nothing to slice.

    The stem is :func:`stem_chain` up to the first module whose output is at most a
    quarter of the largest map so far (ResNet's max-pool after its stride-2 convolution:
    the memory-bound part is over; deeper layers lose speed on small slices). The slice
    size is the number of samples whose largest stem map fits in ``slice_bytes``. A stem
    of one module is not sliced: its map is written to memory either way (measured on
    ConvNeXt-T's patchify convolution: 5 % slower sliced).

    Parameters
    ----------
    module
        The network, on the device and in the dtype/layout it will run in.
    sample
        One input ``(1, C, H, W)`` at the model's input size, in the network's dtype.
    keep
        Module paths that must run on the whole batch.
    graph
        The network's :func:`~wsi_saliency.saliency.fold.fx_graph`, if already traced.
    itemsize
        Bytes per element of the chain's feature maps as the network will run (2 under
        bfloat16 autocast); default the sample's.
    slice_bytes
        Largest stem feature map of one slice (:data:`STEM_SLICE_BYTES`).

    Returns
    -------
    StemPlan or None
        ``None`` when the network has no stem chain of two or more modules.
    """
    paths = stem_chain(module, keep, graph)
    if not paths:
        return None
    mods = dict(module.named_modules())
    size = sample.element_size() if itemsize is None else itemsize
    largest = sample.numel() * size
    with torch.inference_mode():
        y = sample
        for i, p in enumerate(paths):
            y = mods[p](y)
            out = y.numel() * size
            largest = max(largest, out)
            if 4 * out <= largest:
                paths = paths[: i + 1]
                break
    if len(paths) < 2:  # one module writes its map either way (ConvNeXt's patchify conv)
        return None
    return StemPlan(paths=paths, slice_size=max(1, slice_bytes // largest))


class _Given(nn.Module):
    """Stands in for the chain's first module for one call: returns the sliced result."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, _x: torch.Tensor) -> torch.Tensor:
        return self.value


def _set(root: nn.Module, path: str, m: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, m)


def sliced_forward(module: nn.Module, plan: StemPlan, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with the stem run on slices of ``plan.slice_size`` samples.

    The chain's modules stand aside during the call, so, like the engine's hooks, two
    threads must not run the same module through it at once (each slide job builds its
    own engine).

    Parameters
    ----------
    module
        The network :func:`plan_stem` planned.
    plan
        Its stem plan.
    x
        The batch.

    Returns
    -------
    torch.Tensor
        What ``module(x)`` returns, up to float rounding.
    """
    if x.shape[0] <= plan.slice_size:
        return module(x)
    originals = [module.get_submodule(p) for p in plan.paths]
    parts = []
    for part in x.split(plan.slice_size):
        for m in originals:
            part = m(part)
        parts.append(part)
    y = torch.cat(parts)
    if x.is_contiguous(memory_format=torch.channels_last) and y.ndim == 4:
        y = y.contiguous(memory_format=torch.channels_last)
    try:
        _set(module, plan.paths[0], _Given(y))
        for p in plan.paths[1:]:
            _set(module, p, nn.Identity())
        return module(x)
    finally:
        for p, m in zip(plan.paths, originals, strict=True):
            _set(module, p, m)
