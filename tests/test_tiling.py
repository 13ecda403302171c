"""Tile grid: exact counts and coordinates, level choice, exact footprints, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import RECT, SlideFactory, rect_polygon

from wsi_saliency import synthetic
from wsi_saliency.errors import ConfigError, MissingMppError, NoTissueError, SlideTooSmallError
from wsi_saliency.readers import open_slide
from wsi_saliency.tiling import (
    check_slide_fits,
    grid_geojson,
    make_grid,
    read_tile,
    read_tiles,
    tile_boxes,
    tile_cache,
    tissue_fractions,
)
from wsi_saliency.tissue import detect_tissue
from wsi_saliency.types import Mpp, SlideInfo, TissueMask

TILE = 64


def _truth_mask(spec: synthetic.SyntheticSlide) -> TissueMask:
    # RECT edges are multiples of 16 px, so the ground truth at ds 16 is exact
    return TissueMask(mask=synthetic.tissue_mask(spec, 16.0), downsample=16.0, spacing=8.0)


def _expected(
    w: int, h: int, mpp: float, tile: int, spacing: float, overlap: float, min_tissue: float
) -> list[tuple[int, int, int, int]]:
    """Brute-force reference: (row, col, x, y) of kept tiles, from first principles."""
    size = tile * spacing / mpp
    stride = round(tile * (1 - overlap))
    step = stride * spacing / mpp
    out = []
    row = 0
    while True:
        y = round(row * stride * spacing / mpp)
        if row > 0 and (row - 1) * step + size >= h - 1e-9:
            break
        col = 0
        while True:
            x = round(col * stride * spacing / mpp)
            if col > 0 and (col - 1) * step + size >= w - 1e-9:
                break
            ox = max(0.0, min(x + size, RECT[2]) - max(x, RECT[0]))
            oy = max(0.0, min(y + size, RECT[3]) - max(y, RECT[1]))
            if ox * oy / (size * size) >= min_tissue - 1e-6:
                out.append((row, col, x, y))
            col += 1
        row += 1
    return out


def test_hand_computed_case(rect_svs: Path, rect_spec: synthetic.SyntheticSlide) -> None:
    """224 px at 0.5 um/px on a 0.5 um/px slide, whole tiles inside [512,1536)x[384,1152)."""
    with open_slide(rect_svs) as r:
        g = make_grid(r.info, _truth_mask(rect_spec), tile_size=224, spacing=0.5, min_tissue=1.0)
    assert g.grid_shape == (7, 10)  # ceil((1536-224)/224)+1, ceil((2048-224)/224)+1
    assert len(g) == 9
    xs = sorted({int(x) for x in g.coords[:, 0]})
    ys = sorted({int(y) for y in g.coords[:, 1]})
    assert xs == [672, 896, 1120] and ys == [448, 672, 896]
    assert g.level == 0 and g.scale == 1.0 and g.size_level0 == (224.0, 224.0)
    assert (g.tissue_fraction == 1.0).all()


@pytest.mark.parametrize("kind", ["svs", "tiff"])
@pytest.mark.parametrize("spacing", [0.5, 0.25, 0.75, 1.0, 2.0])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("min_tissue", [0.25, 1.0])
def test_exact_counts_and_coordinates(
    slide_factory: object,
    rect_spec: synthetic.SyntheticSlide,
    kind: str,
    spacing: float,
    overlap: float,
    min_tissue: float,
) -> None:
    path = slide_factory(rect_spec, kind=kind)  # type: ignore[operator]
    with open_slide(path) as r:
        info = r.info
        g = make_grid(
            info,
            _truth_mask(rect_spec),
            tile_size=TILE,
            spacing=spacing,
            overlap=overlap,
            min_tissue=min_tissue,
        )
    exp = _expected(2048, 1536, 0.5, TILE, spacing, overlap, min_tissue)
    got = list(
        zip(
            g.rows.tolist(),
            g.cols.tolist(),
            g.coords[:, 0].tolist(),
            g.coords[:, 1].tolist(),
            strict=True,
        )
    )
    assert got == exp
    # the documented formula
    stride = round(TILE * (1 - overlap))
    assert g.stride == stride
    np.testing.assert_array_equal(
        g.coords, np.rint(np.stack([g.cols, g.rows], 1) * stride * spacing / 0.5).astype(np.int64)
    )
    assert g.coords.dtype == np.int64 and g.tissue_fraction.dtype == np.float32
    assert g.size_level0 == (TILE * spacing / 0.5,) * 2
    # level: coarsest not coarser than the target downsample
    target = spacing / 0.5
    ds = info.level_downsamples
    assert g.level == 0 or ds[g.level] <= target + 1e-9
    assert g.level == len(ds) - 1 or ds[g.level + 1] > target
    assert g.scale == pytest.approx(TILE / (g.size_level0[0] / ds[g.level]))
    if kind == "svs":  # levels 1, 4, 16
        assert g.level == {0.5: 0, 0.25: 0, 0.75: 0, 1.0: 0, 2.0: 1}[spacing]
    else:  # levels 1, 2, 4, 8
        assert g.level == {0.5: 0, 0.25: 0, 0.75: 0, 1.0: 1, 2.0: 2}[spacing]


def test_grid_from_detected_tissue(rect_svs: Path, rect_spec: synthetic.SyntheticSlide) -> None:
    with open_slide(rect_svs) as r:
        tm = detect_tissue(r)
        g = make_grid(r.info, tm, tile_size=TILE, spacing=0.5, min_tissue=1.0)
    b = tile_boxes(g)
    inside = _expected(2048, 1536, 0.5, TILE, 0.5, 0.0, 1.0)
    got = {(int(x), int(y)) for x, y in g.coords}
    assert {(x, y) for _, _, x, y in inside} <= got  # every tile wholly inside the rectangle
    margin = 64  # the detected mask may exceed the rectangle by its dilation (16 um = 32 px)
    assert (b[:, 0] >= RECT[0] - margin).all() and (b[:, 2] <= RECT[2] + margin).all()
    assert (b[:, 1] >= RECT[1] - margin).all() and (b[:, 3] <= RECT[3] + margin).all()


def test_tissue_fractions_exact() -> None:
    m = np.zeros((4, 4), bool)
    m[1, 1] = True  # level-0 [10, 20) x [10, 20) with ds 10
    tm = TissueMask(mask=m, downsample=10.0, spacing=5.0)
    x = np.array([10.0, 15.0, 0.0, 5.0, 35.0])
    y = np.array([10.0, 10.0, 0.0, 15.0, 35.0])
    f = tissue_fractions(tm, x, y, 10.0, 10.0)
    np.testing.assert_allclose(f, [1.0, 0.5, 0.0, 0.25, 0.0], atol=1e-6)
    # a rectangle reaching outside the mask counts the outside as background
    f2 = tissue_fractions(tm, np.array([-10.0]), np.array([-10.0]), 40.0, 40.0)
    np.testing.assert_allclose(f2, [100.0 / 1600.0], atol=1e-6)


def _info(w: int, h: int, mpp: float | None = 0.5) -> SlideInfo:
    return SlideInfo(
        path="/x/slide.svs",
        backend="openslide",
        dimensions=(w, h),
        level_dimensions=((w, h),),
        level_downsamples=(1.0,),
        mpp=Mpp(mpp, mpp, "override") if mpp else None,
    )


def test_grid_errors() -> None:
    full = TissueMask(mask=np.ones((8, 8), bool), downsample=64.0, spacing=32.0)
    with pytest.raises(SlideTooSmallError, match=r"slide\.svs.*smaller than one tile"):
        make_grid(_info(200, 600), full, tile_size=224, spacing=0.5)
    with pytest.raises(SlideTooSmallError):
        make_grid(_info(300, 300), full, tile_size=224, spacing=1.0)  # 448 level-0 px
    make_grid(_info(224, 224), full, tile_size=224, spacing=0.5)  # exactly one tile
    with pytest.raises(MissingMppError, match="--mpp"):
        make_grid(_info(512, 512, None), full, tile_size=224, spacing=0.5)
    empty = TissueMask(mask=np.zeros((8, 8), bool), downsample=64.0, spacing=32.0)
    with pytest.raises(NoTissueError, match="min-tissue"):
        make_grid(_info(512, 512), empty, tile_size=224, spacing=0.5)
    for bad in (
        {"overlap": 1.0},
        {"overlap": -0.1},
        {"min_tissue": 1.5},
        {"spacing": 0.0},
        {"tile_size": 0},
    ):
        kwargs: dict[str, float] = {"tile_size": 224, "spacing": 0.5, **bad}
        with pytest.raises(ConfigError):
            make_grid(_info(512, 512), full, **kwargs)  # type: ignore[arg-type]


def test_check_slide_fits_message_in_microns() -> None:
    check_slide_fits(_info(224, 224), tile_size=224, spacing=0.5)  # exactly one tile
    check_slide_fits(_info(224, 100), tile_size=100, spacing=0.5)  # 50 um tiles
    with pytest.raises(SlideTooSmallError) as ei:
        check_slide_fits(_info(300, 600), tile_size=224, spacing=1.0)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "/x/slide.svs" in msg
    assert "(300x600 px = 150x300 um)" in msg  # the slide in um
    assert "224 px at 1 um/px = 224x224 um" in msg  # the tile in um
    assert "--tile-size" in msg and "--spacing" in msg
    assert isinstance(ei.value, ValueError)
    # anisotropic: too short only along y
    info = SlideInfo(
        path="/x/a.svs",
        backend="openslide",
        dimensions=(500, 500),
        level_dimensions=((500, 500),),
        level_downsamples=(1.0,),
        mpp=Mpp(0.5, 0.2, "override"),
    )
    with pytest.raises(SlideTooSmallError, match=r"250x100 um"):
        check_slide_fits(info, tile_size=224, spacing=0.5)
    with pytest.raises(MissingMppError, match=r"--mpp.*mpp= \(open_slide\)"):
        check_slide_fits(_info(500, 500, None), tile_size=224, spacing=0.5)
    with pytest.raises(ConfigError):
        check_slide_fits(_info(500, 500), tile_size=0, spacing=0.5)


def test_make_grid_checks_size_before_tissue() -> None:
    """A too-small slide with an empty mask is SlideTooSmallError, not NoTissueError."""
    empty = TissueMask(mask=np.zeros((1, 1), bool), downsample=16.0, spacing=8.0)
    with pytest.raises(SlideTooSmallError, match="smaller than one tile"):
        make_grid(_info(16, 16), empty, tile_size=224, spacing=0.5)


@pytest.mark.real_data
def test_small_svs_is_too_small(test_data_dir: Path) -> None:
    with open_slide(test_data_dir / "slides" / "small.svs") as r:
        assert r.info.dimensions == (16, 16)
        with pytest.raises(SlideTooSmallError) as ei:
            check_slide_fits(r.info, tile_size=224, spacing=0.5)
    msg = str(ei.value)
    assert "small.svs" in msg and "7.984x7.984 um" in msg and "112x112 um" in msg


def test_generated_tiny_slide_too_small(slide_factory: SlideFactory) -> None:
    spec = synthetic.SyntheticSlide(
        width=64, height=48, mpp=0.25, tissue=(rect_polygon(0, 0, 64, 48),), seed=5
    )
    with open_slide(slide_factory(spec, kind="tiff", tile=16)) as r:
        with pytest.raises(SlideTooSmallError, match=r"16x12 um.*56x56 um"):
            check_slide_fits(r.info, tile_size=224, spacing=0.25)
        check_slide_fits(r.info, tile_size=48, spacing=0.25)  # fits
        tm = detect_tissue(r, spacing=0.25 * 4, min_object_um2=0.0)
        grid = make_grid(r.info, tm, tile_size=48, spacing=0.25)
        assert len(grid) == 2  # 64 px wide: one full column, one padded


def _offsets(
    tile: np.ndarray, x0: float, y0: float, f: float, w: int, h: int
) -> tuple[float, float, float]:
    """Mean x and y offset (level-0 px) of a coordinate-slide tile from its nominal footprint.

    Uses the triangle-wave channels (slope +-1 grey level per level-0 px) away from
    their kinks and the slide edge; returns (dx, dy, max per-pixel |error|).
    """
    t = tile.shape[0]
    cx = x0 + (np.arange(t) + 0.5) * f
    cy = y0 + (np.arange(t) + 0.5) * f
    exp = synthetic.coordinate_values(cx[None, :], cy[:, None])
    guard = 2 * f + 3
    okx = (np.abs(np.mod(cx, 255) - 127.5) < 127.5 - guard) & (cx < w - guard) & (cx > guard)
    oky = (np.abs(np.mod(cy, 255) - 127.5) < 127.5 - guard) & (cy < h - guard) & (cy > guard)
    sel = oky[:, None] & okx[None, :]
    assert sel.sum() > 50
    sx = np.sign(np.mod(cx, 510) - 255)[None, :]
    sy = np.sign(np.mod(cy, 510) - 255)[:, None]
    ex = ((tile[..., 0] - exp[..., 0]) * sx)[sel]
    ey = ((tile[..., 1] - exp[..., 1]) * sy)[sel]
    return float(ex.mean()), float(ey.mean()), float(max(np.abs(ex).max(), np.abs(ey).max()))


@pytest.mark.parametrize("backend", ["openslide", "tiffslide", "pyvips"])
def test_tiles_cover_exactly_their_region_at_every_level(
    coordinate_tiff: Path, backend: str
) -> None:
    full = TissueMask(mask=np.ones((96, 128), bool), downsample=16.0, spacing=8.0)
    levels_seen = set()
    with open_slide(coordinate_tiff, backend=backend) as r:
        # spacing -> level: 0.25 (0, upsampled), 0.5 (0), 0.75 (0, resized), 1.0 (1),
        # 1.5 (1, resized), 2.0 (2), 3.0 (2, resized)
        for spacing in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
            for overlap in (0.0, 0.5):
                g = make_grid(r.info, full, tile_size=TILE, spacing=spacing, overlap=overlap)
                levels_seen.add(g.level)
                f = g.size_level0[0] / TILE
                picks = np.linspace(0, len(g) - 1, 6).astype(int)
                tiles = read_tiles(r, g, picks).astype(float)
                # through a shared block cache (the worker's path): the same pixels
                cached = read_tiles(r, g, picks, cache=tile_cache(g)).astype(float)
                np.testing.assert_array_equal(cached, tiles)
                for t, k in zip(tiles, picks, strict=True):
                    x0, y0 = g.coords[k]
                    dx, dy, worst = _offsets(t, float(x0), float(y0), f, 2048, 1536)
                    # mean offset: far below one level-0 px (the rest is uint8 rounding)
                    assert abs(dx) < 0.5 and abs(dy) < 0.5, (spacing, overlap, k, dx, dy)
                    assert worst <= 1.0, (spacing, overlap, k, worst)
        assert levels_seen == {0, 1, 2}

        # the measurement is sensitive: a footprint shifted by one level-0 px is caught
        g = make_grid(r.info, full, tile_size=TILE, spacing=1.0)
        k = len(g) // 2
        t = read_tile(r, g, k).astype(float)
        x0, y0 = g.coords[k]
        dx, dy, _ = _offsets(t, float(x0) + 1, float(y0) - 1, 2.0, 2048, 1536)
        assert dx == pytest.approx(-1.0, abs=0.25) and dy == pytest.approx(1.0, abs=0.25)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide", "pyvips"])
def test_edge_tiles_padded_with_white(coordinate_tiff: Path, backend: str) -> None:
    full = TissueMask(mask=np.ones((96, 128), bool), downsample=16.0, spacing=8.0)
    with open_slide(coordinate_tiff, backend=backend) as r:
        g = make_grid(r.info, full, tile_size=TILE, spacing=7.0, min_tissue=0.1)  # 896 px tiles
        assert g.grid_shape == (2, 3)  # 3 columns cover 2048, the last crosses the edge
        k = int(np.nonzero((g.rows == 1) & (g.cols == 2))[0][0])
        x0, y0 = g.coords[k]
        assert (x0, y0) == (1792, 896)
        t = read_tile(r, g, k)
        f = g.size_level0[0] / TILE  # 14 level-0 px per tile px
        inside_c = int((2048 - x0) // f)  # columns wholly inside the slide
        inside_r = int((1536 - y0) // f)
        # beyond the edge: white (one tile px of anti-aliasing blur allowed at the edge)
        assert (t[:, inside_c + 2 :] == 255).all() and (t[inside_r + 2 :] == 255).all()
        assert (t[:inside_r, :inside_c, 2] < 200).all()  # slide pixels: B = (x + y) / 32 < 112
        np.testing.assert_array_equal(read_tile(r, g, k, cache=tile_cache(g)), t)


def test_read_tiles_and_geojson(rect_svs: Path, rect_spec: synthetic.SyntheticSlide) -> None:
    with open_slide(rect_svs) as r:
        g = make_grid(r.info, _truth_mask(rect_spec), tile_size=TILE, spacing=1.0, overlap=0.5)
        batch = read_tiles(r, g, [0, 1, 2])
        assert batch.shape == (3, TILE, TILE, 3) and batch.dtype == np.uint8
        np.testing.assert_array_equal(batch[1], read_tile(r, g, 1))
        assert read_tiles(r, g, []).shape == (0, TILE, TILE, 3)
    gj = grid_geojson(g)
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(g)
    feat = gj["features"][0]
    ring = feat["geometry"]["coordinates"][0]
    assert feat["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
    x0, y0 = g.coords[0]
    assert ring[0] == [float(x0), float(y0)] and ring[2] == [x0 + 128.0, y0 + 128.0]
    assert feat["properties"]["objectType"] == "tile"
    assert (
        grid_geojson(g, object_type="detection")["features"][0]["properties"]["objectType"]
        == "detection"
    )
    with pytest.raises(ValueError):
        grid_geojson(g, object_type="cell")


def test_anisotropic_pixels() -> None:
    info = SlideInfo(
        path="/x/a.tiff",
        backend="tiffslide",
        dimensions=(1000, 1000),
        level_dimensions=((1000, 1000),),
        level_downsamples=(1.0,),
        mpp=Mpp(0.5, 0.25, "override"),
    )
    full = TissueMask(mask=np.ones((10, 10), bool), downsample=100.0, spacing=50.0)
    g = make_grid(info, full, tile_size=100, spacing=1.0)
    assert g.size_level0 == (200.0, 400.0)
    assert g.grid_shape == (math.ceil((1000 - 400) / 400) + 1, math.ceil((1000 - 200) / 200) + 1)
    assert sorted({int(y) for y in g.coords[:, 1]}) == [0, 400, 800]


@pytest.mark.real_data
def test_real_pyramid_level_with_rounded_downsample(tcga_slide: Path) -> None:
    """TCGA level 1 reports downsample 2.0005 (odd width): it still serves spacing 2 x mpp."""
    with open_slide(tcga_slide, mpp=0.25) as r:
        tm = detect_tissue(r)
        g = make_grid(r.info, tm, tile_size=224, spacing=0.5)
        assert g.level == 1 and g.level_downsample == pytest.approx(2.0005, abs=1e-4)
        assert g.scale == pytest.approx(1.0, abs=1e-3)
        assert len(g) > 20
        tiles = read_tiles(r, g, [0, len(g) // 2])
        assert tiles.shape == (2, 224, 224, 3)
        assert (tiles.reshape(2, -1).mean(axis=1) < 235).all()  # tissue, not background
        # finer than level 1: level 0
        assert make_grid(r.info, tm, tile_size=224, spacing=0.4).level == 0


def test_tile_boxes_are_integer_and_share_edges(cmu_slide: Path) -> None:
    """The tiles preview, tiles.geojson and tiles.csv draw the same integer boxes; tiles
    without overlap share their edges even where the footprint is fractional (CMU:
    224 px at 0.5 um/px = 224.449 level-0 px)."""
    with open_slide(cmu_slide) as r:
        g = make_grid(r.info, detect_tissue(r), tile_size=224, spacing=0.5)
    b = tile_boxes(g)
    assert b.dtype == np.int64
    w = b[:, 2] - b[:, 0]
    assert set(w.tolist()) <= {224, 225}
    right = {(int(r), int(c)): int(x1) for r, c, x1 in zip(g.rows, g.cols, b[:, 2], strict=True)}
    left = {(int(r), int(c)): int(x0) for r, c, x0 in zip(g.rows, g.cols, b[:, 0], strict=True)}
    shared = [(k, right[k]) for k in right if (k[0], k[1] + 1) in left]
    assert shared and all(left[(r, c + 1)] == x1 for (r, c), x1 in shared)
