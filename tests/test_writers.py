"""Writers: OME-Zarr / OME-TIFF alignment and readers, GeoJSON for QuPath, CSV, overlay, run.json."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
import zarr
from shapely.geometry import shape

from wsi_saliency.config import OutputConfig, RunConfig, TilingConfig, config_hash
from wsi_saliency.errors import ConfigError, OutputError
from wsi_saliency.stitch import StitchedHeatmaps, Stitcher
from wsi_saliency.tiling import full_grid
from wsi_saliency.types import BatchResult, Mpp, SlideInfo, TileGrid
from wsi_saliency.writers import (
    SaliencyScaling,
    collect_hardware,
    collect_versions,
    write_heatmap_outputs,
    write_heatmap_tiffs,
    write_ome_zarr,
    write_overlay,
    write_regions_geojson,
    write_run_json,
    write_tiles_csv,
    write_tiles_geojson,
)
from wsi_saliency.writers._common import tile_boxes
from wsi_saliency.writers.geojson import tumour_regions
from wsi_saliency.writers.run_meta import to_jsonable

CLASSES = ("normal", "tumor")
M = 14  # map size; 224 px tiles at 0.5 um/px -> 8 um heatmap pixels


def make_grid(width: int, height: int, mpp: float, overlap: float = 0.0) -> TileGrid:
    """Every 224 px @ 0.5 um tile over the slide."""
    info = SlideInfo(
        path="test", backend="none", dimensions=(width, height),
        level_dimensions=((width, height),), level_downsamples=(1.0,),
        mpp=Mpp(mpp, mpp, "override"),
    )
    g = full_grid(info, tile_size=224, spacing=0.5, overlap=overlap)
    return replace(g, tissue_fraction=np.full(len(g), 0.75, np.float32))


# Planted "tumour" tiles (grid row, col): a ring around (3, 3) with a hole, plus a blob.
RING = {(r, c) for r in range(1, 6) for c in range(1, 6)} - {(3, 3)}
BLOB = {(6, 7), (6, 8)}
TUMOUR = RING | BLOB
LEFT_OUT_ROW = 7  # tiles of this grid row are never added (background): NaN


def stitch(tmp: Path, mpp: float = 0.25, size: tuple[int, int] = (4480, 3584)) -> StitchedHeatmaps:
    """Stitch a planted pattern: tumour prob 0.9 / 0.1; saliency = i * 1000 + j - 50000."""
    g = make_grid(size[0], size[1], mpp)
    todo = np.flatnonzero(g.rows != LEFT_OUT_ROW)
    st = Stitcher(tmp / "scratch", g, (M, M), CLASSES, chunk_size=64)
    u, v = np.meshgrid(np.arange(M), np.arange(M), indexing="ij")
    for s in range(0, todo.size, 8):
        idx = todo[s : s + 8]
        p = np.array(
            [0.9 if (int(g.rows[k]), int(g.cols[k])) in TUMOUR else 0.1 for k in idx],
            np.float32,
        )
        maps = np.stack(
            [(g.rows[k] * M + u) * 1000.0 + (g.cols[k] * M + v) - 50000.0 for k in idx]
        ).astype(np.float32)
        st.add(BatchResult(idx, np.stack([1 - p, p], 1), maps))
    return st.finalize()


@pytest.fixture(scope="module")
def hm(tmp_path_factory: pytest.TempPathFactory) -> StitchedHeatmaps:
    return stitch(tmp_path_factory.mktemp("stitch"))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, hm: StitchedHeatmaps) -> Path:
    out = tmp_path_factory.mktemp("out")
    levels = write_ome_zarr(out / "heatmaps.ome.zarr", hm, name="synthetic", min_size=40)
    write_heatmap_tiffs(out, hm, levels=levels)
    return out


def planted_level0_mask(g: TileGrid) -> np.ndarray:
    """Level-0 truth: union of the planted tumour tiles' footprints."""
    w, h = g.slide_dimensions
    mask = np.zeros((h, w), dtype=bool)
    for k, (x0, y0, x1, y1) in enumerate(tile_boxes(g)):
        if (int(g.rows[k]), int(g.cols[k])) in TUMOUR:
            mask[y0:y1, x0:x1] = True
    return mask


def to_level0(heat: np.ndarray, sx: float, sy: float, dims: tuple[int, int]) -> np.ndarray:
    """Sample a heatmap at every level-0 pixel: pixel (x, y) -> heat[floor(y/sy), floor(x/sx)]."""
    w, h = dims
    ri = np.minimum(np.floor((np.arange(h) + 0.5) / sy).astype(int), heat.shape[0] - 1)
    ci = np.minimum(np.floor((np.arange(w) + 0.5) / sx).astype(int), heat.shape[1] - 1)
    return heat[np.ix_(ri, ci)]


# -- alignment ----------------------------------------------------------------------


def test_ome_zarr_probability_lands_on_the_planted_level0_pixels(
    outputs: Path, hm: StitchedHeatmaps
) -> None:
    root = zarr.open_group(str(outputs / "heatmaps.ome.zarr"), mode="r")
    ms = root.attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    mpp = hm.grid.mpp
    # napari/ome-zarr-py put pixel centres at scale * k + translation (tests/test_qupath.py)
    trans = ms["datasets"][0]["coordinateTransformations"][1]["translation"]
    assert trans == [0.0, (scale[1] - mpp.y) / 2, (scale[2] - mpp.x) / 2]
    sx, sy = scale[2] / mpp.x, scale[1] / mpp.y  # level-0 px per heatmap px
    assert (sx, sy) == (32.0, 32.0)
    labels = [c["label"] for c in root.attrs["omero"]["channels"]]
    prob = np.asarray(root["0"][labels.index("probability_tumor")])
    dims = hm.grid.slide_dimensions
    got = to_level0(prob, sx, sy, dims) >= 0.5
    truth = planted_level0_mask(hm.grid)
    # exact pixel contract: not a single level-0 pixel differs (an offset of even one
    # heatmap pixel would flip 32-px bands)
    assert np.array_equal(got, truth)
    # saliency placement: level-0 pixel (x, y) reads heatmap pixel (y // 32, x // 32)
    sal = to_level0(np.asarray(root["0"][1]), sx, sy, dims)
    yy, xx = np.mgrid[0 : dims[1] : 97, 0 : dims[0] : 89]
    vals = sal[yy, xx]
    ok = ~np.isnan(vals)
    assert ok.sum() > 1000
    np.testing.assert_array_equal(vals[ok], ((yy // 32) * 1000 + xx // 32 - 50000)[ok])
    # background row never added: NaN there, covered elsewhere
    assert np.isnan(prob[LEFT_OUT_ROW * M : (LEFT_OUT_ROW + 1) * M]).all()
    assert not np.isnan(prob[: LEFT_OUT_ROW * M]).any()


def test_ome_tiff_probability_lands_on_the_planted_level0_pixels(
    outputs: Path, hm: StitchedHeatmaps
) -> None:
    with tifffile.TiffFile(outputs / "probability.ome.tif") as tf:
        pixels = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels["PhysicalSizeXUnit"] == "\u00b5m"
        px, py = float(pixels["PhysicalSizeX"]), float(pixels["PhysicalSizeY"])
        prob = tf.series[0].levels[0].asarray()
    sx, sy = px / hm.grid.mpp.x, py / hm.grid.mpp.y
    got = to_level0(prob, sx, sy, hm.grid.slide_dimensions) >= 0.5
    assert np.array_equal(got, planted_level0_mask(hm.grid))


def test_alignment_with_a_non_integer_downsample(tmp_path: Path) -> None:
    # 0.2427 um/px (Camelyon-like): one 8 um heatmap pixel = 32.96 level-0 px
    hm = stitch(tmp_path, mpp=0.2427, size=(4600, 3700))
    write_ome_zarr(tmp_path / "h.ome.zarr", hm)
    root = zarr.open_group(str(tmp_path / "h.ome.zarr"), mode="r")
    scale = root.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    sx, sy = scale[2] / 0.2427, scale[1] / 0.2427
    assert sx == pytest.approx(8 / 0.2427)
    got = to_level0(np.asarray(root["0"][0]), sx, sy, hm.grid.slide_dimensions) >= 0.5
    truth = planted_level0_mask(hm.grid)
    # tile boxes are rounded to whole level-0 px, heatmap edges sit at j * 32.96: the two
    # agree everywhere except within one level-0 px of a heatmap pixel edge
    w, h = hm.grid.slide_dimensions
    fx = (np.arange(w) + 0.5) / sx
    fy = (np.arange(h) + 0.5) / sy
    near_x = np.abs(fx - np.round(fx)) * sx <= 1.0
    near_y = np.abs(fy - np.round(fy)) * sy <= 1.0
    away = ~(near_y[:, None] | near_x[None, :])
    assert np.array_equal(got[away], truth[away])
    dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
    assert dice > 0.995


# -- readers agree ------------------------------------------------------------------


def test_ome_zarr_opens_with_ome_zarr_py_and_validates(outputs: Path, hm: StitchedHeatmaps) -> None:
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v04 import Image

    path = outputs / "heatmaps.ome.zarr"
    loc = parse_url(str(path), fmt=FormatV04())
    assert loc is not None
    node = next(iter(Reader(loc)()))
    shapes = [tuple(d.shape) for d in node.data]
    assert shapes == [(3, 112, 140), (3, 56, 70), (3, 28, 35)]
    assert all(d.dtype == np.float32 for d in node.data)
    assert node.metadata["channel_names"] == ["probability_tumor", "saliency", "probability_normal"]
    assert [a["unit"] for a in node.metadata["axes"][1:]] == ["micrometer", "micrometer"]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[1.0, 8.0, 8.0], [1.0, 16.0, 16.0], [1.0, 32.0, 32.0]]

    img = Image.from_zarr(zarr.open_group(str(path), mode="r"))  # raises if invalid
    ms = img.ome_attributes.multiscales[0]
    assert [d.path for d in ms.datasets] == ["0", "1", "2"]
    assert [c.label for c in img.ome_attributes.omero.channels] == list(hm.channel_names)  # type: ignore[union-attr]
    # zarr v2 with "/" chunk keys (NGFF 0.4)
    zarray = json.loads((path / "0" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["dimension_separator"] == "/"

    # pyramid level 1 is the NaN-mean of 2 x 2 blocks of level 0
    l0, l1 = np.asarray(node.data[0]), np.asarray(node.data[1])
    blocks = l0.reshape(3, 56, 2, 70, 2)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmean(blocks, axis=(2, 4))
    np.testing.assert_allclose(l1, expected, rtol=1e-6, equal_nan=True)


def test_ome_zarr_pyramid_goes_down_to_about_512_px(tmp_path: Path) -> None:
    # 25,000 x 9,000 px at 0.5 um -> heatmap 1563 x 563 px -> levels 1563, 782, 391
    g = make_grid(25000, 9000, 0.5)
    st = Stitcher(tmp_path / "s", g, (M, M), CLASSES)
    n = len(g)
    st.add(
        BatchResult(np.arange(n), np.full((n, 2), 0.5, np.float32), np.zeros((n, M, M), np.float32))
    )
    big = st.finalize()
    levels = write_ome_zarr(tmp_path / "h.ome.zarr", big)
    assert [a.shape[1:] for a in levels] == [(563, 1563), (282, 782), (141, 391)]
    with pytest.raises(OutputError, match="already exists"):
        write_ome_zarr(tmp_path / "h.ome.zarr", big)
    assert len(write_ome_zarr(tmp_path / "h.ome.zarr", big, min_size=100, overwrite=True)) == 5


def test_ome_tiffs_open_with_tifffile_and_tiffslide(outputs: Path, hm: StitchedHeatmaps) -> None:
    import tiffslide

    zroot = zarr.open_group(str(outputs / "heatmaps.ome.zarr"), mode="r")
    for name, ch in (("probability", 0), ("saliency", 1)):
        path = outputs / f"{name}.ome.tif"
        with tifffile.TiffFile(path) as tf:
            assert tf.is_ome
            series = tf.series[0]
            assert [lv.shape for lv in series.levels] == [(112, 140), (56, 70), (28, 35)]
            assert series.dtype == np.float32
            page = tf.pages[0]
            assert page.is_tiled and page.tilewidth == 256
            pixels = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
            assert float(pixels["PhysicalSizeX"]) == 8.0
            assert float(pixels["PhysicalSizeY"]) == 8.0
            for i, lv in enumerate(series.levels):
                np.testing.assert_array_equal(lv.asarray(), np.asarray(zroot[str(i)][ch]))
        slide = tiffslide.TiffSlide(path)
        try:
            assert slide.level_count == 3
            assert slide.dimensions == (140, 112)
            assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(8.0)
            region = slide.read_region((40, 30), 0, (20, 10), as_array=True)
            np.testing.assert_array_equal(region[..., 0], np.asarray(zroot["0"][ch, 30:40, 40:60]))
        finally:
            slide.close()


def check_qupath_feature(feat: dict, object_type: str) -> None:
    assert feat["type"] == "Feature"
    assert isinstance(feat["id"], str) and len(feat["id"]) == 36
    assert feat["geometry"]["type"] == "Polygon"
    props = feat["properties"]
    assert props["objectType"] == object_type
    cls = props["classification"]
    assert isinstance(cls["name"], str)
    assert len(cls["color"]) == 3 and all(
        isinstance(c, int) and 0 <= c <= 255 for c in cls["color"]
    )
    assert isinstance(props["measurements"], dict)
    geom = shape(feat["geometry"])
    assert geom.is_valid and not geom.is_empty


def test_tiles_geojson_for_qupath(tmp_path: Path, hm: StitchedHeatmaps) -> None:
    p1 = write_tiles_geojson(tmp_path / "tiles.geojson", hm, id_seed="slide-a")
    data = json.loads(p1.read_text())
    assert data["type"] == "FeatureCollection"
    feats = data["features"]
    done = np.flatnonzero(hm.tiles.done)
    assert len(feats) == done.size == len(hm.grid) - 10  # the left-out row is absent
    boxes = tile_boxes(hm.grid)
    for feat, k in zip(feats, done, strict=True):
        check_qupath_feature(feat, "detection")
        assert shape(feat["geometry"]).bounds == tuple(float(b) for b in boxes[k])
        meas = feat["properties"]["measurements"]
        assert set(meas) == {
            "prob_normal",
            "prob_tumor",
            "saliency_mean",
            "saliency_max",
            "saliency_positive_fraction",
            "tissue_fraction",
        }
        is_tumour = (int(hm.grid.rows[k]), int(hm.grid.cols[k])) in TUMOUR
        # QuPath's built-in Tumor class; "normal" has no built-in and keeps its name
        assert feat["properties"]["classification"]["name"] == ("Tumor" if is_tumour else "normal")
        assert meas["prob_tumor"] == pytest.approx(0.9 if is_tumour else 0.1)
    assert len({f["id"] for f in feats}) == len(feats)
    # byte-identical on a re-run; another slide gets other ids
    p2 = write_tiles_geojson(tmp_path / "again.geojson", hm, id_seed="slide-a")
    assert p1.read_bytes() == p2.read_bytes()
    p3 = write_tiles_geojson(tmp_path / "other.geojson", hm, id_seed="slide-b")
    assert json.loads(p3.read_text())["features"][0]["id"] != feats[0]["id"]


def test_regions_geojson_has_exact_polygons_with_holes(
    tmp_path: Path, hm: StitchedHeatmaps
) -> None:
    p1 = write_regions_geojson(tmp_path / "regions.geojson", hm, threshold=0.5, id_seed="s")
    feats = json.loads(p1.read_text())["features"]
    assert len(feats) == 2  # the ring and the blob
    for f in feats:
        check_qupath_feature(f, "annotation")
        assert f["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    ring, blob = (shape(f["geometry"]) for f in feats)
    assert len(ring.interiors) == 1 and len(blob.interiors) == 0

    # exact: the union of the planted tiles' level-0 boxes (448 px each at 0.25 um/px)
    def boxes(cells: set[tuple[int, int]]) -> shapely.Geometry:
        return shapely.union_all(
            [shapely.box(c * 448, r * 448, (c + 1) * 448, (r + 1) * 448) for r, c in cells]
        )

    assert ring.symmetric_difference(boxes(RING)).area == 0.0
    assert blob.symmetric_difference(boxes(BLOB)).area == 0.0
    assert ring.interiors[0].bounds == (3 * 448.0, 3 * 448.0, 4 * 448.0, 4 * 448.0)
    area_um2 = feats[0]["properties"]["measurements"]["area_um2"]
    assert area_um2 == pytest.approx(24 * (448 * 0.25) ** 2, rel=1e-6)
    p2 = write_regions_geojson(tmp_path / "again.geojson", hm, threshold=0.5, id_seed="s")
    assert p1.read_bytes() == p2.read_bytes()
    # above every probability: an empty but valid FeatureCollection
    p3 = write_regions_geojson(tmp_path / "none.geojson", hm, threshold=0.95)
    assert json.loads(p3.read_text()) == {"type": "FeatureCollection", "features": []}


def test_regions_do_not_depend_on_the_band_height(hm: StitchedHeatmaps) -> None:
    # bands of 5 rows cut through the tiles; the union across band borders is exact
    polys = tumour_regions(hm, band_rows=5)
    assert all(p.is_valid for p in polys)
    assert shapely.union_all(polys).equals(shapely.union_all(tumour_regions(hm)))


def test_tiles_csv(tmp_path: Path, hm: StitchedHeatmaps) -> None:
    p1 = write_tiles_csv(tmp_path / "tiles.csv", hm)
    with open(p1, newline="") as fh:
        rows = list(csv.DictReader(fh))
    done = np.flatnonzero(hm.tiles.done)
    assert len(rows) == done.size
    assert list(rows[0]) == [
        "tile",
        "x",
        "y",
        "width",
        "height",
        "grid_row",
        "grid_col",
        "tissue_fraction",
        "prob_normal",
        "prob_tumor",
        "predicted_class",
        "saliency_mean",
        "saliency_max",
        "saliency_positive_fraction",
    ]
    k = int(rows[11]["tile"])
    assert (int(rows[11]["x"]), int(rows[11]["y"])) == tuple(int(v) for v in hm.grid.coords[k])
    assert (rows[11]["width"], rows[11]["height"]) == ("448", "448")
    assert float(rows[11]["saliency_max"]) == pytest.approx(hm.tiles.saliency_max[k])
    assert float(rows[11]["tissue_fraction"]) == 0.75
    p2 = write_tiles_csv(tmp_path / "again.csv", hm)
    assert p1.read_bytes() == p2.read_bytes()


# -- overlay and run.json -------------------------------------------------------------


def test_overlay_png_and_recorded_scaling(tmp_path: Path, hm: StitchedHeatmaps) -> None:
    from matplotlib.image import imread

    thumb = np.full((112, 140, 3), 230, np.uint8)
    s = write_overlay(tmp_path / "overlay.png", hm, thumb, 32.0, title="synthetic")
    img = imread(tmp_path / "overlay.png")
    assert img.ndim == 3 and img.shape[1] > 600
    sal = np.asarray(hm.heatmap[1])
    v = float(np.percentile(np.abs(sal[~np.isnan(sal)]), 99.0))
    assert s == SaliencyScaling("percentile", -v, v, 99.0, 8.0)
    fixed = write_overlay(tmp_path / "o2.png", hm, thumb, 32.0, saliency_range=(-2.0, 3.0))
    assert fixed.as_dict() == {
        "mode": "fixed",
        "vmin": -2.0,
        "vmax": 3.0,
        "percentile": None,
        "display_pixel_size_um": 8.0,
    }
    # drawn at a coarser level when asked: the percentile is taken on what is shown
    small = write_overlay(tmp_path / "o3.png", hm, thumb, 32.0, max_display_px=40)
    assert small.display_pixel_size_um == 32.0
    with pytest.raises(ConfigError, match="vmin < 0 < vmax"):
        write_overlay(tmp_path / "o4.png", hm, thumb, 32.0, saliency_range=(1.0, 2.0))


def test_write_heatmap_outputs_writes_every_named_file(
    tmp_path: Path, hm: StitchedHeatmaps
) -> None:
    thumb = np.full((56, 70, 3), 200, np.uint8)
    paths, scaling = write_heatmap_outputs(
        tmp_path, hm, thumbnail=thumb, thumbnail_downsample=64.0, output=OutputConfig(), name="syn"
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "heatmaps.ome.zarr",
        "overlay.png",
        "probability.ome.tif",
        "regions.geojson",
        "saliency.ome.tif",
        "tiles.csv",
        "tiles.geojson",
    ]
    assert set(paths) == {
        "heatmaps",
        "probability",
        "saliency",
        "tiles_geojson",
        "regions_geojson",
        "tiles_csv",
        "overlay",
    }
    assert scaling.mode == "percentile"


def test_run_json_is_deterministic_and_config_hash_is_stable(tmp_path: Path) -> None:
    cfg = RunConfig()
    h1 = config_hash(cfg, "ab" * 32)
    assert h1 == config_hash(RunConfig(), "ab" * 32) and len(h1) == 64
    assert h1 != config_hash(cfg, "cd" * 32)
    assert h1 != config_hash(replace(cfg, tiling=TilingConfig(overlap=0.5)), "ab" * 32)
    versions = collect_versions()
    for key in (
        "python",
        "torch",
        "numpy",
        "openslide_python",
        "tiffslide",
        "zarr",
        "tifffile",
        "wsi_saliency",
    ):
        assert versions[key], key
    hw = collect_hardware()
    assert hw["cpu_count"] >= 1 and isinstance(hw["cuda_devices"], list)
    payload = {
        "z": 1,
        "config": cfg,
        "path": tmp_path / "x.svs",
        "values": (np.float32(0.5), np.int64(3), float("nan")),
        "a": {"b": np.arange(2)},
    }
    p1 = write_run_json(tmp_path / "run.json", payload)
    text = p1.read_text()
    assert text.endswith("}\n")
    data = json.loads(text)
    assert list(data) == ["a", "config", "path", "values", "z"]
    assert data["values"] == [0.5, 3, None]
    assert data["config"]["tiling"]["overlap"] is None  # the seam-free default, resolved per run
    write_run_json(tmp_path / "run2.json", dict(reversed(list(payload.items()))))
    assert (tmp_path / "run2.json").read_text() == text
    with pytest.raises(TypeError, match="cannot write object"):
        to_jsonable(object())
