"""Slides with planted, annotated lesions, and annotation writers.

For tests, benchmarks and a quick check of the scoring: :func:`planted_slide` writes a
synthetic slide (the project's tissue and tumour texture, :mod:`wsi_saliency.synthetic`)
whose tumour is a given lesion geometry (e.g. official Camelyon16 polygons, optionally
shrunk about their centre so the slide stays small), and returns the lesion geometry in
the new slide's level-0 pixels. The annotation writers put such a geometry into any of
the formats :func:`~wsi_saliency.scoring.annotations.read_lesions` reads.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import shapely
import shapely.affinity

from wsi_saliency import synthetic

__all__ = ["planted_slide", "write_asap_xml", "write_geojson", "write_ncrf_json"]


def _polygons(geom: shapely.Geometry) -> list[shapely.Polygon]:
    return [g for g in shapely.get_parts(geom) if isinstance(g, shapely.Polygon) and not g.is_empty]


def planted_slide(
    lesions: shapely.Geometry,
    path: str | Path,
    *,
    mpp: float = 0.243,
    scale: float = 1.0,
    margin_um: float = 150.0,
    size: tuple[int, int] | None = None,
    seed: int = 16,
    kind: str = "tiff",
) -> tuple[Path, shapely.Geometry]:
    """Write a slide whose tumour is ``lesions`` and return it with the planted lesions.

    Parameters
    ----------
    lesions
        Lesion geometry in level-0 px of its original slide (empty: a negative slide of
        ``size``).
    path
        Slide file to write.
    mpp
        Spacing of the new slide (um/px).
    scale
        Shrink factor applied to the lesions (about the origin) before planting.
    margin_um
        Normal tissue around the lesions' bounding box; the slide is cropped to it.
    size
        ``(width, height)`` for a negative slide (required when ``lesions`` is empty).
    seed
        Texture seed.
    kind
        ``"tiff"`` (generic tiled TIFF, spacing in resolution tags) or ``"svs"``.

    Returns
    -------
    (Path, shapely.Geometry)
        The slide and its lesions in its own level-0 px.
    """
    margin = margin_um / mpp
    if lesions.is_empty:
        if size is None:
            raise ValueError("a slide without lesions needs a size")
        width, height = size
        local: shapely.Geometry = shapely.Polygon()
    else:
        geom = shapely.affinity.scale(lesions, xfact=scale, yfact=scale, origin=(0, 0))
        x0, y0, x1, y1 = geom.bounds
        ox, oy = math.floor(x0 - margin), math.floor(y0 - margin)
        width, height = math.ceil(x1 + margin) - ox, math.ceil(y1 + margin) - oy
        local = shapely.affinity.translate(geom, -ox, -oy)
    inset = 0.3 * margin
    tissue = ((inset, inset), (width - inset, inset), (width - inset, height - inset),
              (inset, height - inset))
    spec = synthetic.SyntheticSlide(
        width=int(width),
        height=int(height),
        mpp=mpp,
        tissue=(tissue,),
        tumour=tuple(
            tuple((float(x), float(y)) for x, y in p.exterior.coords) for p in _polygons(local)
        ),
        seed=seed,
    )
    return synthetic.write_slide(spec, Path(path), kind=kind), local


def write_asap_xml(geom: shapely.Geometry, path: str | Path, *, group: str = "Tumor") -> Path:
    """Write the exteriors of ``geom``'s polygons as ASAP / Camelyon16 XML (float coordinates)."""
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    for i, poly in enumerate(_polygons(geom)):
        a = ET.SubElement(anns, "Annotation", Name=f"Annotation {i}", Type="Polygon",
                          PartOfGroup=group, Color="#F4FA58")
        coords = ET.SubElement(a, "Coordinates")
        for k, (x, y) in enumerate(list(poly.exterior.coords)[:-1]):
            ET.SubElement(coords, "Coordinate", Order=str(k), X=f"{x:.4f}", Y=f"{y:.4f}")
    groups = ET.SubElement(root, "AnnotationGroups")
    ET.SubElement(groups, "Group", Name=group, PartOfGroup="None", Color="#64FE2E")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return Path(path)


def write_geojson(geom: shapely.Geometry, path: str | Path, *, classification: str = "Tumor") -> Path:
    """Write ``geom``'s polygons as a QuPath-style GeoJSON FeatureCollection of annotations."""
    feats = [
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(poly),
            "properties": {"objectType": "annotation", "classification": {"name": classification}},
        }
        for poly in _polygons(geom)
    ]
    Path(path).write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return Path(path)


def write_ncrf_json(geom: shapely.Geometry, path: str | Path) -> Path:
    """Write the exteriors of ``geom``'s polygons as NCRF JSON (``positive`` list)."""
    pos = [
        {"name": f"Annotation {i}", "vertices": [[x, y] for x, y in poly.exterior.coords]}
        for i, poly in enumerate(_polygons(geom))
    ]
    Path(path).write_text(json.dumps({"positive": pos, "negative": []}))
    return Path(path)
