"""``tiles.csv``: one row per stitched tile.

Columns, in order: ``tile`` (index in the grid), ``x``, ``y``, ``width``, ``height``
(level-0 px; the same boxes as ``tiles.geojson``), ``grid_row``, ``grid_col``,
``tissue_fraction``, ``prob_<class>`` for every class in model order, ``predicted_class``,
``saliency_mean``, ``saliency_max``, ``saliency_positive_fraction``. Floats are written
with 6 significant digits (``%.6g``), empty when not finite; lines end with ``\\n``; the
output is byte-identical on re-runs.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from wsi_saliency.errors import OutputError
from wsi_saliency.stitch import StitchedHeatmaps
from wsi_saliency.writers._common import tile_boxes

__all__ = ["FILENAME", "tile_table_columns", "write_tiles_csv"]

#: File name downstream pipelines rely on.
FILENAME = "tiles.csv"


def _fmt(v: float) -> str:
    f = float(v)
    return f"{f:.6g}" if math.isfinite(f) else ""


def tile_table_columns(
    class_names: tuple[str, ...] | list[str], *, saliency: bool = True
) -> list[str]:
    """Header of ``tiles.csv`` for the given classes (without the saliency columns when
    ``saliency`` is False, as for ``--method none``)."""
    columns = [
        "tile",
        "x",
        "y",
        "width",
        "height",
        "grid_row",
        "grid_col",
        "tissue_fraction",
        *(f"prob_{n}" for n in class_names),
        "predicted_class",
    ]
    if saliency:
        columns += ["saliency_mean", "saliency_max", "saliency_positive_fraction"]
    return columns


def write_tiles_csv(path: Path, heatmaps: StitchedHeatmaps) -> Path:
    """Write ``tiles.csv`` for every tile added to the stitcher, in grid index order.

    Parameters
    ----------
    path
        Target file, normally ``<out>/tiles.csv``.
    heatmaps
        Output of :meth:`wsi_saliency.stitch.Stitcher.finalize`.

    Returns
    -------
    Path
        ``path``.
    """
    grid = heatmaps.grid
    stats = heatmaps.tiles
    names = heatmaps.class_names
    boxes = tile_boxes(grid)
    try:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            wr = csv.writer(fh, lineterminator="\n")
            with_saliency = heatmaps.has_saliency
            wr.writerow(tile_table_columns(names, saliency=with_saliency))
            for k in np.flatnonzero(stats.done).tolist():
                x0, y0, x1, y1 = (int(v) for v in boxes[k])
                probs = stats.probabilities[k]
                sal = (
                    [
                        _fmt(stats.saliency_mean[k]),
                        _fmt(stats.saliency_max[k]),
                        _fmt(stats.saliency_positive_fraction[k]),
                    ]
                    if with_saliency
                    else []
                )
                wr.writerow(
                    [
                        k,
                        x0,
                        y0,
                        x1 - x0,
                        y1 - y0,
                        int(grid.rows[k]),
                        int(grid.cols[k]),
                        _fmt(grid.tissue_fraction[k]),
                        *(_fmt(p) for p in probs),
                        names[int(np.argmax(probs))],
                        *sal,
                    ]
                )
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    return Path(path)
