"""The synthetic slide generator: determinism, geometry, texture, file formats."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import openslide
import pytest
import tiffslide

from wsi_saliency import synthetic
from wsi_saliency.synthetic import SyntheticSlide


def _rect(x0: float, y0: float, x1: float, y1: float) -> tuple[tuple[float, float], ...]:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


SPEC = SyntheticSlide(
    width=1024,
    height=768,
    mpp=0.5,
    tissue=(_rect(100, 200, 700, 600),),
    tumour=(_rect(400, 300, 600, 500),),
    seed=5,
)


def test_render_is_deterministic_and_region_independent() -> None:
    big = synthetic.render_region(SPEC, 50, 150, 600, 500)
    again = synthetic.render_region(SPEC, 50, 150, 600, 500)
    part = synthetic.render_region(SPEC, 350, 250, 128, 96)
    assert big.dtype == np.uint8 and big.shape == (500, 600, 3)
    np.testing.assert_array_equal(big, again)
    np.testing.assert_array_equal(big[100:196, 300:428], part)
    # the same at a downsample, on the same sample lattice
    big4 = synthetic.render_region(SPEC, 0, 0, 200, 150, downsample=4)
    part4 = synthetic.render_region(SPEC, 40, 80, 50, 40, downsample=4)
    np.testing.assert_array_equal(big4[20:60, 10:60], part4)


def test_seed_changes_texture_not_geometry() -> None:
    other = SyntheticSlide(**{**SPEC.__dict__, "seed": 6})
    a = synthetic.render_region(SPEC, 100, 200, 128, 128)
    b = synthetic.render_region(other, 100, 200, 128, 128)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(synthetic.tissue_mask(SPEC, 8), synthetic.tissue_mask(other, 8))


def test_pixel_centre_convention_at_tissue_edge() -> None:
    # tissue starts at x = 100: pixel 99 covers [99, 100) -> background, pixel 100 tissue
    row = synthetic.render_region(SPEC, 96, 300, 8, 1)[0]
    bg = np.array(synthetic.BACKGROUND_RGB)
    assert all((row[c] == bg).all() for c in range(4))
    assert all((row[c] != bg).any() for c in range(4, 8))
    # downsample 8: mask pixel c samples x = 8c + 4; the edge x = 100 lies between
    # the samples of pixels 11 (x = 92) and 13 (x = 108)
    m = synthetic.tissue_mask(SPEC, 8)
    assert m.shape == (96, 128)
    assert not m[40, 11] and m[40, 13]
    # non-integer downsample keeps the ceil shape
    assert synthetic.tissue_mask(SPEC, 10).shape == (77, 103)


def test_masks_match_polygons() -> None:
    tis = synthetic.tissue_mask(SPEC, 1)
    tum = synthetic.tumour_mask(SPEC, 1)
    assert tis.sum() == 600 * 400
    assert tum.sum() == 200 * 200
    assert tis[tum].all()  # tumour counts as tissue
    assert tis[200, 100] and not tis[199, 100] and not tis[200, 99]


def test_tumour_is_darker_and_bluer_than_normal_tissue() -> None:
    tumour = synthetic.render_region(SPEC, 420, 320, 160, 160).reshape(-1, 3).mean(0)
    normal = synthetic.render_region(SPEC, 120, 220, 160, 160).reshape(-1, 3).mean(0)
    assert tumour.sum() < normal.sum() - 60
    assert tumour[2] / tumour[0] > normal[2] / normal[0] + 0.1
    # nuclei exist in normal tissue: some pixels much darker than stroma
    px = synthetic.render_region(SPEC, 120, 220, 200, 200).reshape(-1, 3)
    frac_dark = (px.sum(1) < 450).mean()
    assert 0.02 < frac_dark < 0.35


def test_sample_patches_balanced_and_labelled_correctly() -> None:
    spec = synthetic.demo_slide_spec()
    patches, labels = synthetic.sample_patches(spec, 20, 64, 0.5, seed=3)
    assert patches.shape == (20, 64, 64, 3) and patches.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.sum() == 10
    p2, l2 = synthetic.sample_patches(spec, 20, 64, 0.5, seed=3)
    np.testing.assert_array_equal(patches, p2)
    np.testing.assert_array_equal(labels, l2)
    mean_t = patches[labels == 1].reshape(-1, 3).mean(0)
    mean_n = patches[labels == 0].reshape(-1, 3).mean(0)
    assert mean_t.sum() < mean_n.sum()


def test_demo_spec_is_fixed() -> None:
    a, b = synthetic.demo_slide_spec(), synthetic.demo_slide_spec()
    assert a == b
    assert (a.width, a.height, a.mpp) == (6144, 4096, 0.5)
    assert 2 <= len(a.tumour) <= 3
    tis = synthetic.tissue_mask(a, 16)
    tum = synthetic.tumour_mask(a, 16)
    assert 0.15 < tis.mean() < 0.6
    assert tum.any() and tis[tum].all()


@pytest.mark.parametrize("kind", ["svs", "tiff"])
def test_written_slide_opens_with_both_backends(tmp_path: Path, kind: str) -> None:
    path = synthetic.write_slide(
        SPEC, tmp_path / f"s.{kind}", kind=kind, tile=128, compression="zlib"
    )
    expected = synthetic.render_region(SPEC, 0, 0, SPEC.width, SPEC.height)
    with openslide.OpenSlide(str(path)) as osl:
        assert osl.properties["openslide.vendor"] == ("aperio" if kind == "svs" else "generic-tiff")
        assert osl.dimensions == (1024, 768)
        assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        a = np.asarray(osl.read_region((0, 0), 0, (1024, 768)).convert("RGB"))
        np.testing.assert_array_equal(a, expected)  # lossless
        ds = osl.level_downsamples
        assert ds[1] == pytest.approx(4.0 if kind == "svs" else 2.0)
        level_dims = osl.level_dimensions
    ts = tiffslide.TiffSlide(path)
    try:
        assert ts.dimensions == (1024, 768)
        assert ts.level_dimensions == level_dims
        assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
        b = ts.read_region((0, 0), 0, (1024, 768), as_array=True)
        np.testing.assert_array_equal(b, expected)
    finally:
        ts.close()


def test_write_without_mpp(tmp_path: Path) -> None:
    for kind in ("svs", "tiff"):
        path = synthetic.write_slide(SPEC, tmp_path / f"n.{kind}", kind=kind, write_mpp=False)
        with openslide.OpenSlide(str(path)) as osl:
            assert "openslide.mpp-x" not in osl.properties


def test_jpeg_slide_close_to_render(tmp_path: Path) -> None:
    path = synthetic.write_slide(SPEC, tmp_path / "j.svs", kind="svs")
    with openslide.OpenSlide(str(path)) as osl:
        a = np.asarray(osl.read_region((256, 256), 0, (256, 256)).convert("RGB")).astype(int)
    b = synthetic.render_region(SPEC, 256, 256, 256, 256).astype(int)
    assert np.abs(a - b).mean() < 8


def test_sparse_large_slide_is_fast_and_small(tmp_path: Path) -> None:
    spec = SyntheticSlide(width=30000, height=30000, tissue=(_rect(1000, 1000, 1500, 1400),))
    t0 = time.perf_counter()
    path = synthetic.write_slide(spec, tmp_path / "big.svs")
    assert time.perf_counter() - t0 < 30
    assert path.stat().st_size < 60_000_000
    with openslide.OpenSlide(str(path)) as osl:
        assert osl.dimensions == (30000, 30000)
        corner = np.asarray(osl.read_region((20000, 20000), 0, (64, 64)).convert("RGB"))
        assert np.abs(corner.astype(int) - synthetic.BACKGROUND_RGB).max() <= 3


def test_coordinate_slide_encodes_coordinates(tmp_path: Path) -> None:
    path = synthetic.write_coordinate_slide(tmp_path / "c.tiff", 1024, 512, n_levels=3)
    with openslide.OpenSlide(str(path)) as osl:
        assert osl.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        for level, d in enumerate((1, 2, 4)):
            w, h = 1024 // d, 512 // d
            a = np.asarray(osl.read_region((0, 0), level, (w, h)).convert("RGB")).astype(float)
            cx = (np.arange(w) + 0.5) * d
            cy = (np.arange(h) + 0.5) * d
            exp = synthetic.coordinate_values(cx[None, :], cy[:, None])
            # away from the triangle kinks the box-filtered value is the centre's value
            ok_x = np.abs(np.mod(cx, 255) - 127.5) < 127.5 - d
            ok_y = np.abs(np.mod(cy, 255) - 127.5) < 127.5 - d
            sel = ok_y[:, None] & ok_x[None, :]
            assert np.abs(a - exp)[sel].max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="lossless"):
        synthetic.write_coordinate_slide(tmp_path / "x.tiff", 256, 256, compression="jpeg")
