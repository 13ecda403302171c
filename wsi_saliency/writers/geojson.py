"""``tiles.geojson`` and ``regions.geojson``: QuPath-importable FeatureCollections.

Both are in **level-0 pixel** coordinates (x right, y down, origin at the slide's top-left
corner), which is what QuPath's *File > Import objects* expects. Every feature carries
``"type": "Feature"``, a deterministic UUID ``id``, a ``geometry`` and
``properties.objectType`` (``"detection"`` for tiles, ``"annotation"`` for regions) plus
a ``classification`` ``{name, color: [r, g, b]}``. Output is byte-identical on re-runs:
fixed key order, UUIDs derived from ``id_seed`` and the tile / region position, numbers
rounded to fixed precision.

* ``tiles.geojson``: one rectangle per tile that was added to the stitcher, classified by
  its top class, ``measurements`` = ``prob_<class>`` for every class, ``saliency_mean``,
  ``saliency_max``, ``saliency_positive_fraction`` and ``tissue_fraction``.
* ``regions.geojson``: connected regions where the tumour probability heatmap is
  ``>= threshold``, traced exactly along heatmap pixel edges (union of row runs with
  shapely), holes kept, one Polygon annotation per region with its area in um^2.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from wsi_saliency.errors import OutputError
from wsi_saliency.stitch import StitchedHeatmaps
from wsi_saliency.writers._common import class_colors, clean_float, tile_boxes

__all__ = [
    "REGIONS_FILENAME",
    "TILES_FILENAME",
    "tumour_regions",
    "write_regions_geojson",
    "write_tiles_geojson",
]

#: File names downstream pipelines rely on.
TILES_FILENAME = "tiles.geojson"
REGIONS_FILENAME = "regions.geojson"

# Fixed uuid5 namespace of wsi_saliency object ids (never change: ids must stay stable)
_NAMESPACE = uuid.UUID("6b0f3c1e-5f0a-5d7c-9a52-2f1f3e9d4c11")


def _write_collection(path: Path, features: Iterable[dict[str, Any]]) -> Path:
    """Stream a FeatureCollection to ``path``, one feature per line."""
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write('{"type":"FeatureCollection","features":[')
            first = True
            for feat in features:
                fh.write("\n" if first else ",\n")
                fh.write(json.dumps(feat, separators=(",", ":"), allow_nan=False))
                first = False
            fh.write("\n]}\n")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    return Path(path)


def _tile_features(heatmaps: StitchedHeatmaps, id_seed: str) -> Iterator[dict[str, Any]]:
    grid = heatmaps.grid
    stats = heatmaps.tiles
    names = heatmaps.class_names
    colors = class_colors(names, heatmaps.tumor_class)
    boxes = tile_boxes(grid)
    done = np.flatnonzero(stats.done)
    with_saliency = heatmaps.has_saliency
    for k in done.tolist():
        x0, y0, x1, y1 = (int(v) for v in boxes[k])
        probs = stats.probabilities[k]
        top = int(np.argmax(probs))
        measurements: dict[str, float | None] = {
            f"prob_{n}": clean_float(probs[i]) for i, n in enumerate(names)
        }
        if with_saliency:
            measurements["saliency_mean"] = clean_float(stats.saliency_mean[k])
            measurements["saliency_max"] = clean_float(stats.saliency_max[k])
            measurements["saliency_positive_fraction"] = clean_float(
                stats.saliency_positive_fraction[k]
            )
        measurements["tissue_fraction"] = clean_float(grid.tissue_fraction[k])
        yield {
            "type": "Feature",
            "id": str(uuid.uuid5(_NAMESPACE, f"{id_seed}/tile/{k}/{x0}/{y0}")),
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            },
            "properties": {
                "objectType": "detection",
                "name": f"tile {k}",
                "classification": {"name": names[top], "color": list(colors[top])},
                "measurements": measurements,
            },
        }


def write_tiles_geojson(path: Path, heatmaps: StitchedHeatmaps, *, id_seed: str = "") -> Path:
    """Write one QuPath detection per stitched tile.

    Parameters
    ----------
    path
        Target file, normally ``<out>/tiles.geojson``.
    heatmaps
        Output of :meth:`wsi_saliency.stitch.Stitcher.finalize` (its ``tiles`` and
        ``grid``).
    id_seed
        Mixed into every feature UUID (pass the slide stem so ids differ between slides).

    Returns
    -------
    Path
        ``path``.
    """
    return _write_collection(Path(path), _tile_features(heatmaps, id_seed))


def _row_runs(band: npt.NDArray[np.bool_], y_offset: int) -> shapely.Geometry:
    """Union of the horizontal runs of True in ``band`` (heatmap pixel units)."""
    padded = np.zeros((band.shape[0], band.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = band
    d = np.diff(padded, axis=1)
    sr, sc = np.nonzero(d == 1)
    _, ec = np.nonzero(d == -1)  # same row-major order as the starts
    if sr.size == 0:
        return shapely.Polygon()
    boxes = shapely.box(sc, sr + y_offset, ec, sr + y_offset + 1)
    return shapely.union_all(boxes)


def tumour_regions(
    heatmaps: StitchedHeatmaps, *, threshold: float = 0.5, band_rows: int | None = None
) -> list[Polygon]:
    """Polygons (level-0 px) of the regions where tumour probability ``>= threshold``.

    The mask is read band by band from the heatmap's channel 0; each band's row runs are
    unioned, then the bands. Vertices lie exactly on heatmap pixel edges scaled by
    ``heatmaps.downsample`` (no offset). NaN (uncovered) pixels are never tumour.

    Parameters
    ----------
    heatmaps
        Output of :meth:`wsi_saliency.stitch.Stitcher.finalize`.
    threshold
        Probability at or above which a pixel is tumour.
    band_rows
        Rows read at a time (default: the heatmap chunk size).

    Returns
    -------
    list of shapely.Polygon
        Valid polygons with holes, sorted by (top, left, -area).
    """
    h, w = heatmaps.shape
    step = int(band_rows or heatmaps.chunk_size)
    parts: list[shapely.Geometry] = []
    for y0 in range(0, h, step):
        prob = np.asarray(heatmaps.heatmap[0, y0 : min(y0 + step, h), :])
        with np.errstate(invalid="ignore"):
            band = prob >= threshold
        if band.any():
            parts.append(_row_runs(band, y0))
    if not parts:
        return []
    merged = shapely.union_all(parts)
    polys = [g for g in shapely.get_parts(merged) if isinstance(g, Polygon) and not g.is_empty]
    sx, sy = heatmaps.downsample
    scale = np.array([sx, sy])
    out = []
    for poly in polys:
        scaled = shapely.transform(poly, lambda c: c * scale)
        out.append(orient(shapely.normalize(scaled), sign=1.0))
    out.sort(key=lambda g: (g.bounds[1], g.bounds[0], -g.area))
    return out


def _ring(coords: Any) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in coords]


def write_regions_geojson(
    path: Path,
    heatmaps: StitchedHeatmaps,
    *,
    threshold: float = 0.5,
    id_seed: str = "",
) -> Path:
    """Write tumour regions as QuPath annotations (Polygons with holes, level-0 px).

    Parameters
    ----------
    path
        Target file, normally ``<out>/regions.geojson``.
    heatmaps
        Output of :meth:`wsi_saliency.stitch.Stitcher.finalize`.
    threshold
        Tumour probability at or above which a heatmap pixel belongs to a region.
    id_seed
        Mixed into every feature UUID (pass the slide stem).

    Returns
    -------
    Path
        ``path``.
    """
    name = heatmaps.class_names[heatmaps.tumor_class]
    color = list(class_colors(heatmaps.class_names, heatmaps.tumor_class)[heatmaps.tumor_class])
    mpp = heatmaps.grid.mpp
    polys = tumour_regions(heatmaps, threshold=threshold)

    def features() -> Iterator[dict[str, Any]]:
        for n, poly in enumerate(polys, start=1):
            minx, miny = poly.bounds[0], poly.bounds[1]
            area_um2 = float(poly.area) * float(mpp.x) * float(mpp.y)
            yield {
                "type": "Feature",
                "id": str(
                    uuid.uuid5(
                        _NAMESPACE, f"{id_seed}/region/{threshold!r}/{minx:.3f}/{miny:.3f}/{n}"
                    )
                ),
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [_ring(poly.exterior.coords)]
                    + [_ring(r.coords) for r in poly.interiors],
                },
                "properties": {
                    "objectType": "annotation",
                    "name": f"{name} region {n}",
                    "classification": {"name": name, "color": color},
                    "isLocked": False,
                    "measurements": {
                        "area_um2": clean_float(area_um2),
                        "threshold": clean_float(threshold),
                    },
                },
            }

    return _write_collection(Path(path), features())
