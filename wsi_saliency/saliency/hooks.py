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
from wsi_saliency.saliency.choices import HOOK_SMOOTHINGS, SMOOTHING_MODES

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
    """Identity in the forward pass; box-averages the gradient in the backward pass.

    With a ``gain`` map (see :func:`border_gain`) the box-averaged gradient is multiplied
    by it; ``gain`` is exactly 1.0 away from the borders, so the interior is bitwise the
    plain box average.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, size: int,  # noqa: D102
                gain: torch.Tensor | None = None) -> torch.Tensor:
        ctx.size = size
        ctx.gain = gain
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: D102
        out = box_average(grad, ctx.size)
        if ctx.gain is not None:
            out = out * ctx.gain.to(dtype=out.dtype)
        return out, None, None


def _axis_gain(n: int, kernel: int, stride: int, padding: int, dilation: int, box: int
               ) -> list[float]:
    """Gain of :func:`border_gain` along one axis of length ``n`` (pure Python; the
    counts of a ones kernel are separable, so the 2-D gain is an outer product)."""
    reach = kernel * dilation + padding + box
    margin = stride * (reach // stride + 2)  # a multiple of the stride: same phase

    def counts(length: int) -> list[int]:
        n_out = (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        c = [0] * length
        for o in range(max(n_out, 0)):
            for k in range(kernel):
                i = o * stride + k * dilation - padding
                if 0 <= i < length:
                    c[i] += 1
        return c

    def boxed(c: list[int]) -> list[int]:  # zero-padded sum over c[i - h], h < box
        return [sum(c[i - h] for h in range(box) if i - h >= 0) for i in range(len(c))]

    inner = boxed(counts(n))
    outer = boxed(counts(n + 2 * margin))[margin:margin + n]
    return [1.0 if ci == co or ci == 0 else co / ci for ci, co in zip(inner, outer, strict=True)]


def border_gain(conv: nn.Conv2d, shape: tuple[int, int], box: int) -> torch.Tensor:
    """Border-aware normalisation of the input gradient of one convolution.

    In the backward pass a pixel near the border of a tile receives fewer terms than an
    interior pixel (output pixels beyond the tile do not exist, and the box average is
    zero-padded above and left), so every tile's gradient map fades towards its frame.
    The gain is ``terms the pixel would receive inside an unbounded image / terms it
    receives in the tile``, both counted after the ``box x box`` average (``box = 1``:
    no box), so the gradient at the border is normalised by the number of valid terms.
    Away from the border both counts are equal and the gain is exactly 1.0 (so the
    interior of the map is bitwise unchanged); where no term arrives it is 1.0.

    Parameters
    ----------
    conv
        The convolution (kernel size, stride, padding and dilation are used).
    shape
        ``(h, w)`` of the convolution's input.
    box
        Side of the box average applied after the convolution's backward (its stride
        for ``backward-hook`` smoothing, 1 for none).

    Returns
    -------
    torch.Tensor
        ``(h, w)`` float32 gain.
    """
    h, w = (int(v) for v in shape)
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    (dh, dw) = conv.dilation
    if isinstance(conv.padding, str):  # "same" / "valid": the explicit padding they use
        pads = [(d * (k - 1)) // 2 if conv.padding == "same" else 0
                for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
    else:
        pads = [int(v) for v in conv.padding]
    rows = _axis_gain(h, int(kh), int(sh), pads[0], int(dh), box)
    cols = _axis_gain(w, int(kw), int(sw), pads[1], int(dw), box)
    return torch.outer(torch.tensor(rows, dtype=torch.float64),
                       torch.tensor(cols, dtype=torch.float64)).to(torch.float32)


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


def _backward_pre_hook(size: int, border_aware: bool) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            return None
        gain = None
        if border_aware and x.ndim == 4:
            gain = border_gain(module, (x.shape[-2], x.shape[-1]), size).to(x.device)  # type: ignore[arg-type]
        return (SmoothGradient.apply(x, size, gain), *args[1:])

    return hook


def _forward_pre_hook(size: int) -> Any:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            return None
        return (box_average(x, size), *args[1:])

    return hook


def _backward_hooked_convs(module: nn.Module, border_aware: bool) -> list[nn.Conv2d]:
    if not border_aware:
        return [conv for _name, conv in strided_convs(module)]
    # a 1x1 stride-1 convolution has no border effect in its backward pass
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)
            and (tuple(m.kernel_size) != (1, 1) or tuple(m.stride) != (1, 1))]


def register_smoothing_hooks(
    module: nn.Module, mode: str, *, stem: str | None = None, border_aware: bool = True
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
    border_aware
        ``"backward-hook"`` only: also normalise every convolution's input gradient at
        the tile border by the number of valid terms (:func:`border_gain`; every
        ``nn.Conv2d`` whose input requires grad is hooked, strided or not), so tile maps
        do not fade towards their frame. The interior is bitwise the same as with
        ``False`` (the paper's zero-padded box on strided convolutions only).

    Returns
    -------
    list of RemovableHandle
        One per hooked convolution.

    Raises
    ------
    ConfigError
        Unknown ``mode``.
    """
    if mode not in HOOK_SMOOTHINGS:
        raise ConfigError(f"smoothing {mode!r} is not one of {list(HOOK_SMOOTHINGS)}")
    if mode == "none":
        return []
    handles: list[RemovableHandle] = []
    if mode == "backward-hook":
        try:
            for conv in _backward_hooked_convs(module, border_aware):
                handles.append(conv.register_forward_pre_hook(_backward_pre_hook(
                    _square_stride(conv), border_aware)))
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
    module: nn.Module, mode: str, *, stem: str | None = None, border_aware: bool = True
) -> Iterator[Sequence[RemovableHandle]]:
    """Context manager: smoothing hooks active inside, always removed on exit.

    Parameters
    ----------
    module, mode, stem, border_aware
        See :func:`register_smoothing_hooks`.

    Yields
    ------
    sequence of RemovableHandle
        The registered hooks (removed when the block exits, also on error).
    """
    handles = register_smoothing_hooks(module, mode, stem=stem, border_aware=border_aware)
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
