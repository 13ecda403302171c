"""Regions of interest (mask images, GeoJSON) and Camelyon16 annotation parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from wsi_saliency.errors import ConfigError
from wsi_saliency.roi import load_roi, rasterize_geometry, read_annotations

CAMELYON = ("001", "002", "081", "093")


@pytest.mark.real_data
@pytest.mark.parametrize("num", CAMELYON)
def test_ncrf_json_and_asap_xml_agree(test_data_dir: Path, num: str) -> None:
    js = read_annotations(test_data_dir / "camelyon16" / "ncrf_json" / f"Tumor_{num}.json")
    xml = read_annotations(test_data_dir / "camelyon16" / "asap_xml" / f"tumor_{num}.xml")
    assert len(js.positive) == len(xml.positive) >= 1
    a, b = js.tumour_geometry(), xml.tumour_geometry()
    assert a.area > 0
    assert shapely.symmetric_difference(a, b).area < 1e-6 * a.area
    assert js.bounds() == xml.bounds()
    # level-0 pixel coordinates of a Camelyon16 slide (< 100k x 230k px)
    x0, y0, x1, y1 = js.bounds()  # type: ignore[misc]
    assert 0 <= x0 < x1 < 100_000 and 0 <= y0 < y1 < 230_000


@pytest.mark.real_data
def test_tumor_001_values(test_data_dir: Path) -> None:
    ann = read_annotations(test_data_dir / "camelyon16" / "ncrf_json" / "Tumor_001.json")
    assert len(ann.positive) == 2 and not ann.negative
    assert ann.bounds() == (69914.0, 122608.0, 73235.0, 134592.0)
    first = ann.positive[0]
    assert tuple(first.exterior.coords[0]) == (71924.0, 131761.0)


@pytest.mark.real_data
def test_ncrf_normal_regions_are_negative(test_data_dir: Path) -> None:
    ann = read_annotations(test_data_dir / "camelyon16" / "ncrf_json" / "Normal_001.json")
    assert not ann.positive and len(ann.negative) == 4
    assert ann.tumour_geometry().is_empty


def test_asap_float_coordinates_and_exclusions(tmp_path: Path) -> None:
    xml = tmp_path / "t.xml"
    xml.write_text(
        """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
 <Annotation Name="_0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58"><Coordinates>
  <Coordinate Order="0" X="100.25" Y="100.5" />
  <Coordinate Order="2" X="300.75" Y="300.5" />
  <Coordinate Order="1" X="300.75" Y="100.5" />
  <Coordinate Order="3" X="100.25" Y="300.5" />
 </Coordinates></Annotation>
 <Annotation Name="_1" Type="Polygon" PartOfGroup="_2" Color="#64FE2E"><Coordinates>
  <Coordinate Order="0" X="150" Y="150" /><Coordinate Order="1" X="200" Y="150" />
  <Coordinate Order="2" X="200" Y="200" /><Coordinate Order="3" X="150" Y="200" />
 </Coordinates></Annotation>
 <Annotation Name="dot" Type="Dot" PartOfGroup="Tumor"><Coordinates>
  <Coordinate Order="0" X="1" Y="1" /></Coordinates></Annotation>
</Annotations><AnnotationGroups /></ASAP_Annotations>"""
    )
    ann = read_annotations(xml)
    assert len(ann.positive) == 1 and len(ann.negative) == 1
    assert ann.positive[0].area == pytest.approx(200.5 * 200.0)  # Order respected
    assert ann.tumour_geometry().area == pytest.approx(200.5 * 200.0 - 50 * 50)


def test_bad_annotation_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_annotations(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"positive": [{"name": "a", "vertices": [[1, 2], ["x", 3], [4, 5]]}]}')
    with pytest.raises(ConfigError, match="bad.json"):
        read_annotations(bad)
    other = tmp_path / "other.json"
    other.write_text('{"features": []}')
    with pytest.raises(ConfigError, match="NCRF"):
        read_annotations(other)
    broken = tmp_path / "broken.xml"
    broken.write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(ConfigError, match="ASAP"):
        read_annotations(broken)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ConfigError, match="unknown annotation format"):
        read_annotations(tmp_path / "x.txt")


def test_geojson_roi_with_hole(tmp_path: Path) -> None:
    path = tmp_path / "roi.geojson"
    ring = [[0, 0], [800, 0], [800, 800], [0, 800], [0, 0]]
    hole = [[200, 200], [600, 200], [600, 600], [200, 600], [200, 200]]
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"objectType": "annotation"},
                        "geometry": {"type": "Polygon", "coordinates": [ring, hole]},
                    },
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Point", "coordinates": [5, 5]},
                    },
                ],
            }
        )
    )
    roi = load_roi(path, (1600, 1000))
    m = roi.rasterize((10, 16), 100.0)  # pixel centres at 50, 150, ...
    expected = np.zeros((10, 16), bool)
    expected[:8, :8] = True
    expected[2:6, 2:6] = False
    np.testing.assert_array_equal(m, expected)


def test_png_roi_any_scale(tmp_path: Path) -> None:
    # slide 1600 x 1000; a 1/50 scale mask whose left quarter is inside
    mask = np.zeros((20, 32), np.uint8)
    mask[:, :8] = 255
    png = tmp_path / "roi.png"
    Image.fromarray(mask).save(png)
    roi = load_roi(png, (1600, 1000))
    m = roi.rasterize((100, 160), 10.0)
    assert m[:, :40].all() and not m[:, 40:].any()
    # RGBA with transparent background
    rgba = np.zeros((20, 32, 4), np.uint8)
    rgba[:10, :, :] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    m2 = load_roi(tmp_path / "a.png", (1600, 1000)).rasterize((10, 16), 100.0)
    assert m2[:5].all() and not m2[5:].any()


def test_roi_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_roi(tmp_path / "nope.png", (100, 100))
    Image.fromarray(np.full((10, 40), 255, np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(ConfigError, match="aspect"):
        load_roi(tmp_path / "wide.png", (1000, 1000))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ConfigError, match="empty"):
        load_roi(tmp_path / "empty.png", (1000, 1000))
    (tmp_path / "pts.geojson").write_text('{"type": "Point", "coordinates": [1, 2]}')
    with pytest.raises(ConfigError, match="no Polygon"):
        load_roi(tmp_path / "pts.geojson", (1000, 1000))
    (tmp_path / "bad.geojson").write_text("{")
    with pytest.raises(ConfigError, match="not valid GeoJSON"):
        load_roi(tmp_path / "bad.geojson", (1000, 1000))
    (tmp_path / "roi.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown type"):
        load_roi(tmp_path / "roi.txt", (1000, 1000))


def test_rasterize_geometry_pixel_centres() -> None:
    sq = shapely.box(10, 10, 30, 30)
    m = rasterize_geometry(sq, (5, 5), 10.0)  # centres 5, 15, 25, 35, 45
    expected = np.zeros((5, 5), bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(m, expected)
    assert not rasterize_geometry(None, (3, 3), 1.0).any()


# Camelyon16 slide sizes are about 97792 x 221184 px; tumour_001's lesions lie inside.
C16_DIMS = (97792, 221184)


@pytest.mark.real_data
@pytest.mark.parametrize("num", CAMELYON)
def test_camelyon_annotations_as_roi(test_data_dir: Path, num: str) -> None:
    xml = test_data_dir / "camelyon16" / "asap_xml" / f"tumor_{num}.xml"
    js = test_data_dir / "camelyon16" / "ncrf_json" / f"Tumor_{num}.json"
    truth = read_annotations(xml).tumour_geometry()
    shape, ds = (C16_DIMS[1] // 128, C16_DIMS[0] // 128), 128.0
    expected = rasterize_geometry(truth, shape, ds)
    assert expected.any()
    for path in (xml, js):
        roi = load_roi(path, C16_DIMS)
        assert roi.source == str(path) and roi.mask is None
        assert roi.geometry is not None
        assert shapely.symmetric_difference(roi.geometry, truth).area < 1e-6 * truth.area
        np.testing.assert_array_equal(roi.rasterize(shape, ds), expected)


@pytest.mark.real_data
def test_ncrf_normal_regions_are_no_roi(test_data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no lesion polygon"):
        load_roi(test_data_dir / "camelyon16" / "ncrf_json" / "Normal_001.json", C16_DIMS)


_ASAP = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
 <Annotation Name="_0" Type="Polygon" PartOfGroup="Tumor"><Coordinates>
  <Coordinate Order="0" X="10" Y="10" /><Coordinate Order="1" X="90.0" Y="10" />
  <Coordinate Order="2" X="90" Y="70" /><Coordinate Order="3" X="10" Y="70" />
 </Coordinates></Annotation>
 <Annotation Name="_1" Type="Polygon" PartOfGroup="_2"><Coordinates>
  <Coordinate Order="0" X="30" Y="30" /><Coordinate Order="1" X="50" Y="30" />
  <Coordinate Order="2" X="50" Y="50" /><Coordinate Order="3" X="30" Y="50" />
 </Coordinates></Annotation>
</Annotations><AnnotationGroups /></ASAP_Annotations>"""


def _lesion_minus_hole(shape: tuple[int, int], ds: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cx, cy = (xx + 0.5) * ds, (yy + 0.5) * ds
    inside = (cx > 10) & (cx < 90) & (cy > 10) & (cy < 70)
    hole = (cx > 30) & (cx < 50) & (cy > 30) & (cy < 50)
    return inside & ~hole


def test_asap_xml_and_ncrf_json_roi_generated(tmp_path: Path) -> None:
    """Lesions minus exclusions, level-0 px, placed exactly on the mask grid."""
    xml = tmp_path / "lesion.xml"
    xml.write_text(_ASAP)
    js = tmp_path / "lesion.json"
    js.write_text(
        json.dumps(
            {
                "positive": [{"name": "a", "vertices": [[10, 10], [90, 10], [90, 70], [10, 70]]}],
                "negative": [{"name": "b", "vertices": [[30, 30], [50, 30], [50, 50], [30, 50]]}],
            }
        )
    )
    expected = _lesion_minus_hole((10, 12), 8.0)
    assert expected.any() and not expected.all()
    for path in (xml, js):
        roi = load_roi(path, (96, 80))
        assert roi.geometry is not None
        assert roi.geometry.area == pytest.approx(80 * 60 - 20 * 20)
        np.testing.assert_array_equal(roi.rasterize((10, 12), 8.0), expected)
    # a .json that is GeoJSON is still read as GeoJSON
    gj = tmp_path / "region.json"
    gj.write_text(
        json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [40, 0], [40, 40], [0, 0]]]})
    )
    assert load_roi(gj, (96, 80)).geometry.area == pytest.approx(800.0)  # type: ignore[union-attr]
    # an exclusion covering the whole lesion leaves no region
    only_hole = tmp_path / "void.json"
    only_hole.write_text(
        json.dumps(
            {
                "positive": [{"vertices": [[10, 10], [20, 10], [20, 20], [10, 20]]}],
                "negative": [{"vertices": [[0, 0], [30, 0], [30, 30], [0, 30]]}],
            }
        )
    )
    with pytest.raises(ConfigError, match=r"void\.json has no lesion polygon"):
        load_roi(only_hole, (96, 80))
    broken = tmp_path / "broken.xml"
    broken.write_text("<ASAP_Annotations>")
    with pytest.raises(ConfigError, match="ASAP"):
        load_roi(broken, (96, 80))


def _asap(lesion: tuple[int, int, int, int], hole: tuple[int, int, int, int]) -> str:
    def ann(name: str, group: str, box: tuple[int, int, int, int]) -> str:
        x0, y0, x1, y1 = box
        pts = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
        coords = "".join(
            f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(pts)
        )
        return (
            f'<Annotation Name="{name}" Type="Polygon" PartOfGroup="{group}">'
            f"<Coordinates>{coords}</Coordinates></Annotation>"
        )

    body = ann("_0", "Tumor", lesion) + ann("_1", "Exclusion", hole)
    return f"<ASAP_Annotations><Annotations>{body}</Annotations></ASAP_Annotations>"


def test_xml_roi_restricts_tissue(rect_svs: Path, tmp_path: Path) -> None:
    from wsi_saliency.readers import open_slide
    from wsi_saliency.tissue import detect_tissue

    xml = tmp_path / "left.xml"
    # left half of the slide minus a 160 x 160 px square inside the tissue (RECT)
    xml.write_text(_asap((0, 0, 1024, 1536), (640, 480, 800, 640)))
    with open_slide(rect_svs) as r:
        full = detect_tissue(r)
        part = detect_tissue(r, roi=xml)
    assert part.method == "otsu+roi" and part.downsample == 16.0
    hole = np.zeros_like(part.mask)
    hole[30:40, 40:50] = True  # 480..640 x 640..800 level-0 px at 16 px per mask px
    assert full.mask[hole].all()
    left = np.zeros_like(part.mask)
    left[:, :64] = True
    np.testing.assert_array_equal(part.mask, full.mask & left & ~hole)


def test_roi_error_hints_name_config_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_roi(tmp_path / "nope.geojson", (100, 100))
    assert "tissue.roi" in str(ei.value) and "check --roi" not in str(ei.value)
    (tmp_path / "roi.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"\.xml.*\.json"):
        load_roi(tmp_path / "roi.txt", (100, 100))
