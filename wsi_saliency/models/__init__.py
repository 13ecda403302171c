"""Tumour classifiers: model directories, architectures and the bundled demo model.

A model directory holds ``config.json`` (WSInfer's model config keys plus the optional
``tumor_class`` and ``saliency_layer``) and weights (``model.safetensors`` preferred).
:func:`load_model` turns it into a :class:`LoadedModel`; ``load_model(None)`` loads the
demo model shipped in :func:`demo_model_dir` (a toy trained on generated slides, not a
medical model). A model directory whose ``architecture`` is ``"file.py:callable"`` or
``"package.module:callable"`` runs its own code and loads only with ``trust_code=True``.
"""

from __future__ import annotations

from wsi_saliency.models.architectures import (
    ARCHITECTURES,
    DemoCNN,
    build_architecture,
    runs_model_code,
)
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
    "runs_model_code",
]
