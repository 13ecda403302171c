"""``tiles.geojson`` and ``regions.geojson``: FeatureCollections every QuPath version imports.

Both are in **level-0 pixel** coordinates (x right, y down, origin at the slide's top-left
corner), which is what QuPath's *File > Import objects* expects. Every feature carries
``"type": "Feature"``, a deterministic UUID ``id``, a ``geometry`` and
``properties.objectType`` (``"detection"`` for tiles, ``"annotation"`` for regions) plus
a ``classification`` ``{name, color: [r, g, b]}``. Output is byte-identical on re-runs:
fixed key order, UUIDs derived from ``id_seed`` and the tile / region position, numbers
rounded to fixed precision.

What QuPath needs (checked with QuPath's own reader, ``PathIO.readObjects``, of 0.4.4 and
0.5.1):

* **No null, NaN or infinite measurement**: QuPath 0.4 aborts the whole import on one
  (0.5 drops it with a warning). A non-finite value is left out of ``measurements``
  (:func:`count_omitted_measurements` counts them; ``run.json`` records the count).
* **QuPath's built-in classes**: :func:`qupath_class_names` maps the tumour class to
  ``Tumor`` (and e.g. ``stroma`` to ``Stroma``) with QuPath's own colours, so a project
  does not get a second tumour class; ``output.class_names`` overrides the mapping.
* **Detections that do not overlap**: with overlap > 0 each tile's detection is its
  centre *stride cell* (``stride x stride`` tile px around the tile centre); these cells
  tile the grid exactly, so measurement maps and counts per annotation are right. The
  full tile outline is kept in ``properties.tile_box`` ``[x0, y0, x1, y1]``.
* **Compression**: ``compression="gzip"`` writes ``*.geojson.gz`` (QuPath reads it).

* ``tiles.geojson``: one detection per tile that was added to the stitcher, classified by
  its top class, ``measurements`` = ``prob_<class>`` for every class, ``saliency_mean``,
  ``saliency_max``, ``saliency_positive_fraction`` and ``tissue_fraction`` (4 significant
  digits; ``tiles.csv`` has 6).
* ``regions.geojson``: connected regions where the tumour probability heatmap is
  ``>= threshold``, traced exactly along heatmap pixel edges (union of row runs with
  shapely), holes kept, collinear vertices dropped (the area is unchanged), regions
  smaller than ``min_region_um2`` left out; one Polygon annotation per region with its
  area in um^2.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from wsi_saliency.errors import ConfigError, OutputError
from wsi_saliency.stitch import StitchedHeatmaps
from wsi_saliency.types import TileGrid
from wsi_saliency.writers._common import class_colors, clean_float, tile_boxes

__all__ = [
    "COMPRESSIONS",
    "QUPATH_BUILTIN_CLASSES",
    "REGIONS_FILENAME",
    "TILES_FILENAME",
    "count_omitted_measurements",
    "geojson_name",
    "qupath_class_colors",
    "qupath_class_names",
    "stride_cells",
    "tumour_regions",
    "write_regions_geojson",
    "write_tiles_geojson",
]

#: File names downstream pipelines rely on (``.gz`` is appended when gzip-compressed).
TILES_FILENAME = "tiles.geojson"
REGIONS_FILENAME = "regions.geojson"

#: Values of ``output.geojson_compression``.
COMPRESSIONS: tuple[str, ...] = ("none", "gzip")

#: QuPath's built-in classes and their colours (``PathClass.StandardPathClasses`` in
#: qupath-core 0.5.1; the same names and colours in 0.4.4's ``PathClassFactory``).
QUPATH_BUILTIN_CLASSES: Mapping[str, tuple[int, int, int]] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
    "Positive": (200, 50, 50),
    "Negative": (90, 90, 180),
}

# Model class names (lower case, '_' and '-' read as spaces) with a QuPath built-in
_BUILTIN_ALIASES: Mapping[str, str] = {
    "tumor": "Tumor",
    "tumour": "Tumor",
    "cancer": "Tumor",
    "stroma": "Stroma",
    "immune": "Immune cells",
    "immune cells": "Immune cells",
    "lymphocytes": "Immune cells",
    "necrosis": "Necrosis",
    "other": "Other",
    "ignore": "Ignore*",
    "background": "Ignore*",
}

# Significant digits of tile measurements (display and sorting in QuPath; tiles.csv keeps 6)
_TILE_DIGITS = 4

# Fixed uuid5 namespace of wsi_saliency object ids (never change: ids must stay stable)
_NAMESPACE = uuid.UUID("6b0f3c1e-5f0a-5d7c-9a52-2f1f3e9d4c11")


def qupath_class_names(
    class_names: Sequence[str],
    tumor_class: int,
    mapping: Mapping[str, str] | None = None,
) -> list[str]:
    """QuPath classification of every model class.

    Parameters
    ----------
    class_names
        The model's class names.
    tumor_class
        Index of the tumour class.
    mapping
        ``{model class: QuPath class}`` (``output.class_names``); classes it leaves out
        take the default.

    Returns
    -------
    list of str
        By default the tumour class becomes QuPath's built-in ``Tumor``, a class named like
        a built-in (``stroma``, ``immune``, ``necrosis``, ``other``, ``background`` ...)
        that built-in, any other class keeps its name.

    Raises
    ------
    ConfigError
        ``mapping`` names a class the model does not have, or two classes end up with the
        same QuPath class.
    """
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(class_names))
    if unknown:
        raise ConfigError(
            f"output.class_names: {unknown} are not classes of the model "
            f"(its classes: {list(class_names)})"
        )
    out: list[str] = []
    for i, name in enumerate(class_names):
        if name in mapping:
            q = str(mapping[name]).strip()
            if not q:
                raise ConfigError(f"output.class_names: the QuPath class of '{name}' is empty")
        elif i == tumor_class:
            q = "Tumor"
        else:
            q = _BUILTIN_ALIASES.get(name.lower().replace("_", " ").replace("-", " "), name)
        out.append(q)
    if len(set(out)) != len(out):
        raise ConfigError(
            f"output.class_names: model classes {list(class_names)} map to {out}; "
            "give every class its own QuPath class"
        )
    return out


def qupath_class_colors(
    qupath_names: Sequence[str], tumor_class: int
) -> list[tuple[int, int, int]]:
    """RGB of every class: QuPath's own colour for a built-in class, else the palette."""
    palette = class_colors(qupath_names, tumor_class)
    return [QUPATH_BUILTIN_CLASSES.get(n, palette[i]) for i, n in enumerate(qupath_names)]


def geojson_name(filename: str, compression: str) -> str:
    """``filename`` with ``.gz`` appended for gzip compression."""
    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"output.geojson_compression: unknown value '{compression}' "
            f"(choose from {', '.join(COMPRESSIONS)})"
        )
    return filename + ".gz" if compression == "gzip" else filename


def _write_collection(
    path: Path, features: Iterable[dict[str, Any]], compression: str = "none"
) -> Path:
    """Stream a FeatureCollection to ``path``, one feature per line (gzip if asked)."""
    geojson_name("", compression)  # validates
    try:
        with open(path, "wb") as raw:
            gz = (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
                if compression == "gzip"
                else None
            )
            with io.TextIOWrapper(
                gz if gz is not None else raw, encoding="utf-8", newline="\n"
            ) as fh:
                fh.write('{"type":"FeatureCollection","features":[')
                first = True
                for feat in features:
                    fh.write("\n" if first else ",\n")
                    fh.write(json.dumps(feat, separators=(",", ":"), allow_nan=False))
                    first = False
                fh.write("\n]}\n")
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc}") from exc
    return Path(path)


def _finite(measurements: Mapping[str, float], digits: int = 6) -> dict[str, float]:
    """The measurements with finite values, rounded; non-finite ones are left out."""
    out: dict[str, float] = {}
    for key, value in measurements.items():
        v = clean_float(value, digits)
        if v is not None:
            out[key] = v
    return out


def _tile_measurements(heatmaps: StitchedHeatmaps, k: int) -> dict[str, float]:
    stats = heatmaps.tiles
    m: dict[str, float] = {
        f"prob_{n}": float(stats.probabilities[k, i]) for i, n in enumerate(heatmaps.class_names)
    }
    if heatmaps.has_saliency:
        m["saliency_mean"] = float(stats.saliency_mean[k])
        m["saliency_max"] = float(stats.saliency_max[k])
        m["saliency_positive_fraction"] = float(stats.saliency_positive_fraction[k])
    m["tissue_fraction"] = float(heatmaps.grid.tissue_fraction[k])
    return m


def count_omitted_measurements(heatmaps: StitchedHeatmaps) -> int:
    """How many tile measurements :func:`write_tiles_geojson` leaves out as not finite."""
    done = np.flatnonzero(heatmaps.tiles.done)
    stats = heatmaps.tiles
    cols = [stats.probabilities[done], np.asarray(heatmaps.grid.tissue_fraction)[done, None]]
    if heatmaps.has_saliency:
        cols += [
            stats.saliency_mean[done, None],
            stats.saliency_max[done, None],
            stats.saliency_positive_fraction[done, None],
        ]
    return int(sum(int((~np.isfinite(np.asarray(c, dtype=np.float64))).sum()) for c in cols))


def stride_cells(grid: TileGrid) -> npt.NDArray[np.int64]:
    """Integer level-0 boxes ``(x0, y0, x1, y1)`` of each tile's centre stride cell.

    The cell of tile ``(r, c)`` spans ``c * stride + (tile_size - stride) / 2`` to that
    plus ``stride`` tile pixels (likewise in y), scaled by ``spacing / mpp`` and rounded
    with one rounding for every edge, so neighbouring cells share their edges exactly and
    never overlap. Without overlap a cell is the tile box.
    """
    if grid.stride >= grid.tile_size:
        return tile_boxes(grid)
    half = (grid.tile_size - grid.stride) / 2.0
    sp = float(grid.spacing)

    def edge(idx: npt.NDArray[np.int64], mpp: float, extra: int) -> npt.NDArray[np.int64]:
        pos = (idx.astype(np.float64) + extra) * grid.stride + half
        return np.round(pos * sp / mpp).astype(np.int64)

    out = np.empty((len(grid), 4), dtype=np.int64)
    out[:, 0] = edge(grid.cols, float(grid.mpp.x), 0)
    out[:, 1] = edge(grid.rows, float(grid.mpp.y), 0)
    out[:, 2] = edge(grid.cols, float(grid.mpp.x), 1)
    out[:, 3] = edge(grid.rows, float(grid.mpp.y), 1)
    return out


def _tile_features(
    heatmaps: StitchedHeatmaps, id_seed: str, qnames: Sequence[str]
) -> Iterator[dict[str, Any]]:
    grid = heatmaps.grid
    stats = heatmaps.tiles
    colors = qupath_class_colors(qnames, heatmaps.tumor_class)
    boxes = tile_boxes(grid)
    overlapping = grid.stride < grid.tile_size
    cells = stride_cells(grid) if overlapping else boxes
    done = np.flatnonzero(stats.done)
    for k in done.tolist():
        bx0, by0, bx1, by1 = (int(v) for v in boxes[k])
        x0, y0, x1, y1 = (int(v) for v in cells[k])
        probs = np.where(np.isfinite(stats.probabilities[k]), stats.probabilities[k], -np.inf)
        top = int(np.argmax(probs))
        props: dict[str, Any] = {"objectType": "detection"}
        if np.isfinite(probs[top]):
            props["classification"] = {"name": qnames[top], "color": list(colors[top])}
        if overlapping:
            props["tile_box"] = [bx0, by0, bx1, by1]
        props["measurements"] = _finite(_tile_measurements(heatmaps, k), _TILE_DIGITS)
        yield {
            "type": "Feature",
            "id": str(uuid.uuid5(_NAMESPACE, f"{id_seed}/tile/{k}/{bx0}/{by0}")),
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            },
            "properties": props,
        }


def write_tiles_geojson(
    path: Path,
    heatmaps: StitchedHeatmaps,
    *,
    id_seed: str = "",
    class_names: Mapping[str, str] | None = None,
    compression: str = "none",
) -> Path:
    """Write one QuPath detection per stitched tile.

    Parameters
    ----------
    path
        Target file, normally ``<out>/tiles.geojson`` (``tiles.geojson.gz`` with gzip).
    heatmaps
        Output of :meth:`wsi_saliency.stitch.Stitcher.finalize` (its ``tiles`` and
        ``grid``).
    id_seed
        Mixed into every feature UUID (pass the slide stem so ids differ between slides).
    class_names
        ``{model class: QuPath class}`` overrides (see :func:`qupath_class_names`).
    compression
        ``"none"`` or ``"gzip"``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        Bad ``class_names`` or ``compression``.
    OutputError
        ``path`` cannot be written (nothing is left behind).
    """
    qnames = qupath_class_names(heatmaps.class_names, heatmaps.tumor_class, class_names)
    return _write_collection(Path(path), _tile_features(heatmaps, id_seed, qnames), compression)


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
        out.append(orient(shapely.normalize(_drop_collinear(scaled)), sign=1.0))
    out.sort(key=lambda g: (g.bounds[1], g.bounds[0], -g.area))
    return out


def _drop_collinear(poly: Polygon) -> Polygon:
    """``poly`` without its collinear (and repeated) vertices; the area is unchanged.

    The traced outlines run along pixel edges, so every vertex that does not turn a corner
    is redundant. Douglas-Peucker with tolerance 0 removes exactly those; the result is
    kept only if it is valid and covers the same area (else the input is returned).
    """
    simple = shapely.simplify(poly, 0.0, preserve_topology=True)
    if (
        isinstance(simple, Polygon)
        and simple.is_valid
        and math.isclose(simple.area, poly.area, rel_tol=1e-12, abs_tol=1e-9)
        and shapely.symmetric_difference(simple, poly).area <= 1e-9 * max(poly.area, 1.0)
    ):
        return simple
    return poly


def _ring(coords: Any) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in coords]


def write_regions_geojson(
    path: Path,
    heatmaps: StitchedHeatmaps,
    *,
    threshold: float = 0.5,
    id_seed: str = "",
    class_names: Mapping[str, str] | None = None,
    compression: str = "none",
    min_region_um2: float = 0.0,
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
    class_names
        ``{model class: QuPath class}`` overrides (see :func:`qupath_class_names`).
    compression
        ``"none"`` or ``"gzip"``.
    min_region_um2
        Regions with a smaller area (holes subtracted) are left out.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        Bad ``class_names``, ``compression`` or ``min_region_um2``.
    OutputError
        ``path`` cannot be written (nothing is left behind).
    """
    if not (math.isfinite(min_region_um2) and min_region_um2 >= 0):
        raise ConfigError(f"output.min_region_um2: {min_region_um2} must be >= 0 (um^2)")
    qnames = qupath_class_names(heatmaps.class_names, heatmaps.tumor_class, class_names)
    name = qnames[heatmaps.tumor_class]
    color = list(qupath_class_colors(qnames, heatmaps.tumor_class)[heatmaps.tumor_class])
    mpp = heatmaps.grid.mpp
    um2_per_px = float(mpp.x) * float(mpp.y)
    polys = [
        p
        for p in tumour_regions(heatmaps, threshold=threshold)
        if float(p.area) * um2_per_px >= min_region_um2
    ]

    def features() -> Iterator[dict[str, Any]]:
        for n, poly in enumerate(polys, start=1):
            minx, miny = poly.bounds[0], poly.bounds[1]
            area_um2 = float(poly.area) * um2_per_px
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
                    "measurements": _finite({"area_um2": area_um2, "threshold": threshold}),
                },
            }

    return _write_collection(Path(path), features(), compression)
