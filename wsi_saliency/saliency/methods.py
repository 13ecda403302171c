"""Attribution methods at a hidden layer.

``gradient``
    ``dlogit_t / dA``: the plain layer gradient (the paper's main object).
``gradient-x-activation``
    ``A * dlogit_t / dA``.
``grad-cam``
    Baseline: ``ReLU(sum_c alpha_c A_c)`` with ``alpha_c`` the spatial mean of the
    gradient of channel ``c`` (non-negative by construction).
``integrated-gradients``
    Captum's :class:`~captum.attr.LayerIntegratedGradients` (Gauss-Legendre, ``n_steps``
    points) from the layer activation of an all-zero *normalised* input (the dataset-mean
    colour) to the tile's activation.
``deeplift``
    Captum's :class:`~captum.attr.LayerDeepLift` (rescale rule) with the same baseline.

The first three come from one forward and one backward pass (the engine's own pass);
the Captum methods need several forward passes and keep Captum's graph. All maps are
averaged over channels (grad-cam: summed, then ReLU), signed and at the layer's own
resolution.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from wsi_saliency.saliency.choices import METHODS

__all__ = [
    "CAPTUM_METHODS",
    "METHODS",
    "SINGLE_PASS_METHODS",
    "captum_layer_attribution",
    "channel_attribution",
    "reduce_channels",
]


SINGLE_PASS_METHODS: frozenset[str] = frozenset({"gradient", "gradient-x-activation", "grad-cam"})
CAPTUM_METHODS: frozenset[str] = frozenset({"integrated-gradients", "deeplift"})


def channel_attribution(method: str, grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Per-channel attribution ``(B, C, h, w)`` of a single-pass method.

    Parameters
    ----------
    method
        ``gradient``, ``gradient-x-activation`` or ``grad-cam``.
    grad
        ``dlogit_t / dA`` ``(B, C, h, w)``.
    act
        The layer activation ``A`` ``(B, C, h, w)``.
    """
    if method == "gradient":
        return grad
    if method == "gradient-x-activation":
        return grad * act
    if method == "grad-cam":
        return grad.mean(dim=(2, 3), keepdim=True) * act
    raise ValueError(f"{method!r} is not a single-pass method")


def reduce_channels(method: str, attr: torch.Tensor) -> torch.Tensor:
    """Collapse ``(B, C, h, w)`` attributions to maps ``(B, h, w)``.

    Channel mean for every method except ``grad-cam`` (``ReLU`` of the channel sum).
    """
    if method == "grad-cam":
        return torch.relu(attr.sum(dim=1))
    return attr.mean(dim=1)


@contextmanager
def _inplace_off(module: nn.Module) -> Iterator[None]:
    """Temporarily turn ``inplace`` off on every submodule that has it (Captum needs it)."""
    changed: list[nn.Module] = []
    try:
        for m in module.modules():
            if getattr(m, "inplace", None) is True:
                m.inplace = False  # type: ignore[assignment]
                changed.append(m)
        yield
    finally:
        for m in changed:
            m.inplace = True  # type: ignore[assignment]


def captum_layer_attribution(
    method: str,
    module: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    target: int,
    *,
    n_steps: int = 16,
) -> torch.Tensor:
    """Layer attribution ``(B, C, h, w)`` by Captum's integrated gradients or DeepLift.

    Parameters
    ----------
    method
        ``integrated-gradients`` or ``deeplift``.
    module
        The network (eval mode).
    layer
        The explained submodule.
    x
        Normalised input ``(B, 3, S, S)``; the baseline is ``zeros_like(x)``.
    target
        Explained class index.
    n_steps
        Integration points of integrated gradients.

    Returns
    -------
    torch.Tensor
        Attributions with the layer output's shape.
    """
    from captum.attr import LayerDeepLift, LayerIntegratedGradients

    baseline = torch.zeros_like(x)
    x = x.detach().clone().requires_grad_(True)  # Captum hooks the input tensor
    with _inplace_off(module):
        if method == "integrated-gradients":
            lig = LayerIntegratedGradients(module, layer, multiply_by_inputs=True)
            attr = lig.attribute(
                x,
                baselines=baseline,
                target=target,
                n_steps=n_steps,
                method="gausslegendre",
                internal_batch_size=max(1, x.shape[0]) * min(n_steps, 4),
            )
        elif method == "deeplift":
            ldl = LayerDeepLift(module, layer, multiply_by_inputs=True)
            attr = ldl.attribute(x, baselines=baseline, target=target)
        else:
            raise ValueError(f"{method!r} is not a Captum method")
    if isinstance(attr, tuple):
        attr = attr[0]
    out: torch.Tensor = attr.detach()
    return out
