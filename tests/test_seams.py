"""Seam ratio (:mod:`wsi_saliency.saliency.seams`) on hand-made maps, and the default overlap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wsi_saliency.saliency.seams import (
    heatmap_seams,
    resolve_overlap,
    seam_free_overlap,
    seam_ratio,
)
from wsi_saliency.stitch import check_tile_geometry


def _framed_checkerboard() -> np.ndarray:
    """8 x 8 map of 2 x 2 cells of 4 x 4 px: every cell's 1 px frame is +1 or -1 (a
    checkerboard of cells), its 2 x 2 interior a checkerboard of +-2."""
    x = np.zeros((8, 8))
    for a in range(2):
        for b in range(2):
            cell = np.full((4, 4), 1.0 if (a + b) % 2 == 0 else -1.0)
            cell[1:3, 1:3] = [[2.0, -2.0], [-2.0, 2.0]]
            x[4 * a:4 * a + 4, 4 * b:4 * b + 4] = cell
    return x


def test_framed_checkerboard_gives_the_hand_computed_ratios() -> None:
    # magnitude: border |1| over interior |2| = 0.5. TV: every cross-border pair differs
    # by 2 (frames of opposite sign); inside a cell the columns through the interior
    # read (+-1, 2, -2, +-1) or (+-1, -2, 2, +-1): 1 + 4 + 3 = 8 per column and per row,
    # two of each per cell, so 32 over 24 pairs (frame columns/rows add 0): 4/3.
    # Ratio 2 / (4/3) = 1.5.
    r = seam_ratio(_framed_checkerboard(), 4)
    assert r.magnitude == pytest.approx(0.5)
    assert r.tv == pytest.approx(1.5)
    assert (r.n_border, r.n_interior) == (48, 16)


def test_offset_and_rectangular_period() -> None:
    x = _framed_checkerboard()
    shifted = np.roll(x, (1, 2), axis=(0, 1))[:, :]
    # cells now start at (1, 2); the rolled-in part wraps, so only whole cells compare
    r = seam_ratio(shifted[1:, 2:], 4, offset=(0, 0))
    r_off = seam_ratio(shifted, (4, 4), offset=(1, 2))
    assert r_off.magnitude == pytest.approx(0.5)
    assert r.n_border + r.n_interior == 6 * 7
    wide = np.kron(_framed_checkerboard(), np.ones((1, 1)))
    assert seam_ratio(wide, (4, 4)).tv == pytest.approx(seam_ratio(wide, 4).tv)


def test_constant_map_is_one_and_nan_is_ignored() -> None:
    r = seam_ratio(np.full((28, 28), 3.0), 14)
    assert (r.magnitude, r.tv) == (1.0, 1.0)
    x = _framed_checkerboard()
    x[4:8, 4:8] = np.nan  # one cell without data
    r = seam_ratio(x, 4)
    assert r.magnitude == pytest.approx(0.5) and r.tv == pytest.approx(1.5)
    assert (r.n_border, r.n_interior) == (36, 12)
    x[0, 0] = np.nan  # drops a frame pixel and its two within-cell pairs (both 0):
    r = seam_ratio(x, 4)  # within 96 / 70 pairs, cross still 2
    assert r.magnitude == pytest.approx(0.5) and r.tv == pytest.approx(2 / (96 / 70))
    assert (r.n_border, r.n_interior) == (35, 12)
    assert np.isnan(seam_ratio(np.full((4, 4), np.nan), 4).magnitude)


def test_a_random_field_has_no_seams_and_a_dark_frame_has() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(280, 280))
    r = seam_ratio(x, 14)
    assert abs(r.magnitude - 1) < 0.03 and abs(r.tv - 1) < 0.03
    framed = x.copy()
    pos = np.arange(280) % 14
    edge = (pos == 0) | (pos == 13)
    framed[edge, :] *= 0.1
    framed[:, edge] *= 0.1
    r = seam_ratio(framed, 14)
    assert r.magnitude < 0.15 and r.tv < 0.9


def test_heatmap_seams_in_bands_equals_whole_map() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 61, 47)).astype(np.float32)
    x[1, 10:20, 5:30] = np.nan
    whole = seam_ratio(x[1], 12)
    for band in (1, 5, 13, 1024):
        banded = heatmap_seams(x, 224, 192, (14, 14), channel=1, band_rows=band)
        assert banded.magnitude == pytest.approx(whole.magnitude, rel=1e-9)
        assert banded.tv == pytest.approx(whole.tv, rel=1e-9)
        assert (banded.n_border, banded.n_interior) == (whole.n_border, whole.n_interior)
    assert heatmap_seams(x[1], 224, 224, (14, 14)).n_border == seam_ratio(x[1], 14).n_border
    with pytest.raises(ValueError, match="2-D"):
        seam_ratio(x, 4)
    with pytest.raises(ValueError, match="period"):
        seam_ratio(x[0], 0)


@pytest.mark.parametrize(
    ("tile", "m", "expected"),
    [(224, 14, 1 / 7), (224, 28, 1 / 7), (224, 7, 1 / 7), (256, 16, 2 / 16), (512, 16, 2 / 16),
     (225, 14, 0.0)],
)
def test_seam_free_overlap_lands_on_whole_heatmap_pixels(tile: int, m: int,
                                                         expected: float) -> None:
    overlap = seam_free_overlap(tile, (m, m))
    assert overlap == pytest.approx(expected)
    check_tile_geometry(tile, overlap, (m, m))  # raises if it does not land
    assert resolve_overlap(None, tile, (m, m)) == overlap
    assert resolve_overlap(0.5, tile, (m, m)) == 0.5


# ------------------------------------------------------------------ end to end, defaults

UNIFORM = 2240  # px at 0.5 um/px: 10 x 10 tiles of 224 px at overlap 0


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default run (demo model, layer3, gradient x activation, default smoothing,
    overlap and blend) on a slide that is normal tissue everywhere."""
    from wsi_saliency import synthetic
    from wsi_saliency.config import InferenceConfig, RunConfig
    from wsi_saliency.models import load_model
    from wsi_saliency.worker import run_slide

    d = tmp_path_factory.mktemp("uniform")
    spec = synthetic.SyntheticSlide(
        width=UNIFORM, height=UNIFORM, mpp=0.5,
        tissue=(((0.0, 0.0), (UNIFORM, 0.0), (UNIFORM, UNIFORM), (0.0, UNIFORM)),), seed=3)
    slide = synthetic.write_slide(spec, d / "uniform.svs")
    out = d / "out"
    out.mkdir()
    run_slide(slide, load_model(None),
              RunConfig(inference=InferenceConfig(device="cpu", workers=0)), out)
    return out


def _stitched_saliency(out: Path) -> tuple[np.ndarray, dict]:
    import json

    import zarr

    root = zarr.open_group(str(out / "heatmaps.ome.zarr"), mode="r")
    attrs: Any = dict(root.attrs)
    path = attrs["multiscales"][0]["datasets"][0]["path"]
    return np.asarray(root[path])[1], json.loads((out / "run.json").read_text())


def test_default_run_on_uniform_tissue_is_seam_free(uniform_run: Path) -> None:
    """Goal of issue 9: seam ratio (magnitude and TV) within [0.85, 1.15] at the
    defaults. On the previous defaults (overlap 0, zero-padded box) this map had a
    magnitude ratio of about 0.13: every tile had a dark frame."""
    sal, run = _stitched_saliency(uniform_run)
    tile, stride = run["tiling"]["tile_size"], run["tiling"]["stride"]
    period = stride * 14 // tile
    r = seam_ratio(sal, period)
    assert 0.85 <= r.magnitude <= 1.15, r
    assert 0.85 <= r.tv <= 1.15, r
    # The tile borders proper: with stride 12 of 14 map pixels a tile's last row lies at
    # position 1 of the next stride cell, which the ratio above counts as interior. The
    # rows/columns that are a tile's first or last map row must be as bright as the
    # interior too: with the hann blend and no border gain (the previous default) they
    # stayed at about 0.8 (a faint grid), here about 0.99.
    pos = np.arange(sal.shape[0]) % period
    tile_edge = (pos == 0) | (pos == (14 - 1) % period)
    interior = (pos >= 3) & (pos <= period - 3)
    a = np.abs(sal)
    ratio_rows = np.nanmean(a[tile_edge][:, interior]) / np.nanmean(a[interior][:, interior])
    ratio_cols = np.nanmean(a[interior][:, tile_edge]) / np.nanmean(a[interior][:, interior])
    assert 0.9 <= ratio_rows <= 1.1, ratio_rows
    assert 0.9 <= ratio_cols <= 1.1, ratio_cols


def test_run_json_records_the_seam_ratio(uniform_run: Path) -> None:
    sal, run = _stitched_saliency(uniform_run)
    tile, stride = run["tiling"]["tile_size"], run["tiling"]["stride"]
    assert run["tiling"]["overlap"] == pytest.approx(1 / 7) and stride == 192
    assert run["config"]["tiling"]["overlap"] is None  # the default, resolved per run
    assert run["heatmap"]["blend"] == "reliability"
    border = run["seams"]["border"]  # the border profile the blend was measured on
    assert border["tiles"] == min(256, run["tiling"]["n_tiles"])
    assert len(border["rows"]) == len(border["gain_cols"]) == 14
    assert border["rows"][0] < 0.5 and border["gain_rows"][0] > 2  # dim first row, raised
    assert border["gain_rows"][5:9] == [1.0] * 4  # the interior untouched
    expected = seam_ratio(sal, stride * 14 // tile)
    assert run["seams"]["magnitude"] == pytest.approx(expected.magnitude, abs=1e-4)
    assert run["seams"]["tv"] == pytest.approx(expected.tv, abs=1e-4)
    assert run["seams"]["n_border"] == expected.n_border
    assert run["seams"]["n_interior"] == expected.n_interior
