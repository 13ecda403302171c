"""Regions of interest and lesion annotations.

* :func:`load_roi` reads a region-of-interest that restricts tiling: a mask image
  (PNG/TIFF/JPEG at any scale, spanning the whole slide; non-zero = inside), GeoJSON
  polygons in level-0 pixels (QuPath export, a FeatureCollection, a Feature or a bare
  geometry), or Camelyon16 annotations (ASAP XML, NCRF JSON; the lesions minus the
  exclusions). :meth:`Roi.rasterize` puts it on any mask grid.
* :func:`read_annotations` parses Camelyon16 lesion annotations - the NCRF JSON
  conversion (``{"positive": [...], "negative": [...]}``) and ASAP XML (float or
  integer coordinates) - into shapely polygons in level-0 pixels.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import shape as _shape
from skimage.draw import polygon as _draw_polygon

from wsi_saliency.errors import ConfigError

__all__ = [
    "Annotations",
    "Roi",
    "load_roi",
    "rasterize_geometry",
    "read_annotations",
]

#: File suffixes read as mask images.
MASK_SUFFIXES: Final[frozenset[str]] = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})
#: File suffixes read as GeoJSON.
GEOJSON_SUFFIXES: Final[frozenset[str]] = frozenset({".geojson", ".json"})
#: ASAP groups that are exclusions (holes) rather than lesions (Camelyon16 convention).
ASAP_EXCLUSION_GROUPS: Final[frozenset[str]] = frozenset({"_2", "exclusion", "none-tumor"})
#: Largest relative aspect-ratio difference tolerated between a mask image and its slide.
MASK_ASPECT_TOLERANCE: Final[float] = 0.05


def rasterize_geometry(
    geom: shapely.Geometry | None, shape: tuple[int, int], downsample: float
) -> npt.NDArray[np.bool_]:
    """Boolean mask of pixel centres inside ``geom`` (level-0 px).

    Pixel ``(r, c)`` tests level-0 point ``((c + 0.5) * ds, (r + 0.5) * ds)``; polygon
    holes are honoured.
    """
    out = np.zeros(shape, dtype=bool)
    if geom is None or geom.is_empty:
        return out
    polys = [g for g in shapely.get_parts(geom) if isinstance(g, shapely.Polygon)]
    for poly in polys:
        ext = _ring_mask(np.asarray(poly.exterior.coords), shape, downsample)
        for hole in poly.interiors:
            ext &= ~_ring_mask(np.asarray(hole.coords), shape, downsample)
        out |= ext
    return out


def _ring_mask(
    coords: npt.NDArray[np.float64], shape: tuple[int, int], downsample: float
) -> npt.NDArray[np.bool_]:
    m = np.zeros(shape, dtype=bool)
    cols = coords[:, 0] / downsample - 0.5
    rows = coords[:, 1] / downsample - 0.5
    rr, cc = _draw_polygon(rows, cols, shape=shape)
    m[rr, cc] = True
    return m


@dataclass(frozen=True, eq=False)
class Roi:
    """A region of interest over a slide.

    Parameters
    ----------
    source
        The file it came from.
    geometry
        Polygons in level-0 pixels (GeoJSON input), else ``None``.
    mask
        Boolean mask spanning the whole slide at any scale (image input), else ``None``.
    slide_dimensions
        Level-0 ``(width, height)`` of the slide the ROI belongs to.
    """

    source: str
    geometry: shapely.Geometry | None = None
    mask: npt.NDArray[np.bool_] | None = None
    slide_dimensions: tuple[int, int] = (0, 0)

    def rasterize(self, shape: tuple[int, int], downsample: float) -> npt.NDArray[np.bool_]:
        """The ROI on a grid of ``shape`` whose pixels are ``downsample`` level-0 px wide."""
        if self.geometry is not None:
            return rasterize_geometry(self.geometry, shape, downsample)
        assert self.mask is not None
        mh, mw = self.mask.shape
        w0, h0 = self.slide_dimensions
        sx, sy = w0 / mw, h0 / mh  # level-0 px per mask pixel
        cx = (np.arange(shape[1]) + 0.5) * downsample / sx
        cy = (np.arange(shape[0]) + 0.5) * downsample / sy
        ix = np.clip(np.floor(cx).astype(np.int64), 0, mw - 1)
        iy = np.clip(np.floor(cy).astype(np.int64), 0, mh - 1)
        out: npt.NDArray[np.bool_] = self.mask[iy[:, None], ix[None, :]]
        return out


def load_roi(path: str | Path, slide_dimensions: tuple[int, int]) -> Roi:
    """Read a region of interest for a slide of level-0 size ``slide_dimensions``.

    Accepted: a mask image (``.png``, ``.tif``, ... at any scale, covering the whole
    slide), GeoJSON polygons (``.geojson``/``.json``), and Camelyon16 lesion
    annotations - ASAP XML (``.xml``) or NCRF JSON (a ``.json`` holding
    ``positive``/``negative`` lists) - read with :func:`read_annotations`, whose
    tumour geometry (lesions minus exclusions) becomes the region. Polygons are in
    level-0 pixels.

    Raises
    ------
    ConfigError
        Missing or unreadable file, unknown suffix, no polygons, empty mask, or a mask
        whose aspect ratio does not match the slide.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"ROI file {p} does not exist; check tissue.roi (--set tissue.roi=... or the "
            "config; `tiles` has --roi)"
        )
    suffix = p.suffix.lower()
    if suffix == ".xml":
        return _annotation_roi(read_annotations(p), slide_dimensions)
    if suffix in GEOJSON_SUFFIXES:
        data = _read_json(p)
        if suffix == ".json" and _is_ncrf(data):
            return _annotation_roi(_read_ncrf(p, data), slide_dimensions)
        geom = _geojson_polygons(p, data)
        return Roi(source=str(p), geometry=geom, slide_dimensions=slide_dimensions)
    if suffix in MASK_SUFFIXES:
        mask = _read_mask_image(p)
        w0, h0 = slide_dimensions
        mh, mw = mask.shape
        if abs((mw / mh) / (w0 / h0) - 1) > MASK_ASPECT_TOLERANCE:
            raise ConfigError(
                f"ROI mask {p} is {mw}x{mh} px but the slide is {w0}x{h0} px (different "
                "aspect ratio); the mask must cover the whole slide at one scale"
            )
        if not mask.any():
            raise ConfigError(f"ROI mask {p} is empty (no non-zero pixel); draw the region in it")
        return Roi(source=str(p), mask=mask, slide_dimensions=slide_dimensions)
    raise ConfigError(
        f"ROI file {p} has an unknown type {suffix!r}; use a mask image (.png), GeoJSON "
        "(.geojson), ASAP XML (.xml) or NCRF JSON (.json)"
    )


def _is_ncrf(data: Any) -> bool:
    """An NCRF annotation JSON: an object with ``positive``/``negative`` and no GeoJSON type."""
    return (
        isinstance(data, dict) and "type" not in data and bool({"positive", "negative"} & set(data))
    )


def _annotation_roi(ann: Annotations, slide_dimensions: tuple[int, int]) -> Roi:
    geom = ann.tumour_geometry()
    if geom.is_empty:
        raise ConfigError(
            f"ROI file {ann.source} has no lesion polygon (after removing exclusions); "
            "annotate the region as a Tumor polygon or use another ROI"
        )
    return Roi(source=ann.source, geometry=geom, slide_dimensions=slide_dimensions)


def _read_mask_image(p: Path) -> npt.NDArray[np.bool_]:
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                a = np.asarray(im.convert("RGBA"))
                arr = (a[..., 3] > 0) & (a[..., :3].max(axis=2) > 0)
            else:
                arr = np.asarray(im.convert("L")) > 0
    except OSError as exc:
        raise ConfigError(f"ROI mask {p} cannot be read as an image ({exc})") from None
    return np.ascontiguousarray(arr, dtype=bool)


def _geojson_geometries(obj: Any) -> list[shapely.Geometry]:
    if isinstance(obj, list):
        return [g for o in obj for g in _geojson_geometries(o)]
    if not isinstance(obj, dict):
        return []
    kind = obj.get("type")
    if kind == "FeatureCollection":
        return _geojson_geometries(obj.get("features", []))
    if kind == "Feature":
        return _geojson_geometries(obj.get("geometry"))
    if kind == "GeometryCollection":
        return _geojson_geometries(obj.get("geometries", []))
    if kind in ("Polygon", "MultiPolygon"):
        return [shapely.make_valid(_shape(obj))]
    return []


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"ROI file {p} is not valid GeoJSON or NCRF JSON ({exc})") from None


def _geojson_polygons(p: Path, data: Any) -> shapely.Geometry:
    try:
        geoms = _geojson_geometries(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"ROI file {p} has a malformed geometry ({exc})") from None
    polys = [g for g in geoms if not g.is_empty]
    if not polys:
        raise ConfigError(
            f"ROI file {p} holds no Polygon/MultiPolygon; export the region as polygons "
            "in level-0 pixel coordinates"
        )
    geom = shapely.union_all(polys)
    return geom


@dataclass(frozen=True, eq=False)
class Annotations:
    """Lesion annotations of one slide in level-0 pixels.

    Parameters
    ----------
    source
        The file they came from.
    positive
        Lesion (tumour) polygons.
    negative
        Exclusion polygons (holes in lesions, or normal regions for NCRF normal slides).
    """

    source: str
    positive: tuple[shapely.Polygon, ...] = field(default_factory=tuple)
    negative: tuple[shapely.Polygon, ...] = field(default_factory=tuple)

    def tumour_geometry(self) -> shapely.Geometry:
        """Union of the positive polygons minus the union of the exclusions."""
        pos = shapely.union_all(list(self.positive)) if self.positive else shapely.Polygon()
        if self.negative:
            pos = shapely.difference(pos, shapely.union_all(list(self.negative)))
        return pos

    def bounds(self) -> tuple[float, float, float, float] | None:
        """``(xmin, ymin, xmax, ymax)`` of all polygons, or ``None`` when there are none."""
        geoms = list(self.positive) + list(self.negative)
        if not geoms:
            return None
        b = shapely.total_bounds(geoms)
        return float(b[0]), float(b[1]), float(b[2]), float(b[3])


def _polygon(vertices: Any, where: str) -> shapely.Polygon | None:
    try:
        pts = np.asarray(vertices, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: vertices are not numbers") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise ConfigError(f"{where}: vertices must be a list of [x, y] pairs")
    if len(pts) < 3:
        return None
    poly = shapely.Polygon(pts)
    if not poly.is_valid:
        fixed = shapely.make_valid(poly)
        parts = [g for g in shapely.get_parts(fixed) if isinstance(g, shapely.Polygon)]
        if not parts:
            return None
        poly = max(parts, key=lambda g: g.area)
    return poly if poly.area > 0 else None


def _read_ncrf(p: Path, data: Any) -> Annotations:
    if not isinstance(data, dict) or not ({"positive", "negative"} & set(data)):
        raise ConfigError(f"{p}: not an NCRF annotation JSON (needs 'positive'/'negative' lists)")
    out: dict[str, list[shapely.Polygon]] = {"positive": [], "negative": []}
    for key in ("positive", "negative"):
        for i, item in enumerate(data.get(key, []) or []):
            verts = item.get("vertices") if isinstance(item, dict) else item
            poly = _polygon(verts, f"{p} {key}[{i}]")
            if poly is not None:
                out[key].append(poly)
    return Annotations(str(p), tuple(out["positive"]), tuple(out["negative"]))


def _read_asap(p: Path) -> Annotations:
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ConfigError(f"{p}: not valid ASAP XML ({exc})") from None
    pos: list[shapely.Polygon] = []
    neg: list[shapely.Polygon] = []
    for ann in root.iter("Annotation"):
        if ann.get("Type", "Polygon").lower() not in ("polygon", "spline", "rectangle"):
            continue
        coords = []
        for c in sorted(ann.iter("Coordinate"), key=lambda e: float(e.get("Order", "0"))):
            try:
                coords.append((float(c.get("X", "nan")), float(c.get("Y", "nan"))))
            except ValueError:
                raise ConfigError(
                    f"{p}: annotation {ann.get('Name')!r} has a bad coordinate"
                ) from None
        poly = _polygon(coords, f"{p} annotation {ann.get('Name')!r}")
        if poly is None:
            continue
        group = (ann.get("PartOfGroup") or "").strip().lower()
        (neg if group in ASAP_EXCLUSION_GROUPS else pos).append(poly)
    return Annotations(str(p), tuple(pos), tuple(neg))


def read_annotations(path: str | Path) -> Annotations:
    """Parse Camelyon16 lesion annotations (NCRF JSON or ASAP XML).

    Coordinates are level-0 pixels; integer and float coordinates are both accepted.
    In ASAP XML, groups ``_2`` / ``Exclusion`` are exclusions, everything else
    (``Tumor``, ``_0``, ``_1``) is lesion.

    Raises
    ------
    ConfigError
        Missing file, unknown format, or malformed coordinates.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"annotation file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".xml":
        return _read_asap(p)
    if suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{p}: not valid JSON ({exc})") from None
        return _read_ncrf(p, data)
    raise ConfigError(f"{p}: unknown annotation format {suffix!r}; use NCRF .json or ASAP .xml")
