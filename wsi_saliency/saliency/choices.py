"""The saliency methods and smoothing modes by name (no PyTorch import here).

Each is defined once, as a ``Literal`` type and the tuple of its values; the
configuration (:mod:`wsi_saliency.config`), the command line and the engine all take
them from here.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["METHODS", "SMOOTHING_MODES", "Method", "Smoothing"]

Method = Literal[
    "gradient",
    "gradient-x-activation",
    "integrated-gradients",
    "deeplift",
    "grad-cam",
]
#: Accepted values of ``method`` (``model.method``).
METHODS: tuple[Method, ...] = get_args(Method)

Smoothing = Literal["none", "backward-hook", "forward-hook"]
#: Accepted values of ``smoothing`` (``model.smoothing``).
SMOOTHING_MODES: tuple[Smoothing, ...] = get_args(Smoothing)
