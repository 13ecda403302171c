"""Hidden-layer saliency with hook-smoothed strided convolutions.

:class:`SaliencyEngine` turns batches of uint8 tiles into class probabilities and raw
saliency maps at a chosen layer (Smooth Deep Saliency, Herdt et al., arXiv 2404.02282);
:mod:`~wsi_saliency.saliency.hooks` holds the smoothing hooks,
:func:`total_variation` the paper's smoothness metric, :func:`seam_ratio` whether a
stitched map shows the tile grid, and :func:`list_layers` the
candidate layers of a model.
"""

from __future__ import annotations

from wsi_saliency.saliency.engine import SaliencyEngine, resolve_device
from wsi_saliency.saliency.hooks import (
    SMOOTHING_MODES,
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
from wsi_saliency.saliency.methods import METHODS
from wsi_saliency.saliency.metrics import total_variation, tv_reduction
from wsi_saliency.saliency.seams import SeamRatio, seam_ratio

__all__ = [
    "METHODS",
    "SMOOTHING_MODES",
    "LayerInfo",
    "SaliencyEngine",
    "SeamRatio",
    "SmoothGradient",
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
