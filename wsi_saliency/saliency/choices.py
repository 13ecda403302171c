"""The saliency methods and smoothing modes by name (no PyTorch import here).

Each is defined once, as a ``Literal`` type and the tuple of its values; the
configuration (:mod:`wsi_saliency.config`), the command line and the engine all take
them from here.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "HOOK_SMOOTHINGS",
    "METHODS",
    "PRECISIONS",
    "RUN_METHODS",
    "TRAIN_PRECISIONS",
    "SMOOTHING_MODES",
    "HookSmoothing",
    "Method",
    "Precision",
    "RunMethod",
    "Smoothing",
]

Method = Literal[
    "gradient",
    "gradient-x-activation",
    "integrated-gradients",
    "deeplift",
    "grad-cam",
]
#: Saliency methods of the engine.
METHODS: tuple[Method, ...] = get_args(Method)

#: ``model.method``: a saliency method, or ``"none"`` for prediction only (probabilities,
#: tiles, GeoJSON and probability heatmaps; no backward pass, no saliency outputs).
RunMethod = Literal[Method, "none"]
#: Accepted values of ``model.method``.
RUN_METHODS: tuple[RunMethod, ...] = get_args(RunMethod)

#: Smoothing done by hooks on the strided convolutions (:mod:`wsi_saliency.saliency.hooks`).
HookSmoothing = Literal["none", "backward-hook", "forward-hook"]
HOOK_SMOOTHINGS: tuple[HookSmoothing, ...] = get_args(HookSmoothing)

#: ``model.smoothing``: the hooks' modes, or ``"bilinear"`` (the model folder's trained
#: surrogates stand in for the strided convolutions; :mod:`wsi_saliency.saliency.surrogate`).
Smoothing = Literal[HookSmoothing, "bilinear"]
#: Accepted values of ``smoothing`` (``model.smoothing``).
SMOOTHING_MODES: tuple[Smoothing, ...] = get_args(Smoothing)

#: Numeric precision of the network (``inference.precision``); what ``auto`` picks is
#: :func:`wsi_saliency.saliency.precision.resolve_precision`'s rule.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
#: ``wsi-saliency surrogate --precision``: the same names less ``fp16`` (training has no
#: loss scaling).
TRAIN_PRECISIONS: tuple[Precision, ...] = tuple(p for p in PRECISIONS if p != "fp16")
