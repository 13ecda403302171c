"""Compatibility alias: the Dask runner now lives in :mod:`wsi_saliency.batch.dask`."""

from __future__ import annotations

from wsi_saliency.batch.dask import *  # noqa: F403 - the same public names
from wsi_saliency.batch.dask import __all__ as __all__
