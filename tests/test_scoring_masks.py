"""The Camelyon16 evaluation mask: 75 um growth and 275 um ITC rule scale with the MPP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from wsi_saliency.scoring.masks import (
    dilation_threshold_px,
    evaluation_mask,
    heatmap_lesion_mask,
    itc_threshold_px,
)

MPPS = (0.243, 0.5)


def test_thresholds_in_level5_pixels() -> None:
    # the organisers' numbers at 0.243 um/px: 75/(2*0.243*32) and 275/(0.243*32) = 35.36
    assert dilation_threshold_px(0.243) == pytest.approx(4.8225, abs=1e-4)
    assert itc_threshold_px(0.243) == pytest.approx(35.365, abs=1e-3)
    assert dilation_threshold_px(0.5) == pytest.approx(2.34375)
    assert itc_threshold_px(0.5) == pytest.approx(17.1875)
    assert dilation_threshold_px(0.5, level=4) == pytest.approx(2 * 2.34375)


def _um_box(mpp: float, x0: float, y0: float, x1: float, y1: float) -> shapely.Polygon:
    """A box given in um, as level-0 px of a slide at ``mpp``."""
    return shapely.box(x0 / mpp, y0 / mpp, x1 / mpp, y1 / mpp)


def _um_disc(mpp: float, cx: float, cy: float, d: float) -> shapely.Geometry:
    return shapely.Point(cx / mpp, cy / mpp).buffer(d / 2 / mpp, quad_segs=32)


def _dims(mpp: float, w_um: float, h_um: float) -> tuple[int, int]:
    return math.ceil(w_um / mpp), math.ceil(h_um / mpp)


@pytest.mark.parametrize("mpp", MPPS)
@pytest.mark.parametrize(("gap_um", "n_labels"), [(50.0, 1), (100.0, 2)])
def test_lesions_closer_than_75um_merge(mpp: float, gap_um: float, n_labels: int) -> None:
    a = _um_box(mpp, 500, 500, 900, 900)
    b = _um_box(mpp, 900 + gap_um, 500, 1300 + gap_um, 900)
    m = evaluation_mask(shapely.union_all([a, b]), _dims(mpp, 2000, 1500), (mpp, mpp))
    assert m.n_labels == n_labels


@pytest.mark.parametrize("mpp", MPPS)
def test_growth_is_37_5um_each_side(mpp: float) -> None:
    side = 400.0
    m = evaluation_mask(_um_box(mpp, 500, 500, 500 + side, 500 + side),
                        _dims(mpp, 1500, 1500), (mpp, mpp))
    px_um = 32 * mpp
    width_um = (m.labels[m.labels.shape[0] // 2] > 0).sum() * px_um
    # 400 um + 2 x 37.5 um, to within one level-5 pixel each side
    assert abs(width_um - (side + 75.0)) <= 2 * px_um


@pytest.mark.parametrize("mpp", MPPS)
@pytest.mark.parametrize(("diameter_um", "is_itc"), [(150.0, True), (260.0, False)])
def test_itc_rule_is_physical(mpp: float, diameter_um: float, is_itc: bool) -> None:
    # 150 um + 75 um growth = 225 um < 275 um: ITC; 260 + 75 = 335 um: a lesion to find
    m = evaluation_mask(_um_disc(mpp, 600, 600, diameter_um), _dims(mpp, 1200, 1200), (mpp, mpp))
    assert m.n_labels == 1
    assert (m.itc == {1}) is is_itc
    assert m.n_lesions == (0 if is_itc else 1)


def test_same_pixel_size_different_mpp_changes_the_verdict() -> None:
    # a 600 px disc is 146 um at 0.243 um/px (ITC) and 300 um at 0.5 um/px (not an ITC)
    disc = shapely.Point(1500, 1500).buffer(300, quad_segs=32)
    assert evaluation_mask(disc, (3000, 3000), (0.243, 0.243)).itc == {1}
    assert evaluation_mask(disc, (3000, 3000), (0.5, 0.5)).itc == frozenset()


def test_holes_are_filled_and_labels_are_8_connected() -> None:
    ring = shapely.box(0, 0, 3200, 3200).difference(shapely.box(640, 640, 2560, 2560))
    m = evaluation_mask(ring, (4000, 4000), (0.243, 0.243))
    assert m.n_labels == 1
    assert m.label_at(1600, 1600) == 1  # the hole is lesion after filling
    # two lesions touching only diagonally (after growth) are one component: level 0 mpp
    # large enough that growth is < 1 px, so the raster is the polygons themselves
    diag = shapely.union_all([shapely.box(0, 0, 64, 64), shapely.box(64, 64, 128, 128)])
    m2 = evaluation_mask(diag, (256, 256), (5.0, 5.0))
    assert dilation_threshold_px(5.0) < 1
    assert m2.n_labels == 1


def test_tiny_lesion_is_kept_and_empty_geometry_is_negative() -> None:
    tiny = shapely.box(100, 100, 104, 104)  # far smaller than a level-5 pixel
    m = evaluation_mask(tiny, (1000, 1000), (0.243, 0.243))
    assert m.n_labels == 1 and m.itc == {1}
    empty = evaluation_mask(shapely.Polygon(), (1000, 1000), (0.243, 0.243))
    assert empty.n_labels == 0 and empty.labels.shape == (32, 32)


def test_mask_shape_and_lookup_floor_division() -> None:
    m = evaluation_mask(shapely.box(0, 0, 100, 100), (1001, 65), (0.243, 0.243))
    assert m.labels.shape == (3, 32)  # ceil(65 / 32), ceil(1001 / 32)
    assert m.label_at(-5, 0) == 0 and m.label_at(5000, 0) == 0


def test_heatmap_mask_at_pixel_centres_and_anisotropic() -> None:
    geom = shapely.box(0, 0, 150, 70)  # level-0 px
    m = heatmap_lesion_mask(geom, (4, 6), (32.0, 32.0))
    # centres at 16, 48, 80, 112, 144 (x) and 16, 48 (y) are inside
    expect = np.zeros((4, 6), bool)
    expect[:2, :5] = True
    np.testing.assert_array_equal(m, expect)
    # sx = 32, sy = 16: rows at centres 8, 24, 40, 56 are inside, 72 is not
    m2 = heatmap_lesion_mask(geom, (8, 6), (32.0, 16.0))
    assert m2[:, 0].sum() == 4 and m2[0].sum() == 5


@pytest.mark.parametrize("mpp", [(0.243, 0.243), (0.5, 0.5), (0.25, 0.3)])
def test_cropped_computation_equals_the_whole_grid(mpp: tuple[float, float]) -> None:
    """The mask is computed on the lesions' bounding box; compare with the whole grid."""
    from scipy import ndimage
    from skimage import measure

    from wsi_saliency.roi import rasterize_geometry

    rng = np.random.default_rng(5)
    blobs = [shapely.Point(*rng.uniform(800, 7000, 2)).buffer(rng.uniform(50, 600))
             for _ in range(8)]
    ring = shapely.box(5000, 5000, 7000, 7000).difference(shapely.box(5400, 5400, 6600, 6600))
    geom = shapely.union_all([*blobs, ring, shapely.box(0, 0, 300, 300)])  # one at the edge
    dims = (8000, 7600)
    m = evaluation_mask(geom, dims, mpp)
    raw = rasterize_geometry(geom, m.labels.shape, 32.0)
    dist = ndimage.distance_transform_edt(~raw, sampling=(mpp[1] / mpp[0], 1.0))
    ref = measure.label(ndimage.binary_fill_holes(dist < dilation_threshold_px(mpp[0])),
                        connectivity=2)
    np.testing.assert_array_equal(m.labels, ref)
