"""Hidden-layer saliency with hook-smoothed strided convolutions.

:class:`SaliencyEngine` turns batches of uint8 tiles into class probabilities and raw
saliency maps at a chosen layer (Smooth Deep Saliency, Herdt et al., arXiv 2404.02282);
:mod:`~wsi_saliency.saliency.hooks` holds the smoothing hooks,
:func:`total_variation` the paper's smoothness metric, :func:`seam_ratio` whether a
stitched map shows the tile grid, and :func:`list_layers` the candidate layers of a model.

The names below are imported on first use (PEP 562), so that
:mod:`wsi_saliency.saliency.choices` (the method and smoothing names the configuration
validates against) can be imported without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsi_saliency.saliency.choices import METHODS, SMOOTHING_MODES, Method, Smoothing
    from wsi_saliency.saliency.engine import SaliencyEngine, resolve_device
    from wsi_saliency.saliency.hooks import (
        SmoothGradient,
        border_gain,
        box_average,
        register_smoothing_hooks,
        smoothing_hooks,
        strided_convs,
    )
    from wsi_saliency.saliency.layers import (
        LayerInfo,
        default_layer,
        get_layer,
        list_layers,
        trace_layers,
    )
    from wsi_saliency.saliency.metrics import total_variation, tv_reduction
    from wsi_saliency.saliency.seams import SeamRatio, seam_ratio

#: Public name -> the submodule defining it.
_SOURCES = {
    "METHODS": "choices",
    "SMOOTHING_MODES": "choices",
    "Method": "choices",
    "Smoothing": "choices",
    "SaliencyEngine": "engine",
    "resolve_device": "engine",
    "SmoothGradient": "hooks",
    "border_gain": "hooks",
    "SeamRatio": "seams",
    "seam_ratio": "seams",
    "box_average": "hooks",
    "register_smoothing_hooks": "hooks",
    "smoothing_hooks": "hooks",
    "strided_convs": "hooks",
    "LayerInfo": "layers",
    "default_layer": "layers",
    "get_layer": "layers",
    "list_layers": "layers",
    "trace_layers": "layers",
    "total_variation": "metrics",
    "tv_reduction": "metrics",
}

__all__ = [
    "METHODS",
    "SMOOTHING_MODES",
    "LayerInfo",
    "SeamRatio",
    "Method",
    "SaliencyEngine",
    "SmoothGradient",
    "Smoothing",
    "border_gain",
    "box_average",
    "default_layer",
    "get_layer",
    "list_layers",
    "register_smoothing_hooks",
    "resolve_device",
    "seam_ratio",
    "smoothing_hooks",
    "strided_convs",
    "total_variation",
    "trace_layers",
    "tv_reduction",
]


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first use."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{source}"), name)


def __dir__() -> list[str]:
    """The public names."""
    return sorted(__all__)
