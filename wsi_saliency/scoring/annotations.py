"""Lesion annotations for scoring: find each slide's file and read it into one geometry.

Formats (coordinates are level-0 pixels of the slide):

* ASAP / Camelyon16 XML (``.xml``) and NCRF JSON (``.json`` with ``positive`` /
  ``negative`` lists), read by :func:`wsi_saliency.roi.read_annotations`; exclusions
  (ASAP groups ``_2`` / ``Exclusion``, NCRF ``negative``) are cut out of the lesions;
* GeoJSON (``.geojson``, or ``.json`` with a ``type``), QuPath exports included: every
  Polygon / MultiPolygon is a lesion, except features whose QuPath classification (or
  ``name``) is an exclusion name (:data:`wsi_saliency.roi.ASAP_EXCLUSION_GROUPS`), which
  are cut out. Points and lines are ignored.

A file that parses but holds no lesion polygon (e.g. NCRF's ``Normal_*.json``) makes a
negative slide. An empty file, one that does not parse, or one whose coordinates fall
outside the slide is an :class:`~wsi_saliency.errors.AnnotationError` naming the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import shape as _shape

from wsi_saliency.errors import AnnotationError, ConfigError
from wsi_saliency.inputs import slide_stem
from wsi_saliency.roi import ASAP_EXCLUSION_GROUPS, read_annotations

__all__ = ["BOUNDS_TOLERANCE_PX", "Lesions", "annotation_path", "match_annotations", "read_lesions"]

log = logging.getLogger(__name__)

#: How far (level-0 px) an annotation vertex may lie outside the slide (rounding).
BOUNDS_TOLERANCE_PX = 1.0


@dataclass(frozen=True, eq=False)
class Lesions:
    """The lesions of one slide.

    Parameters
    ----------
    source
        The annotation file, or ``None`` for a slide without one (negative).
    geometry
        Lesion area in level-0 px (lesions minus exclusions); empty for a negative slide.
    """

    source: Path | None
    geometry: shapely.Geometry

    @property
    def is_tumour(self) -> bool:
        """Whether the slide has any lesion."""
        return not self.geometry.is_empty


def _exclusion_name(props: Any) -> bool:
    if not isinstance(props, dict):
        return False
    names: list[str] = []
    cls = props.get("classification")
    if isinstance(cls, dict):
        names.append(str(cls.get("name", "")))
    elif isinstance(cls, str):
        names.append(cls)
    if isinstance(props.get("name"), str):
        names.append(props["name"])
    return any(n.strip().lower() in ASAP_EXCLUSION_GROUPS for n in names)


def _walk_geojson(
    obj: Any, excluded: bool, pos: list[shapely.Geometry], neg: list[shapely.Geometry]
) -> None:
    if isinstance(obj, list):
        for o in obj:
            _walk_geojson(o, excluded, pos, neg)
        return
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    if kind == "FeatureCollection":
        _walk_geojson(obj.get("features", []), excluded, pos, neg)
    elif kind == "Feature":
        _walk_geojson(obj.get("geometry"), _exclusion_name(obj.get("properties")), pos, neg)
    elif kind == "GeometryCollection":
        _walk_geojson(obj.get("geometries", []), excluded, pos, neg)
    elif kind in ("Polygon", "MultiPolygon"):
        geom = shapely.make_valid(_shape(obj))
        (neg if excluded else pos).append(geom)


def _read_geojson(path: Path, data: Any) -> tuple[list[shapely.Geometry], list[shapely.Geometry]]:
    pos: list[shapely.Geometry] = []
    neg: list[shapely.Geometry] = []
    try:
        _walk_geojson(data, False, pos, neg)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise AnnotationError(f"{path}: malformed GeoJSON geometry ({exc})") from None
    return pos, neg


def _is_ncrf(data: Any) -> bool:
    return (
        isinstance(data, dict) and "type" not in data and bool({"positive", "negative"} & set(data))
    )


def read_lesions(path: str | Path, slide_dimensions: tuple[int, int]) -> Lesions:
    """Read the lesions of a slide of level-0 size ``slide_dimensions`` from ``path``.

    Parameters
    ----------
    path
        ASAP XML, NCRF JSON or GeoJSON file (level-0 px).
    slide_dimensions
        Level-0 ``(width, height)``; every vertex must lie inside (within
        :data:`BOUNDS_TOLERANCE_PX`).

    Returns
    -------
    Lesions

    Raises
    ------
    AnnotationError
        Missing, empty or malformed file, unknown suffix, or coordinates outside the slide.
    """
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{p}: cannot read the annotation file ({exc.strerror})") from None
    if not text.strip():
        raise AnnotationError(
            f"{p}: the annotation file is empty; delete it (a slide without annotations is "
            "scored as negative) or export the lesions again"
        )
    suffix = p.suffix.lower()
    pos: list[shapely.Geometry]
    neg: list[shapely.Geometry]
    try:
        if suffix == ".xml":
            ann = read_annotations(p)
            pos, neg = list(ann.positive), list(ann.negative)
        elif suffix in (".json", ".geojson"):
            try:
                data = json.loads(text.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise AnnotationError(f"{p}: not valid JSON ({exc})") from None
            if suffix == ".json" and _is_ncrf(data):
                ann = read_annotations(p)
                pos, neg = list(ann.positive), list(ann.negative)
            else:
                if not isinstance(data, (dict, list)):
                    raise AnnotationError(f"{p}: not GeoJSON (a {type(data).__name__} at the top)")
                pos, neg = _read_geojson(p, data)
        else:
            raise AnnotationError(
                f"{p}: unknown annotation format {suffix!r}; use ASAP XML (.xml), NCRF JSON "
                "(.json) or GeoJSON (.geojson)"
            )
    except ConfigError as exc:  # the roi parsers' errors already name the file
        raise AnnotationError(" ".join(str(exc).split())) from None
    _check_bounds(p, pos + neg, slide_dimensions)
    geom = shapely.union_all(pos) if pos else shapely.Polygon()
    if neg and not geom.is_empty:
        geom = shapely.difference(geom, shapely.union_all(neg))
    return Lesions(source=p, geometry=geom)


def _check_bounds(
    path: Path, geoms: Sequence[shapely.Geometry], dims: tuple[int, int]
) -> None:
    geoms = [g for g in geoms if not g.is_empty]
    if not geoms:
        return
    x0, y0, x1, y1 = (float(v) for v in shapely.total_bounds(geoms))
    w, h = dims
    t = BOUNDS_TOLERANCE_PX
    if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
        raise AnnotationError(
            f"{path}: annotations span x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f} but the slide "
            f"is {w} x {h} px; coordinates must be level-0 pixels of this slide (wrong file "
            "for the slide, or exported at another level or scale?)"
        )


def annotation_path(patterns: Sequence[str], slide_file: str, folder_name: str) -> Path | None:
    """The first existing file among ``patterns`` for a slide, or ``None``.

    ``{stem}`` is the slide file's stem, ``{name}`` its file name and ``{folder}`` the
    run's output folder name of the slide; relative patterns are relative to the
    current directory.
    """
    for pat in patterns:
        p = Path(
            pat.replace("{stem}", slide_stem(slide_file))
            .replace("{name}", slide_file)
            .replace("{folder}", folder_name)
        ).expanduser()
        if p.is_file():
            return p
    return None


def match_annotations(
    slides: Sequence[tuple[str, str]],
    patterns: Sequence[str],
    negatives: Sequence[str] | None = None,
) -> dict[str, Path | None]:
    """Match each slide to its annotation file (``None`` = negative slide).

    Parameters
    ----------
    slides
        ``(folder_name, slide_file)`` of every slide.
    patterns
        Annotation path patterns tried in order (``{stem}``, ``{name}``, ``{folder}``).
    negatives
        Slides known to be negative (folder names, slide stems or file names). When
        given, every slide must be either annotated or listed; listed slides must have
        no annotation file.

    Raises
    ------
    AnnotationError
        A listed negative has an annotation file, or (with ``negatives``) a slide is
        neither annotated nor listed, or a listed name matches no slide.
    """
    out: dict[str, Path | None] = {}
    neg = set(negatives) if negatives is not None else None
    seen: set[str] = set()
    unannotated: list[str] = []
    for folder, file in slides:
        path = annotation_path(patterns, file, folder)
        ids = {folder, slide_stem(file), file}
        listed = neg is not None and bool(ids & neg)
        if listed:
            seen |= ids & neg  # type: ignore[operator]
        if path is not None and listed:
            raise AnnotationError(
                f"{path}: slide {folder} is listed as negative but has this annotation file; "
                "remove it from the negatives list or the file"
            )
        if path is None and neg is not None and not listed:
            raise AnnotationError(
                f"slide {folder}: no annotation file ({', '.join(patterns)}) and not in the "
                "negatives list; add it to the list or provide its annotations"
            )
        if path is None and neg is None:
            unannotated.append(folder)
        out[folder] = path
    if neg is not None and neg - seen:
        raise AnnotationError(
            f"negatives list names slides not in the run: {', '.join(sorted(neg - seen))}"
        )
    if unannotated:
        log.info(
            "%d slide(s) without an annotation file, scored as negative: %s",
            len(unannotated), ", ".join(unannotated),
        )
    return out
