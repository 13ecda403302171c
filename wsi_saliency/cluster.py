"""Compatibility alias: the Dask runner now lives in :mod:`wsi_saliency.batch.dask`."""

from __future__ import annotations

from wsi_saliency.batch.dask import (
    PLUGIN_NAME,
    ModelCache,
    ModelRef,
    connect,
    gpu_for_worker,
    require_distributed,
    run_batch_on_cluster,
)

__all__ = [
    "PLUGIN_NAME",
    "ModelCache",
    "ModelRef",
    "connect",
    "gpu_for_worker",
    "require_distributed",
    "run_batch_on_cluster",
]
