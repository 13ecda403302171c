"""The reliability blend: border profile, gain, window and the calibrating stitcher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_saliency.border import (
    CALIBRATION_TILES,
    MAX_GAIN,
    BorderProfile,
    CalibratingStitcher,
    measure_border_profile,
    ramp,
    reliability_window,
)
from wsi_saliency.saliency.seams import seam_ratio
from wsi_saliency.stitch import Stitcher, blend_window
from wsi_saliency.tiling import full_grid
from wsi_saliency.types import BatchResult, Mpp, SlideInfo, TileGrid

M = 14
# mean |map| per row as the demo model has it at layer3: dim first three and last rows
PROFILE = np.array([0.25, 0.7, 0.85] + [1.0] * 10 + [0.45])


def _maps(n: int, seed: int = 0, profile: np.ndarray = PROFILE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = 1.0 + 0.2 * rng.standard_normal((n, M, M))
    return base * np.outer(profile, profile)[None]


def test_profile_measures_planted_dim_rows() -> None:
    p = measure_border_profile(_maps(400))
    assert p is not None and p.n_tiles == 400
    np.testing.assert_allclose(p.rows, PROFILE, atol=0.03)
    np.testing.assert_allclose(p.cols, PROFILE, atol=0.03)


def test_profile_ignores_sign_and_nonfinite_maps() -> None:
    maps = -_maps(50)
    maps[3, 5, 5] = np.nan
    p = measure_border_profile(maps)
    assert p is not None and p.n_tiles == 49
    assert p.rows[0] == pytest.approx(0.25, abs=0.05)


@pytest.mark.parametrize("maps", [np.ones((7, M, M)), np.ones((50, 3, 3)), np.zeros((50, M, M)),
                                  np.ones((50, M))])
def test_no_profile_for_too_few_tiles_tiny_maps_or_zero_maps(maps: np.ndarray) -> None:
    assert measure_border_profile(maps) is None


def test_gain_raises_border_rows_and_leaves_the_interior_exactly_one() -> None:
    rows = (0.1, 0.5, 0.97, 0.5, *([1.0] * 8), 1.2, 0.5)  # third row within tolerance
    p = BorderProfile(rows=rows, cols=tuple([1.0] * M), n_tiles=100)
    g = p.gain()
    assert g.shape == (M, M) and g.dtype == np.float32
    assert g[0, 0] == pytest.approx(MAX_GAIN)  # 1 / 0.1 clipped
    assert g[1, 0] == pytest.approx(2.0)
    assert (g[2:12] == 1.0).all()  # the run from the top stops at 0.97; row 3 is past it
    assert g[12, 0] == pytest.approx(1 / 1.2) and g[13, 0] == pytest.approx(2.0)
    d = p.as_dict()
    assert d["tiles"] == 100 and d["gain_rows"][0] == 5.0 and d["gain_cols"] == [1.0] * M


@pytest.mark.parametrize("overlap", [0, 1, 2, 3, 7])
def test_ramps_of_neighbours_sum_to_one_over_the_overlap(overlap: int) -> None:
    r = ramp(M, overlap)
    assert (r > 0).all() and (r.max() == 1.0 or 2 * overlap >= M)
    if overlap:
        np.testing.assert_allclose(r[M - overlap:] + r[:overlap], 1.0)
    else:
        assert (r == 1.0).all()


def test_reliability_window_is_ramp_times_profile() -> None:
    p = BorderProfile(rows=tuple(PROFILE), cols=tuple(PROFILE[::-1]), n_tiles=9)
    w = reliability_window((M, M), 2, p)
    np.testing.assert_allclose(w, np.outer(ramp(M, 2) * PROFILE, ramp(M, 2) * PROFILE[::-1]),
                               rtol=1e-6)
    np.testing.assert_array_equal(blend_window("reliability", (M, M), overlap=2),
                                  np.outer(ramp(M, 2), ramp(M, 2)).astype(np.float32))


def _grid(n: int, stride_map: int) -> TileGrid:
    """``n x n`` tiles of 224 px whose stride is ``stride_map`` map pixels."""
    tile = 224
    px = tile * ((n - 1) * stride_map + M) // M
    info = SlideInfo(path="test", backend="none", dimensions=(px, px),
                     level_dimensions=((px, px),), level_downsamples=(1.0,),
                     mpp=Mpp(0.5, 0.5, "override"))
    return full_grid(info, tile_size=tile, spacing=0.5, overlap=1 - stride_map / M)


def _stitch(tmp: Path, blend: str, maps: np.ndarray, grid: TileGrid,
            border: BorderProfile | None) -> np.ndarray:
    st = Stitcher(tmp, grid, (M, M), ["normal", "tumor"], blend=blend, border=border)
    n = maps.shape[0]
    probs = np.tile(np.array([[0.3, 0.7]], np.float32), (n, 1))
    st.add(BatchResult(indices=np.arange(n), probabilities=probs, maps=maps.astype(np.float32)))
    return np.asarray(st.finalize().heatmap)[1]


def test_reliability_blend_removes_the_grid_that_hann_leaves(tmp_path: Path) -> None:
    """Tiles of a stationary random field whose maps carry the planted dim border rows:
    with the hann blend the tiles' first/last rows stay dark (the faint grid), with the
    measured profile the reliability blend brings them back to the interior level."""
    grid = _grid(12, 12)
    n = len(grid)
    maps = -_maps(n, seed=1)
    profile = measure_border_profile(maps)
    period = 12
    pos = np.arange((12 - 1) * period + M) % period
    edge, inner = (pos == 0) | (pos == 1), (pos >= 3) & (pos <= 9)

    def edge_ratio(sal: np.ndarray) -> float:
        a = np.abs(sal)
        return float(a[edge][:, inner].mean() / a[inner][:, inner].mean())

    hann = _stitch(tmp_path / "h", "hann", maps, grid, None)
    rel = _stitch(tmp_path / "r", "reliability", maps, grid, profile)
    assert edge_ratio(hann) < 0.85
    assert 0.95 <= edge_ratio(rel) <= 1.05
    r = seam_ratio(rel, period)
    assert 0.9 <= r.magnitude <= 1.1 and 0.85 <= r.tv <= 1.15, r


def test_reliability_blend_keeps_tile_interiors_bitwise(tmp_path: Path) -> None:
    """Overlap 0: every heatmap pixel comes from one tile; the gain is exactly 1.0 inside
    the tile, so interior pixels are the engine's map (up to the rounding of dividing by
    the window weight), border pixels the map times the gain."""
    grid = _grid(3, M)
    n = len(grid)
    maps = _maps(n, seed=2).astype(np.float32)
    profile = measure_border_profile(maps)
    assert profile is not None
    sal = _stitch(tmp_path / "r", "reliability", maps, grid, profile)
    tile = sal[:M, :M]
    assert (profile.gain()[3:11, 3:11] == 1.0).all()
    np.testing.assert_allclose(tile[3:11, 3:11], maps[0, 3:11, 3:11], rtol=1e-6)
    assert not np.allclose(tile[0], maps[0, 0], rtol=0.1)  # the dim first row is raised
    np.testing.assert_allclose(tile, maps[0] * profile.gain(), rtol=1e-6)


def test_probability_channels_do_not_depend_on_the_profile(tmp_path: Path) -> None:
    """The profile weights the saliency channel only: probabilities stitched with it
    equal those of a prediction-only stitcher (``--method none``) on the same grid."""
    grid = _grid(4, 12)
    n = len(grid)
    maps = _maps(n, seed=3).astype(np.float32)
    probs = np.random.default_rng(0).dirichlet((1, 1), n).astype(np.float32)
    profile = measure_border_profile(maps)
    with_sal = Stitcher(tmp_path / "a", grid, (M, M), ["n", "t"], blend="reliability",
                        border=profile)
    with_sal.add(BatchResult(indices=np.arange(n), probabilities=probs, maps=maps))
    none = Stitcher(tmp_path / "b", grid, (M, M), ["n", "t"], blend="reliability",
                    saliency=False)
    none.add(BatchResult(indices=np.arange(n), probabilities=probs, maps=None))
    a, b = np.asarray(with_sal.finalize().heatmap), np.asarray(none.finalize().heatmap)
    assert a.shape[0] == 3 and b.shape[0] == 2
    np.testing.assert_allclose(a[[0, 2]], b, rtol=1e-6)
    assert not np.allclose(a[1], _stitch(tmp_path / "c", "reliability", maps, grid, None))


def _batch(start: int, n: int, value: float) -> BatchResult:
    idx = np.arange(start, start + n)
    maps = np.full((n, M, M), value, np.float32)
    maps[:, 0] *= 0.5  # first row at half the interior
    return BatchResult(indices=idx, probabilities=np.zeros((n, 2), np.float32), maps=maps)


class _Recorder:
    def __init__(self, border: BorderProfile | None) -> None:
        self.border = border
        self.added: list[int] = []

    def add(self, result: BatchResult) -> None:
        self.added.extend(int(i) for i in result.indices)


def test_calibrating_stitcher_holds_batches_until_the_profile_is_measured() -> None:
    made: list[_Recorder] = []

    def make(border: BorderProfile | None) -> _Recorder:
        made.append(_Recorder(border))
        return made[-1]

    cs = CalibratingStitcher(make, calibrate=True, n_tiles=40)
    cs.add(_batch(0, 32, 1.0))
    assert not made and cs.profile is None  # held back
    cs.add(_batch(32, 32, 1.0))  # 64 >= 40: measured on the first 40, then released
    assert len(made) == 1 and made[0].added == list(range(64))
    assert cs.profile is not None and cs.profile.n_tiles == 40
    assert cs.profile.rows[0] == pytest.approx(0.5)
    cs.add(_batch(64, 8, 1.0))  # straight through
    assert cs.finish() is made[0] and made[0].added == list(range(72))


def test_calibrating_stitcher_finishes_small_slides_and_can_be_off() -> None:
    made: list[_Recorder] = []

    def make(border: BorderProfile | None) -> _Recorder:
        made.append(_Recorder(border))
        return made[-1]

    few = CalibratingStitcher(make, calibrate=True)
    few.add(_batch(0, 5, 1.0))  # fewer than MIN_CALIBRATION_TILES: no profile
    rec = few.finish()
    assert rec.border is None and rec.added == list(range(5)) and few.profile is None
    off = CalibratingStitcher(make, calibrate=False)
    assert len(made) == 2 and made[1].border is None  # built at once
    off.add(_batch(0, CALIBRATION_TILES + 1, 1.0))
    assert made[1].added == list(range(CALIBRATION_TILES + 1))
