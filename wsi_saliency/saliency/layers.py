"""Choosing the explained layer: listing candidates and resolving a module path."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wsi_saliency.errors import LayerNotFoundError, SaliencyUnsupportedError
from wsi_saliency.models import LoadedModel

__all__ = ["LayerInfo", "default_layer", "get_layer", "list_layers", "trace_layers"]


@dataclass(frozen=True)
class LayerInfo:
    """One module of a network as seen in a forward pass at the model's input size.

    Parameters
    ----------
    name
        Module path (``"layer3"``, ``"layer3.1"``, ``"features.6"``).
    kind
        Class name of the module.
    shape
        ``(C, h, w)`` of its output for one image, or ``None`` if the output is not a
        4-D feature map.
    stride
        Input pixels per output pixel (``input_size / h``), or ``None``.
    calls
        How often the module runs in one forward pass (a layer must run once).
    strided_convs_after
        Strided convolutions that run after the module: the ones hook smoothing acts on
        when this layer is explained.
    order
        Position of the module's completion in the forward pass.
    start
        Position of the module's (first) start in the forward pass.
    """

    name: str
    kind: str
    shape: tuple[int, int, int] | None
    stride: float | None
    calls: int
    strided_convs_after: int
    order: int
    start: int = 0

    @property
    def is_candidate(self) -> bool:
        """True if the layer can be explained (a feature map, computed once)."""
        return self.shape is not None and self.calls == 1


def _is_strided_conv(m: nn.Module) -> bool:
    if not isinstance(m, nn.Conv2d):
        return False
    s = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
    return max(s) >= 2


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in module.parameters():
        return p.device, p.dtype
    for b in module.buffers():
        return b.device, b.dtype if b.is_floating_point() else torch.float32
    return torch.device("cpu"), torch.float32


def trace_layers(module: nn.Module, input_size: int) -> list[LayerInfo]:
    """Run one zero image through ``module`` and describe every named submodule.

    Parameters
    ----------
    module
        The network (not TorchScript); put in eval mode by the caller.
    input_size
        Side of the square input image.

    Returns
    -------
    list of LayerInfo
        Modules that ran, in order of completion (modules that never ran are left out).
    """
    if isinstance(module, torch.jit.ScriptModule):
        raise SaliencyUnsupportedError(
            "a TorchScript model has no hookable layers; provide config.json with a named "
            "architecture and model.safetensors"
        )
    counter = [0]
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, int, int] | None] = {}
    kinds: dict[str, str] = {}
    conv_starts: list[int] = []

    conv_inputs: list[Any] = []  # autograd node of each strided convolution's input
    out_nodes: dict[str, Any] = {}  # autograd node of each module's output

    def pre(name: str, m: nn.Module) -> Any:
        def hook(_m: nn.Module, _args: Any) -> None:
            counter[0] += 1
            starts.setdefault(name, counter[0])
            calls[name] = calls.get(name, 0) + 1
            if _is_strided_conv(m):
                conv_starts.append(counter[0])
                x = _args[0] if _args else None
                conv_inputs.append(x.grad_fn if isinstance(x, torch.Tensor) else None)

        return hook

    def post(name: str) -> Any:
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            counter[0] += 1
            ends[name] = counter[0]
            if isinstance(out, torch.Tensor):
                out_nodes[name] = out.grad_fn
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                shapes[name] = (int(out.shape[1]), int(out.shape[2]), int(out.shape[3]))
            else:
                shapes[name] = None

        return hook

    handles = []
    try:
        for name, m in module.named_modules():
            if not name:
                continue
            kinds[name] = type(m).__name__
            handles.append(m.register_forward_pre_hook(pre(name, m)))
            handles.append(m.register_forward_hook(post(name)))
        device, dtype = _module_device_dtype(module)
        # with a graph, so that "strided convolutions after a layer" follows the gradient
        # path (a ResNet's parallel downsample branch does not come after conv1)
        x = torch.zeros(1, 3, input_size, input_size, device=device, dtype=dtype)
        with torch.enable_grad():
            module(x.requires_grad_(True))
        ancestors = [_ancestors(node) for node in conv_inputs]
    finally:
        for h in handles:
            h.remove()
    infos = []
    for name in sorted(ends, key=lambda n: ends[n]):
        shape = shapes[name]
        stride = None
        if shape is not None and shape[1] > 0:
            stride = input_size / shape[1]
        infos.append(
            LayerInfo(
                name=name,
                kind=kinds[name],
                shape=shape,
                stride=stride,
                calls=calls.get(name, 0),
                strided_convs_after=_convs_after(
                    out_nodes.get(name), ancestors, conv_starts, ends[name]
                ),
                order=ends[name],
                start=starts[name],
            )
        )
    return infos


def _ancestors(node: Any) -> set[int]:
    """Ids of every autograd node the given node depends on (itself included)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        stack.extend(nxt for nxt, _ in getattr(n, "next_functions", ()))
    return seen


def _convs_after(
    node: Any, ancestors: list[set[int]], conv_starts: list[int], end: int
) -> int:
    """Strided convolutions whose input depends on ``node`` (execution order if unknown)."""
    if node is None:
        return sum(1 for s in conv_starts if s > end)
    return sum(1 for a in ancestors if id(node) in a)


def get_layer(module: nn.Module, name: str) -> nn.Module:
    """Return the submodule at module path ``name``.

    Raises
    ------
    LayerNotFoundError
        No such module; the message lists the closest names.
    """
    modules = dict(module.named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    raise LayerNotFoundError(
        f"layer {name!r} not found; closest: {', '.join(close) if close else '(none)'}; "
        "list them with 'wsi-saliency layers MODEL_DIR'"
    )


def list_layers(
    model: LoadedModel | nn.Module, input_size: int | None = None, *, candidates_only: bool = True
) -> list[LayerInfo]:
    """List the layers of a model that can be explained.

    Parameters
    ----------
    model
        A :class:`~wsi_saliency.models.LoadedModel` or a bare network.
    input_size
        Input side; defaults to the model's ``spec.input_size`` (required for a bare
        network).
    candidates_only
        Keep only 4-D feature maps computed once per forward pass.

    Returns
    -------
    list of LayerInfo
        In forward order.

    Raises
    ------
    SaliencyUnsupportedError
        TorchScript model.
    """
    if isinstance(model, LoadedModel):
        module = model.module
        size = input_size or model.spec.input_size
    else:
        module = model
        if input_size is None:
            raise ValueError("input_size is needed for a bare nn.Module")
        size = input_size
    infos = trace_layers(module, size)
    return [i for i in infos if i.is_candidate] if candidates_only else infos


def default_layer(infos: list[LayerInfo], preferred_stride: float = 16.0) -> str:
    """Pick a layer when none is configured.

    Among feature maps at ``preferred_stride``, preferring those with a strided
    convolution after them (where hook smoothing acts), the outermost module (fewest
    dots in its path) that completes last: ``layer3`` of a ResNet or of the demo CNN,
    ``features.13`` of a MobileNetV2. Without any map at that stride: the coarsest map
    with a strided convolution after it, else the last feature map.

    Raises
    ------
    SaliencyUnsupportedError
        The network produces no 4-D feature map.
    """
    cands = [i for i in infos if i.is_candidate]
    if not cands:
        raise SaliencyUnsupportedError("the network produces no (C, h, w) feature map to explain")

    def outermost_last(group: list[LayerInfo]) -> str:
        return max(group, key=lambda i: (-i.name.count("."), i.order)).name

    at_stride = [i for i in cands if i.stride == preferred_stride]
    smoothed = [i for i in at_stride if i.strided_convs_after > 0]
    if smoothed:
        return outermost_last(smoothed)
    if at_stride:
        return outermost_last(at_stride)
    with_conv = [i for i in cands if i.strided_convs_after > 0 and i.stride is not None]
    if with_conv:
        return max(with_conv, key=lambda i: (i.stride or 0.0, -i.name.count("."), i.order)).name
    return max(cands, key=lambda i: i.order).name
