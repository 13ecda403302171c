"""Bilinear surrogates of strided convolutions (Smooth Deep Saliency's third fix).

The paper's ``bilinear`` variant replaces every strided convolution except the stem by
a learned module without a strided kernel::

    Conv3x3(C_in -> C_out, padding 1) -> bilinear resize to the convolution's output size
    -> Conv3x3(C_out -> C_out, padding 1)

The resize has an even footprint, so its backward pass does not stamp the
checkerboard a stride-2 transposed convolution does. The BatchNorm (and everything
else) after the convolution stays; each surrogate is trained to reproduce its
convolution's output with the classifier frozen
(:mod:`wsi_saliency.saliency.surrogate_train`).

The convolutions replaced are found as the smoothing hooks find theirs
(:func:`~wsi_saliency.saliency.hooks.strided_convs`: ``nn.Conv2d`` with a square
stride >= 2), minus the stem (the first convolution to run, as for ``forward-hook``).
Grouped and depthwise convolutions get surrogates with the same ``groups``. A
strided convolution that runs more than once per forward pass (a shared module) is
refused, naming it.

:func:`surrogates_substituted` puts the surrogates in place with forward hooks (the
network's modules are not changed) and removes them in ``finally``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from wsi_saliency.errors import InvalidModelError, SaliencyUnsupportedError
from wsi_saliency.saliency.hooks import strided_convs
from wsi_saliency.saliency.layers import trace_layers

__all__ = [
    "SURROGATE_FORMAT",
    "BilinearSurrogate",
    "SurrogateSet",
    "TrainResult",
    "capture_conv_io",
    "conv_output_size",
    "load_surrogates",
    "register_surrogates",
    "save_surrogates",
    "surrogate_targets",
    "surrogates_substituted",
]

#: ``format`` metadata of a ``surrogate.safetensors`` file.
SURROGATE_FORMAT = "wsi-saliency-bilinear-surrogate/1"


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, tuple):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def conv_output_size(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """Output ``(h, w)`` of ``conv`` for an ``height x width`` input.

    Parameters
    ----------
    conv
        The convolution (stride, padding, dilation and kernel size are used).
    height, width
        Input size.

    Returns
    -------
    tuple of int
        ``floor((n + 2 p - d (k - 1) - 1) / s) + 1`` per axis.
    """
    return _output_size(_geometry(conv), height, width)


Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]


def _geometry(conv: nn.Conv2d) -> Geometry:
    if isinstance(conv.padding, str):
        if conv.padding != "valid":  # PyTorch refuses 'same' with a stride
            raise SaliencyUnsupportedError(
                f"convolution with padding {conv.padding!r} and stride {conv.stride} cannot "
                "get a surrogate")
        pad = (0, 0)
    else:
        pad = _pair(conv.padding)
    return _pair(conv.kernel_size), _pair(conv.stride), pad, _pair(conv.dilation)


def _output_size(geometry: Geometry, height: int, width: int) -> tuple[int, int]:
    k, s, pad, d = geometry
    h = (height + 2 * pad[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    w = (width + 2 * pad[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return h, w


class BilinearSurrogate(nn.Module):
    """``Conv3x3 -> bilinear resize to the replaced convolution's output size -> Conv3x3``.

    Parameters
    ----------
    conv
        The strided convolution it stands in for: channels, ``groups`` and the
        geometry that decides the output size are taken from it.
    warm_start
        Start near the convolution instead of at random: ``conv1`` takes its weights
        (centre-cropped or zero-padded to 3x3) and bias, ``conv2`` starts as the
        identity. The stride-1 convolution followed by the 2x downsampling is then off
        from the strided convolution by half a pixel, which training removes; it
        converges much faster than a random start.
    """

    def __init__(self, conv: nn.Conv2d, *, warm_start: bool = True) -> None:
        super().__init__()
        cin, cout, groups = conv.in_channels, conv.out_channels, conv.groups
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, groups=groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, groups=groups)
        self.geometry: Geometry = _geometry(conv)
        if warm_start:
            self._warm_start(conv)

    def _warm_start(self, conv: nn.Conv2d) -> None:
        with torch.no_grad():
            w = conv.weight.detach().to(self.conv1.weight.dtype).cpu()
            kh, kw = int(w.shape[-2]), int(w.shape[-1])
            w3 = torch.zeros_like(self.conv1.weight)
            # centre-aligned crop / zero-pad of the kernel to 3x3
            oh, ow = (kh - 3) // 2, (kw - 3) // 2
            ys = slice(max(oh, 0), max(oh, 0) + min(kh, 3))
            xs = slice(max(ow, 0), max(ow, 0) + min(kw, 3))
            yd = slice(max(-oh, 0), max(-oh, 0) + min(kh, 3))
            xd = slice(max(-ow, 0), max(-ow, 0) + min(kw, 3))
            w3[:, :, yd, xd] = w[:, :, ys, xs]
            self.conv1.weight.copy_(w3)
            if conv.bias is not None:
                self.conv1.bias.copy_(conv.bias.detach().cpu())  # type: ignore[union-attr]
            else:
                self.conv1.bias.zero_()  # type: ignore[union-attr]
            ident = torch.zeros_like(self.conv2.weight)
            per_group = ident.shape[1]
            for c in range(ident.shape[0]):
                ident[c, c % per_group, 1, 1] = 1.0
            self.conv2.weight.copy_(ident)
            self.conv2.bias.zero_()  # type: ignore[union-attr]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Output ``(h, w)`` of the replaced convolution for an input ``height x width``."""
        return _output_size(self.geometry, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map the convolution's input ``(B, C_in, H, W)`` to ``(B, C_out, h, w)``."""
        y = self.conv1(x)
        size = self.output_size(int(x.shape[-2]), int(x.shape[-1]))
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        out: torch.Tensor = self.conv2(y)
        return out


def _key(name: str) -> str:
    return name.replace(".", "__")


class SurrogateSet(nn.Module):
    """The surrogates of one network, by the module path of the convolution they replace.

    Parameters
    ----------
    convs
        ``(name, conv)`` pairs, e.g. from :func:`surrogate_targets`.
    warm_start
        See :class:`BilinearSurrogate`.
    """

    def __init__(self, convs: Sequence[tuple[str, nn.Conv2d]], *,
                 warm_start: bool = True) -> None:
        super().__init__()
        self.names: tuple[str, ...] = tuple(n for n, _ in convs)
        keys = [_key(n) for n in self.names]
        if len(set(keys)) != len(keys):
            raise SaliencyUnsupportedError(f"convolution names collide: {list(self.names)}")
        self.surrogates = nn.ModuleDict(
            {_key(n): BilinearSurrogate(c, warm_start=warm_start) for n, c in convs})

    def __getitem__(self, name: str) -> BilinearSurrogate:
        """The surrogate of convolution ``name``."""
        mod = self.surrogates[_key(name)]
        assert isinstance(mod, BilinearSurrogate)
        return mod

    def items(self) -> list[tuple[str, BilinearSurrogate]]:
        """``(conv name, surrogate)`` in the order of :attr:`names`."""
        return [(n, self[n]) for n in self.names]

    @classmethod
    def for_module(cls, module: nn.Module, input_size: int, *,
                   warm_start: bool = True) -> SurrogateSet:
        """Fresh (untrained) surrogates for every convolution :func:`surrogate_targets` finds."""
        return cls(surrogate_targets(module, input_size), warm_start=warm_start)


def surrogate_targets(module: nn.Module, input_size: int) -> list[tuple[str, nn.Conv2d]]:
    """The strided convolutions a bilinear surrogate replaces.

    Every ``nn.Conv2d`` with a square stride >= 2 (the hooks' discovery,
    :func:`~wsi_saliency.saliency.hooks.strided_convs`) that runs in a forward pass at
    ``input_size``, except the stem (the first convolution to run).

    Parameters
    ----------
    module
        The network (eval mode).
    input_size
        Side of the square input image.

    Returns
    -------
    list of (str, nn.Conv2d)
        In registration order.

    Raises
    ------
    SaliencyUnsupportedError
        A strided convolution runs more than once per forward pass (named), or there is
        no strided convolution after the stem.
    """
    infos = trace_layers(module, input_size)
    mods = dict(module.named_modules())
    convs = [i for i in infos if isinstance(mods.get(i.name), nn.Conv2d)]
    stem = min(convs, key=lambda i: i.start).name if convs else None
    calls = {i.name: i.calls for i in infos}
    out: list[tuple[str, nn.Conv2d]] = []
    for name, conv in strided_convs(module):
        if name == stem or calls.get(name, 0) == 0:
            continue
        if calls[name] > 1:
            raise SaliencyUnsupportedError(
                f"strided convolution {name!r} runs {calls[name]} times per forward pass (a "
                "shared module); a bilinear surrogate needs each to run once; use smoothing "
                "'backward-hook'")
        out.append((name, conv))
    if not out:
        raise SaliencyUnsupportedError(
            "the network has no strided convolution after the stem: nothing for a bilinear "
            "surrogate to replace; use smoothing 'backward-hook' or 'none'")
    return out


def _replace_output(surrogate: nn.Module) -> Any:
    def hook(_m: nn.Module, args: tuple[Any, ...], _out: Any) -> Any:
        return surrogate(args[0])

    return hook


def register_surrogates(module: nn.Module, surrogates: SurrogateSet) -> list[RemovableHandle]:
    """Make every replaced convolution of ``module`` return its surrogate's output.

    Prefer :func:`surrogates_substituted`, which removes the hooks. The caller owns the
    returned handles and must ``remove()`` each (in ``finally``).

    Parameters
    ----------
    module
        The network the surrogates were built for.
    surrogates
        The surrogates (on the network's device).

    Returns
    -------
    list of RemovableHandle
        One forward hook per replaced convolution.

    Raises
    ------
    InvalidModelError
        A surrogate names a convolution the network does not have.
    """
    mods = dict(module.named_modules())
    handles: list[RemovableHandle] = []
    try:
        for name, surrogate in surrogates.items():
            conv = mods.get(name)
            if not isinstance(conv, nn.Conv2d):
                raise InvalidModelError(
                    f"the surrogate replaces {name!r}, which is not a convolution of this "
                    "network; train a surrogate for this model")
            handles.append(conv.register_forward_hook(_replace_output(surrogate)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


@contextmanager
def surrogates_substituted(module: nn.Module, surrogates: SurrogateSet) -> Iterator[None]:
    """Context manager: the surrogates stand in for their convolutions inside the block.

    The hooks are removed when the block exits, also on error.

    Parameters
    ----------
    module, surrogates
        See :func:`register_surrogates`.
    """
    handles = register_surrogates(module, surrogates)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_conv_io(
    module: nn.Module, names: Sequence[str]
) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Context manager: record ``(input, output)`` of the named modules, detached.

    Parameters
    ----------
    module
        The network.
    names
        Module paths (the replaced convolutions).

    Yields
    ------
    dict
        ``{name: (input, output)}``, filled by each forward pass inside the block; the
        hooks are removed when the block exits.
    """
    got: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    mods = dict(module.named_modules())
    handles = []

    def hook(name: str) -> Any:
        def fn(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            got[name] = (args[0].detach(), out.detach())

        return fn

    try:
        for n in names:
            handles.append(mods[n].register_forward_hook(hook(n)))
        yield got
    finally:
        for h in handles:
            h.remove()


def save_surrogates(
    surrogates: SurrogateSet, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write the surrogates' weights as safetensors (layer list in the metadata)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in surrogates.state_dict().items()}
    meta = {"format": SURROGATE_FORMAT, "layers": json.dumps(list(surrogates.names))}
    meta.update(metadata or {})
    save_file(state, str(path), metadata=meta)


def load_surrogates(path: str | Path, module: nn.Module, input_size: int) -> SurrogateSet:
    """Read ``surrogate.safetensors`` for ``module``.

    Parameters
    ----------
    path
        The file written by :func:`save_surrogates`.
    module
        The network (the surrogates are built for its strided convolutions).
    input_size
        The network's input side.

    Returns
    -------
    SurrogateSet
        On the CPU, eval mode, parameters frozen.

    Raises
    ------
    InvalidModelError
        The file is not a surrogate file or does not fit the network.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(p))
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidModelError(f"{p}: cannot read the surrogate weights ({exc})") from exc
    if meta.get("format") != SURROGATE_FORMAT:
        raise InvalidModelError(f"{p}: not a bilinear surrogate file (format "
                                f"{meta.get('format')!r}); train one with 'wsi-saliency "
                                "surrogate'")
    surrogates = SurrogateSet.for_module(module, input_size)
    saved = json.loads(meta.get("layers", "[]"))
    if list(surrogates.names) != saved:
        raise InvalidModelError(
            f"{p}: the surrogate replaces {saved} but this network's strided convolutions "
            f"are {list(surrogates.names)}; train a surrogate for this model")
    try:
        surrogates.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InvalidModelError(f"{p}: surrogate weights do not fit this network ({first}); "
                                "train a surrogate for this model") from exc
    surrogates.eval()
    for q in surrogates.parameters():
        q.requires_grad_(False)
    return surrogates


@dataclass
class TrainResult:
    """Trained surrogates and how training went.

    Parameters
    ----------
    surrogates
        On the CPU, eval mode.
    step_losses
        Loss of every optimiser step (sum over layers of the mean L1).
    epoch_losses
        Mean step loss of every epoch.
    seconds
        Training time (summed over resumed sessions; sampling excluded).
    device, precision
        Where and how it ran.
    resumed
        True when training continued from a checkpoint.
    """

    surrogates: SurrogateSet
    step_losses: list[float]
    epoch_losses: list[float]
    seconds: float
    device: str
    precision: str
    resumed: bool = False
