"""Writers of a slide's outputs (names fixed: downstream pipelines depend on them).

=====================  ==========================================================
file                   writer
=====================  ==========================================================
``heatmaps.ome.zarr``  :func:`~wsi_saliency.writers.ome_zarr.write_ome_zarr`
``probability.ome.tif``:func:`~wsi_saliency.writers.ome_tiff.write_heatmap_tiffs`
``saliency.ome.tif``   :func:`~wsi_saliency.writers.ome_tiff.write_heatmap_tiffs`
``tiles.geojson[.gz]`` :func:`~wsi_saliency.writers.geojson.write_tiles_geojson`
``regions.geojson[.gz]``:func:`~wsi_saliency.writers.geojson.write_regions_geojson`
``tiles.csv``          :func:`~wsi_saliency.writers.table.write_tiles_csv`
``overlay.png``        :func:`~wsi_saliency.writers.overlay.write_overlay`
``run.json``           :func:`~wsi_saliency.writers.run_meta.write_run_json`
=====================  ==========================================================

:func:`write_heatmap_outputs` writes everything but ``run.json`` in one call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from wsi_saliency.config import OutputConfig
from wsi_saliency.stitch import StitchedHeatmaps
from wsi_saliency.writers.geojson import (
    REGIONS_FILENAME,
    TILES_FILENAME,
    geojson_name,
    write_regions_geojson,
    write_tiles_geojson,
)
from wsi_saliency.writers.ome_tiff import (
    PROBABILITY_FILENAME,
    SALIENCY_FILENAME,
    write_heatmap_tiffs,
    write_ome_tiff,
)
from wsi_saliency.writers.ome_zarr import FILENAME as OME_ZARR_FILENAME
from wsi_saliency.writers.ome_zarr import write_ome_zarr
from wsi_saliency.writers.overlay import FILENAME as OVERLAY_FILENAME
from wsi_saliency.writers.overlay import SaliencyScaling, write_overlay
from wsi_saliency.writers.run_meta import FILENAME as RUN_JSON_FILENAME
from wsi_saliency.writers.run_meta import (
    collect_hardware,
    collect_versions,
    write_run_json,
)
from wsi_saliency.writers.table import FILENAME as CSV_FILENAME
from wsi_saliency.writers.table import write_tiles_csv

__all__ = [
    "CSV_FILENAME",
    "OME_ZARR_FILENAME",
    "OVERLAY_FILENAME",
    "PROBABILITY_FILENAME",
    "REGIONS_FILENAME",
    "RUN_JSON_FILENAME",
    "SALIENCY_FILENAME",
    "TILES_FILENAME",
    "SaliencyScaling",
    "collect_hardware",
    "collect_versions",
    "write_heatmap_outputs",
    "write_heatmap_tiffs",
    "write_ome_tiff",
    "write_ome_zarr",
    "write_overlay",
    "write_regions_geojson",
    "write_run_json",
    "write_tiles_csv",
    "write_tiles_geojson",
]


def write_heatmap_outputs(
    out_dir: Path,
    heatmaps: StitchedHeatmaps,
    *,
    thumbnail: npt.NDArray[np.uint8],
    thumbnail_downsample: float,
    output: OutputConfig | None = None,
    name: str = "",
) -> tuple[dict[str, Path], SaliencyScaling | None]:
    """Write every output except ``run.json`` into ``out_dir``.

    Parameters
    ----------
    out_dir
        The slide's output folder (exists).
    heatmaps
        Output of :meth:`wsi_saliency.stitch.Stitcher.finalize`.
    thumbnail, thumbnail_downsample
        RGB slide thumbnail and its level-0 downsample (for ``overlay.png``).
    output
        Threshold and saliency display range (defaults when None).
    name
        Slide stem: image name in the metadata and seed of the GeoJSON ids.

    Returns
    -------
    tuple
        ``({key: path}, saliency scaling used in overlay.png)``; keys are
        ``heatmaps``, ``probability``, ``saliency``, ``tiles_geojson``,
        ``regions_geojson``, ``tiles_csv``, ``overlay``. Heatmaps without saliency
        (``--method none``) give no ``saliency`` file and scaling None.
    """
    cfg = output or OutputConfig()
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    zpath = out_dir / OME_ZARR_FILENAME
    levels = write_ome_zarr(zpath, heatmaps, name=name or None, overwrite=True)
    paths["heatmaps"] = zpath
    paths.update(write_heatmap_tiffs(out_dir, heatmaps, levels=levels))
    gz = cfg.geojson_compression
    paths["tiles_geojson"] = write_tiles_geojson(
        out_dir / geojson_name(TILES_FILENAME, gz),
        heatmaps,
        id_seed=name,
        class_names=cfg.class_names,
        compression=gz,
    )
    paths["regions_geojson"] = write_regions_geojson(
        out_dir / geojson_name(REGIONS_FILENAME, gz),
        heatmaps,
        threshold=cfg.threshold,
        id_seed=name,
        class_names=cfg.class_names,
        compression=gz,
        min_region_um2=cfg.min_region_um2,
    )
    paths["tiles_csv"] = write_tiles_csv(out_dir / CSV_FILENAME, heatmaps)
    scaling = write_overlay(
        out_dir / OVERLAY_FILENAME,
        heatmaps,
        thumbnail,
        thumbnail_downsample,
        saliency_range=cfg.saliency_range,
        title=name or None,
    )
    paths["overlay"] = out_dir / OVERLAY_FILENAME
    return paths, scaling
