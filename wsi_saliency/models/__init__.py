"""Tumour classifiers: model directories, architectures and the bundled demo model.

A model directory holds ``config.json`` (WSInfer's model config keys plus the optional
``tumor_class`` and ``saliency_layer``) and weights (``model.safetensors`` preferred).
:func:`load_model` turns it into a :class:`LoadedModel`; ``load_model(None)`` loads the
demo model shipped in :func:`demo_model_dir` (a toy trained on generated slides, not a
medical model).
"""

from __future__ import annotations

from wsi_saliency.models.architectures import ARCHITECTURES, DemoCNN, build_architecture
from wsi_saliency.models.loader import LoadedModel, demo_model_dir, load_model
from wsi_saliency.models.spec import ModelSpec, parse_config, read_config

__all__ = [
    "ARCHITECTURES",
    "DemoCNN",
    "LoadedModel",
    "ModelSpec",
    "build_architecture",
    "demo_model_dir",
    "load_model",
    "parse_config",
    "read_config",
]
