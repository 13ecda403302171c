"""Hook smoothing of strided convolutions (Smooth Deep Saliency, Herdt et al. 2024).

The backward pass of a stride-``s`` convolution is a transposed convolution whose
kernel overlaps unevenly, which stamps a checkerboard onto every gradient flowing
through it. Two fixes from the paper, both as hooks on ``nn.Conv2d`` modules with a
square stride ``s >= 2`` (``s = 2`` in practice):

``backward-hook`` (predictions unchanged)
    A forward pre-hook wraps the convolution's input in :class:`SmoothGradient`, an
    identity autograd Function whose backward replaces the gradient ``g`` with respect
    to the input by its ``s x s`` box average ``1/s^2 sum_{h,w<s} g[i-h, j-w]``
    (:func:`box_average`). ``register_full_backward_hook`` would do the same but breaks
    when an in-place ReLU follows the module; the pre-hook does not. Inputs that do not
    require grad are left alone, so convolutions below the explained layer cost nothing.

``forward-hook`` (smoother maps, changed predictions)
    Every strided convolution except the stem computes
    ``y = 1/s^2 sum_{h,w<s} conv(shift(x, (h, w)))``, i.e. a stride-1 convolution, an
    ``s x s`` box average and subsampling by ``s``. Convolution is linear and commutes
    with shifts, so this equals the convolution applied to ``box_average(x)``; the
    pre-hook does exactly that, which keeps ``groups``, ``dilation``, ``padding`` and
    the bias of the module as they are and costs one cheap box filter.

Shifts are zero-padded (``x[i-h, j-w]`` with zeros above and left of the image), not
``torch.roll``'s wrap-around: no gradient leaks from one border to the opposite one.
For a 1x1 stride-2 convolution the smoothed input gradient is then exactly uniform.

Hooks are registered by :func:`smoothing_hooks` (a context manager) and always
removed in ``finally``, as Captum does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from wsi_saliency.errors import ConfigError
from wsi_saliency.saliency.choices import SMOOTHING_MODES

__all__ = [
    "SMOOTHING_MODES",
    "SmoothGradient",
    "box_average",
    "register_smoothing_hooks",
    "smoothing_hooks",
    "strided_convs",
]



def box_average(x: torch.Tensor, size: int = 2) -> torch.Tensor:
    """Zero-padded ``size x size`` box average ``1/size^2 sum_{h,w<size} x[..., i-h, j-w]``.

    Parameters
    ----------
    x
        ``(N, C, H, W)`` tensor.
    size
        Box side (the convolution's stride).

    Returns
    -------
    torch.Tensor
        Same shape as ``x``.
    """
    if size <= 1:
        return x
    padded = F.pad(x, (size - 1, 0, size - 1, 0))
    return F.avg_pool2d(padded, size, stride=1)


class SmoothGradient(torch.autograd.Function):
    """Identity in the forward pass; box-averages the gradient in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, size: int) -> torch.Tensor:  # noqa: D102
        ctx.size = size
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return box_average(grad, ctx.size), None


def _square_stride(conv: nn.Conv2d) -> int:
    stride = conv.stride if isinstance(conv.stride, tuple) else (conv.stride, conv.stride)
    return int(stride[0]) if stride[0] == stride[1] else 1


def strided_convs(module: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Return ``(name, conv)`` for every ``nn.Conv2d`` with a square stride >= 2.

    Parameters
    ----------
    module
        The network.

    Returns
    -------
    list of (str, nn.Conv2d)
        In registration order.
    """
    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d) and _square_stride(m) >= 2
    ]


def _backward_pre_hook(size: int) -> Any:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            return None
        return (SmoothGradient.apply(x, size), *args[1:])

    return hook


def _forward_pre_hook(size: int) -> Any:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            return None
        return (box_average(x, size), *args[1:])

    return hook


def register_smoothing_hooks(
    module: nn.Module, mode: str, *, stem: str | None = None
) -> list[RemovableHandle]:
    """Register smoothing hooks on the strided convolutions of ``module``.

    Prefer :func:`smoothing_hooks`, which removes them. The caller owns the returned
    handles and must call ``remove()`` on each (in ``finally``).

    Parameters
    ----------
    module
        The network.
    mode
        ``"none"``, ``"backward-hook"`` or ``"forward-hook"``.
    stem
        Module path of the stem convolution, left unchanged by ``"forward-hook"``;
        ``None`` takes the first ``nn.Conv2d`` of the network in registration order.

    Returns
    -------
    list of RemovableHandle
        One per hooked convolution.

    Raises
    ------
    ConfigError
        Unknown ``mode``.
    """
    if mode not in SMOOTHING_MODES:
        raise ConfigError(f"smoothing {mode!r} is not one of {list(SMOOTHING_MODES)}")
    if mode == "none":
        return []
    handles: list[RemovableHandle] = []
    if mode == "backward-hook":
        try:
            for _name, conv in strided_convs(module):
                handles.append(conv.register_forward_pre_hook(_backward_pre_hook(
                    _square_stride(conv))))
        except BaseException:
            for h in handles:
                h.remove()
            raise
        return handles
    if stem is None:
        stem = next((n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), None)
    try:
        for name, conv in strided_convs(module):
            if name == stem:
                continue
            handles.append(conv.register_forward_pre_hook(_forward_pre_hook(
                _square_stride(conv))))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


@contextmanager
def smoothing_hooks(
    module: nn.Module, mode: str, *, stem: str | None = None
) -> Iterator[Sequence[RemovableHandle]]:
    """Context manager: smoothing hooks active inside, always removed on exit.

    Parameters
    ----------
    module, mode, stem
        See :func:`register_smoothing_hooks`.

    Yields
    ------
    sequence of RemovableHandle
        The registered hooks (removed when the block exits, also on error).
    """
    handles = register_smoothing_hooks(module, mode, stem=stem)
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
