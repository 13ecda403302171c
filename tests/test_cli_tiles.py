"""``wsi-saliency tiles``: outputs, per-slide failures, no partial output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import SlideFactory, rect_polygon
from PIL import Image

from wsi_saliency import synthetic
from wsi_saliency.cli import cli
from wsi_saliency.config import RunConfig, build_config
from wsi_saliency.errors import (
    NoTissueError,
    SlideOpenError,
    SlideTooSmallError,
    UnsupportedPixelTypeError,
)
from wsi_saliency.models import demo_model_dir
from wsi_saliency.preview import tile_slide


def preview_config(tile_size: int = 224, spacing: float = 0.5) -> RunConfig:
    """The configuration ``tiles`` builds with the demo model's tile size and spacing."""
    return build_config(None, {"tiling.tile_size": tile_size, "tiling.spacing": spacing})


DEMO_TILES = preview_config()


def _run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["tiles", *args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def bad_inputs(
    tmp_path_factory: pytest.TempPathFactory, rect_svs: Path, slide_factory: SlideFactory
) -> dict[str, tuple[Path, type[Exception]]]:
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.svs"
    text.write_text("not a slide\n" * 50)
    trunc = d / "truncated.svs"
    data = rect_svs.read_bytes()
    trunc.write_bytes(data[: len(data) * 2 // 3])
    u16 = d / "sixteen.tiff"
    tifffile.imwrite(
        u16,
        np.full((512, 512, 3), 1000, np.uint16),
        tile=(256, 256),
        photometric="rgb",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    white = slide_factory(synthetic.SyntheticSlide(width=1024, height=1024, mpp=0.5), kind="svs")
    tiny = slide_factory(
        synthetic.SyntheticSlide(
            width=160, height=160, mpp=0.5, tissue=(rect_polygon(0, 0, 160, 160),)
        ),
        kind="tiff",
        tile=64,
    )
    return {
        "text renamed .svs": (text, SlideOpenError),
        "truncated SVS": (trunc, SlideOpenError),
        "16-bit TIFF": (u16, UnsupportedPixelTypeError),
        "all-white slide": (white, NoTissueError),
        "smaller than one tile": (tiny, SlideTooSmallError),
        "nonexistent path": (d / "does-not-exist.svs", SlideOpenError),
    }


def test_tiles_writes_outputs(rect_svs: Path, demo_svs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = _run(str(rect_svs), str(demo_svs), "--out", str(out))
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 2
    for slide, line in zip((rect_svs, demo_svs), lines, strict=True):
        folder = out / slide.stem
        assert sorted(p.name for p in folder.iterdir()) == ["tiles.geojson", "tissue.png"]
        gj = json.loads((folder / "tiles.geojson").read_text())
        assert gj["type"] == "FeatureCollection"
        n = len(gj["features"])
        assert f"{slide}: {n} tiles" in line
        for f in gj["features"][:5]:
            assert f["geometry"]["type"] == "Polygon"
            assert f["properties"]["objectType"] == "tile"
            ring = f["geometry"]["coordinates"][0]
            assert ring[0] == ring[-1]
            assert ring[2][0] - ring[0][0] == pytest.approx(224.0)  # 224 px at 0.5 on 0.5 um/px
        png = np.asarray(Image.open(folder / "tissue.png"))
        assert png.ndim == 3 and png.shape[2] == 3
        assert 1024 <= max(png.shape[:2]) <= 2048  # small thumbnails are enlarged
    # rect: tissue [512,1536) x [384,1152) dilated by ~32 px: a 5 x 4 block of 224 px tiles
    gj = json.loads((out / rect_svs.stem / "tiles.geojson").read_text())
    assert 20 <= len(gj["features"]) <= 30
    # nothing else (no temp folders) in the output folder
    assert sorted(p.name for p in out.iterdir()) == sorted([rect_svs.stem, demo_svs.stem])


def test_tiles_options(rect_svs: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, stdout, _ = _run(
        str(rect_svs),
        "--out",
        str(out),
        "--tile-size",
        "64",
        "--spacing",
        "1.0",
        "--overlap",
        "0.5",
        "--min-tissue",
        "1.0",
        "--backend",
        "tiffslide",
        "--object-type",
        "detection",
    )
    assert code == 0
    gj = json.loads((out / rect_svs.stem / "tiles.geojson").read_text())
    assert gj["features"][0]["properties"]["objectType"] == "detection"
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[2][0] - ring[0][0] == pytest.approx(128.0)
    xs = sorted({f["geometry"]["coordinates"][0][0][0] for f in gj["features"]})
    assert all(
        (b - a) % 64 == 0 for a, b in zip(xs, xs[1:], strict=False)
    )  # stride 32 px at 1 um/px
    assert f"{len(gj['features'])} tiles" in stdout
    # rerunning replaces the folder cleanly
    code, _, _ = _run(str(rect_svs), "--out", str(out), "--tile-size", "224")
    assert code == 0
    gj2 = json.loads((out / rect_svs.stem / "tiles.geojson").read_text())
    assert len(gj2["features"]) < len(gj["features"])
    assert [p.name for p in out.iterdir()] == [rect_svs.stem]


def test_tiles_roi_restricts(rect_svs: Path, tmp_path: Path) -> None:
    roi = tmp_path / "{stem}.geojson".replace("{stem}", rect_svs.stem)
    roi.write_text(
        json.dumps(
            {
                "type": "Polygon",
                "coordinates": [[[0, 0], [1024, 0], [1024, 1536], [0, 1536], [0, 0]]],
            }
        )
    )
    out = tmp_path / "o"
    code, _, err = _run(str(rect_svs), "--out", str(out), "--roi", str(tmp_path / "{stem}.geojson"))
    assert code == 0, err
    gj = json.loads((out / rect_svs.stem / "tiles.geojson").read_text())
    assert all(f["geometry"]["coordinates"][0][0][0] < 1024 for f in gj["features"])


@pytest.mark.parametrize(
    "case",
    [
        "text renamed .svs",
        "truncated SVS",
        "16-bit TIFF",
        "all-white slide",
        "smaller than one tile",
        "nonexistent path",
    ],
)
def test_bad_input_specific_error_and_no_output(
    bad_inputs: dict[str, tuple[Path, type[Exception]]], tmp_path: Path, case: str
) -> None:
    path, err = bad_inputs[case]
    out = tmp_path / "out"
    with pytest.raises(err) as ei:
        tile_slide(path, out, DEMO_TILES)
    assert path.name in str(ei.value)
    assert not out.exists()


def test_failing_slides_do_not_stop_others(
    bad_inputs: dict[str, tuple[Path, type[Exception]]], rect_svs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    bad = [p for p, _ in bad_inputs.values() if p.exists()]
    code, stdout, stderr = _run(
        *(str(p) for p in bad[:3]), str(rect_svs), *(str(p) for p in bad[3:]), "--out", str(out)
    )
    assert code == 1
    assert [p.name for p in out.iterdir()] == [rect_svs.stem]
    assert f"{rect_svs}:" in stdout
    errors = stderr.strip().splitlines()
    assert len(errors) == len(bad)
    for p, line in zip(bad, errors, strict=True):
        assert line.startswith("error: ") and p.name in line


@pytest.mark.real_data
def test_tcga_needs_mpp(tcga_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = _run(str(tcga_slide), "--out", str(out))
    assert code == 1
    assert "TCGA-CR-7395-01A-01-TS1.svs" in stderr and "--mpp" in stderr
    assert not out.exists()
    code, stdout, stderr = _run(str(tcga_slide), "--out", str(out), "--mpp", "0.25")
    assert code == 0, stderr
    n = len(json.loads((out / tcga_slide.stem / "tiles.geojson").read_text())["features"])
    assert n > 0 and f"{n} tiles" in stdout


def test_duplicate_stems_get_distinct_folders_as_in_run(rect_svs: Path, tmp_path: Path) -> None:
    other = tmp_path / "x" / rect_svs.name
    other.parent.mkdir()
    other.write_bytes(rect_svs.read_bytes())
    code, _, stderr = _run(str(rect_svs), str(other), "--out", str(tmp_path / "o"))
    assert code == 0, stderr
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert len(names) == 2 and all(n.startswith(rect_svs.stem + "__") for n in names)


def test_inputs_like_run_and_usage_errors_exit_2(rect_svs: Path, tmp_path: Path) -> None:
    """Folders, globs and list files work as for `run`; a missing input is a usage error
    before any slide is tiled, and nothing is written."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / rect_svs.name).write_bytes(rect_svs.read_bytes())
    code, stdout, stderr = _run(str(folder), "--out", str(tmp_path / "o1"))
    assert code == 0, stderr
    assert (tmp_path / "o1" / rect_svs.stem / "tiles.geojson").is_file()
    code, _, stderr = _run(str(folder / "*.svs"), "--out", str(tmp_path / "o2"))
    assert code == 0, stderr
    code, _, stderr = _run(str(rect_svs), str(tmp_path / "missing.svs"), "--out",
                           str(tmp_path / "o3"))
    assert code == 2 and "missing.svs" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o3").exists()


def test_tile_size_and_spacing_default_to_the_model(rect_svs: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    cfg = json.loads((demo_model_dir() / "config.json").read_text())
    cfg.update({"patch_size_pixels": 128, "spacing_um_px": 1.0})
    (model / "config.json").write_text(json.dumps(cfg))
    code, stdout, stderr = _run(str(rect_svs), "--out", str(tmp_path / "o"), "--model", str(model))
    assert code == 0, stderr
    assert "(128 px at 1 um/px)" in stdout


def test_tiny_white_slide_is_too_small_not_tissueless(
    slide_factory: SlideFactory, tmp_path: Path
) -> None:
    """The size check comes before tissue detection (a blank 96 px slide has no tissue)."""
    blank = slide_factory(synthetic.SyntheticSlide(width=96, height=80, mpp=0.5), kind="tiff")
    with pytest.raises(SlideTooSmallError) as ei:
        tile_slide(blank, tmp_path / "out", DEMO_TILES)
    assert "48x40 um" in str(ei.value) and "112x112 um" in str(ei.value)
    # small enough tiles: now the missing tissue is what is reported
    with pytest.raises(NoTissueError, match=r"tissue\.method=fixed"):
        tile_slide(blank, tmp_path / "out", preview_config(tile_size=32))
    assert not (tmp_path / "out").exists()


@pytest.mark.real_data
def test_small_svs_reported_as_too_small(test_data_dir: Path, tmp_path: Path) -> None:
    small = test_data_dir / "slides" / "small.svs"
    out = tmp_path / "out"
    code, _, stderr = _run(str(small), "--out", str(out))
    assert code == 1 and not out.exists()
    line = stderr.strip()
    assert "\n" not in line
    assert "small.svs" in line and "smaller than one tile" in line
    assert "7.984x7.984 um" in line and "--tile-size" in line
    assert "no tissue" not in line
    with pytest.raises(SlideTooSmallError):
        tile_slide(small, out, DEMO_TILES)


def test_implausible_mpp_refused_by_tiles(rect_svs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = _run(str(rect_svs), "--out", str(out), "--mpp", "500")
    assert code == 1 and not out.exists()
    assert "500 um/px is outside the plausible" in stderr and "--mpp" in stderr


def test_coarse_mpp_thumbnail_at_level0(rect_svs: Path, tmp_path: Path) -> None:
    """--mpp 20 (coarser than the 8 um/px tissue spacing): the thumbnail is level 0."""
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        str(rect_svs), "--out", str(out), "--mpp", "20", "--tile-size", "16", "--spacing", "40"
    )
    assert code == 0, stderr
    png = Image.open(out / rect_svs.stem / "tissue.png")
    assert png.size == (2048, 1536)  # level 0, neither enlarged nor blown up
    gj = json.loads((out / rect_svs.stem / "tiles.geojson").read_text())
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[2][0] - ring[0][0] == pytest.approx(32.0)  # 16 px at 40 um/px on 20 um/px
