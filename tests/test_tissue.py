"""Tissue detection: reference masks, physical thumbnail choice, options, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import RECT, SlideFactory, rect_polygon
from PIL import Image
from scipy.ndimage import binary_dilation
from skimage.segmentation import find_boundaries
from skimage.transform import resize

from wsi_saliency import synthetic
from wsi_saliency.errors import ConfigError, NoTissueError
from wsi_saliency.readers import open_slide
from wsi_saliency.tissue import (
    CONTOUR_RGB,
    TISSUE_PNG_MAX,
    TISSUE_PNG_MIN,
    detect_tissue,
    mask_from_thumbnail,
    save_tissue_png,
    thumbnail_at_spacing,
    tissue_overlay,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("slide", "reference", "mpp"),
    [
        ("CMU-1-Small-Region.svs", "tissue-mask-cmu-1-small-region.npy", None),
        ("TCGA-CR-7395-01A-01-TS1.svs", "tissue-mask-tcga-cr-7395.npy", 0.25),
    ],
)
@pytest.mark.parametrize("backend", ["openslide", "tiffslide", "pyvips"])
def test_real_slides_match_reference_masks(
    test_data_dir: Path, slide: str, reference: str, mpp: float | None, backend: str
) -> None:
    if backend == "pyvips" and slide.startswith("TCGA"):
        pytest.skip("JPEG 2000 slide: pyvips-binary's libvips cannot decode it (auto falls back)")
    ref = np.load(test_data_dir / "slides" / "tissue_masks" / reference)
    with open_slide(test_data_dir / "slides" / slide, backend=backend, mpp=mpp) as r:
        tm = detect_tissue(r)
    assert tm.method == "otsu" and tm.spacing == 8.0
    ours = resize(tm.mask.astype(float), ref.shape, order=1) > 0.5
    iou = _iou(ours, ref)
    print(f"tissue IoU {slide} ({backend}): {iou:.3f}")
    assert iou >= 0.8


def test_synthetic_tissue_found(demo_svs: Path) -> None:
    spec = synthetic.demo_slide_spec()
    with open_slide(demo_svs) as r:
        tm = detect_tissue(r)
    assert tm.downsample == pytest.approx(16.0)
    truth = synthetic.tissue_mask(spec, 16.0)
    assert tm.mask.shape == truth.shape
    assert _iou(tm.mask, truth) > 0.9
    # dilation keeps borders: nearly all true tissue is inside the mask
    assert tm.mask[truth].mean() > 0.99


def test_thumbnail_chosen_by_physical_size(slide_factory: SlideFactory) -> None:
    """Same tissue at two scan resolutions and two pyramid layouts: same mask."""
    tissue = (rect_polygon(400, 300, 1200, 900),)
    a = synthetic.SyntheticSlide(width=1600, height=1200, mpp=0.5, tissue=tissue, seed=1)
    b = synthetic.SyntheticSlide(
        width=3200,
        height=2400,
        mpp=0.25,
        seed=1,
        tissue=(rect_polygon(800, 600, 2400, 1800),),
    )
    masks = []
    for spec, kind in ((a, "svs"), (a, "tiff"), (b, "svs"), (b, "tiff")):
        with open_slide(slide_factory(spec, kind=kind)) as r:
            rgb, ds = thumbnail_at_spacing(r, 8.0)
            assert ds == pytest.approx(8.0 / spec.mpp)
            tm = detect_tissue(r, spacing=8.0)
            assert tm.spacing == 8.0
            masks.append(tm.mask)
    assert all(m.shape == (75, 100) for m in masks)
    for m in masks[1:]:
        assert _iou(m, masks[0]) > 0.97


def test_all_white_slide_has_no_tissue(slide_factory: SlideFactory) -> None:
    white = synthetic.SyntheticSlide(width=1024, height=1024, mpp=0.5)
    with open_slide(slide_factory(white)) as r, pytest.raises(NoTissueError, match="no tissue"):
        detect_tissue(r)


def test_fixed_threshold(rect_svs: Path) -> None:
    with open_slide(rect_svs) as r:
        tm = detect_tissue(r, method="fixed", threshold=0.1)
        assert tm.method == "fixed" and tm.threshold == 0.1 and tm.mask.any()
        with pytest.raises(NoTissueError):
            detect_tissue(r, method="fixed", threshold=0.99)
        with pytest.raises(ConfigError, match="threshold"):
            detect_tissue(r, method="fixed")
        with pytest.raises(ConfigError, match="method"):
            detect_tissue(r, method="kmeans")


def test_small_objects_removed_by_area_in_um2(slide_factory: SlideFactory) -> None:
    # a 60 x 60 um speck (3600 um^2) next to a large piece
    spec = synthetic.SyntheticSlide(
        width=2048,
        height=1024,
        mpp=0.5,
        seed=2,
        tissue=(rect_polygon(100, 100, 900, 900), rect_polygon(1500, 400, 1620, 520)),
    )
    with open_slide(slide_factory(spec, kind="tiff")) as r:
        default = detect_tissue(r)  # min_object_um2 = 20000
        keep = detect_tissue(r, min_object_um2=1000.0)
    speck = (slice(25, 33), slice(94, 101))  # the speck at 8 um/px (16 px per mask px)
    assert not default.mask[speck].any()
    assert keep.mask[speck].any()


def test_holes_filled(slide_factory: SlideFactory) -> None:
    ring = (
        (100.0, 100.0),
        (900.0, 100.0),
        (900.0, 900.0),
        (100.0, 900.0),
        (100.0, 100.0),
        (400.0, 400.0),
        (400.0, 560.0),
        (560.0, 560.0),
        (560.0, 400.0),
        (400.0, 400.0),
    )  # a square with a 80 x 80 um hole (one polygon, even-odd)
    spec = synthetic.SyntheticSlide(width=1024, height=1024, mpp=0.5, tissue=(ring,), seed=4)
    truth = synthetic.tissue_mask(spec, 16)
    assert not truth[30, 30]  # the hole is background in the slide
    with open_slide(slide_factory(spec, kind="tiff")) as r:
        tm = detect_tissue(r)
    assert tm.mask[28:33, 28:33].all()


def test_roi_restricts(rect_svs: Path, tmp_path: Path) -> None:
    roi = tmp_path / "roi.geojson"
    roi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[0, 0], [1024, 0], [1024, 1536], [0, 1536], [0, 0]]],
                        },
                    }
                ],
            }
        )
    )
    with open_slide(rect_svs) as r:
        full = detect_tissue(r)
        part = detect_tissue(r, roi=roi)
    assert part.method == "otsu+roi"
    assert part.mask[:, :64].sum() == full.mask[:, :64].sum()
    assert not part.mask[:, 64:].any() and full.mask[:, 64:].any()
    # a mask PNG at another scale (1/32 of level 0): the right half only
    png = tmp_path / "roi.png"
    m = np.zeros((48, 64), np.uint8)
    m[:, 32:] = 255
    Image.fromarray(m).save(png)
    with open_slide(rect_svs) as r:
        right = detect_tissue(r, roi=png)
    assert not right.mask[:, :64].any() and right.mask[:, 64:].any()
    # an ROI outside the tissue leaves nothing
    far = tmp_path / "far.geojson"
    far.write_text(
        json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [100, 0], [100, 100], [0, 0]]]})
    )
    with open_slide(rect_svs) as r, pytest.raises(NoTissueError, match="ROI"):
        detect_tissue(r, roi=far)


def test_save_tissue_png_enlarged_with_exact_contour(rect_svs: Path, tmp_path: Path) -> None:
    with open_slide(rect_svs) as r:
        tm = detect_tissue(r)
        thumb, _ = thumbnail_at_spacing(r, tm.spacing)
        out = save_tissue_png(r, tm, tmp_path / "tissue.png")
    assert tm.mask.shape == (96, 128)
    img = np.asarray(Image.open(out).convert("RGB"))
    k = 8  # smallest whole factor bringing 128 px to >= 1024 px
    assert img.shape[:2] == (96 * k, 128 * k)
    big = np.repeat(np.repeat(tm.mask, k, 0), k, 1)
    contour = (img == np.array(CONTOUR_RGB)).all(axis=2)
    edge = find_boundaries(big, mode="inner")
    assert big[contour].all()  # drawn on tissue pixels only
    assert contour[edge].all()  # every tissue pixel next to background is contour
    assert not contour[~binary_dilation(edge)].any()  # and nothing far from the edge
    # elsewhere the PNG is the thumbnail, each pixel an exact k x k block
    plain = np.repeat(np.repeat(thumb, k, 0), k, 1)
    np.testing.assert_array_equal(img[~contour], plain[~contour])
    # a thumbnail array gives the same picture
    save_tissue_png(thumb, tm, tmp_path / "t1.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "t1.png").convert("RGB")), img)
    # no enlargement asked: mask-sized
    save_tissue_png(thumb, tm, tmp_path / "t2.png", min_size=None)
    assert Image.open(tmp_path / "t2.png").size == (128, 96)
    with pytest.raises(ValueError, match="shape"):
        save_tissue_png(thumb[:-1], tm, tmp_path / "t3.png")


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((112, 139), (896, 1112)),  # the TCGA thumbnail: x8
        ((600, 300), (1200, 600)),
        ((10, 1023), (20, 2046)),
        ((700, 1024), (700, 1024)),  # already large enough
        ((1500, 2048), (1500, 2048)),
        ((3000, 1000), (1500, 500)),  # too large: reduced by a whole factor
        ((2, 3), (684, 1026)),
    ],
)
def test_tissue_png_size(shape: tuple[int, int], expected: tuple[int, int]) -> None:
    rgb = np.full(shape + (3,), 240, np.uint8)
    mask = np.zeros(shape, bool)
    mask[shape[0] // 4 : max(1, shape[0] // 2), shape[1] // 4 : max(1, shape[1] // 2)] = True
    out = tissue_overlay(rgb, mask, TISSUE_PNG_MAX, TISSUE_PNG_MIN)
    assert out.shape == expected + (3,)
    assert 1024 <= max(out.shape[:2]) <= 2048
    assert (out == np.array(CONTOUR_RGB)).all(axis=2).any()


def test_thumbnail_never_larger_than_level0(rect_svs: Path) -> None:
    """A slide coarser than the tissue spacing is read at level 0, not scaled up."""
    with open_slide(rect_svs, mpp=16.0) as r:
        rgb, ds = thumbnail_at_spacing(r, 8.0)
        assert ds == 1.0 and rgb.shape == (1536, 2048, 3)
        tm = detect_tissue(r, spacing=8.0)
        # the mask says what was really used: level 0 at 16 um/px
        assert tm.downsample == 1.0 and tm.spacing == 16.0 and tm.mask.shape == (1536, 2048)
        rows, cols = np.nonzero(tm.mask)
        x0, y0, x1, y1 = RECT
        assert abs(cols.min() - x0) <= 2 and abs(cols.max() + 1 - x1) <= 2
        assert abs(rows.min() - y0) <= 2 and abs(rows.max() + 1 - y1) <= 2
    with open_slide(rect_svs, mpp=4.0) as r:  # finer than the spacing: as before
        rgb, ds = thumbnail_at_spacing(r, 8.0)
        assert ds == 2.0 and rgb.shape == (768, 1024, 3)
        assert detect_tissue(r, spacing=8.0).spacing == 8.0


def test_mask_spacing_from_slide_mpp_sizes_the_cleanup() -> None:
    """With ``mpp``, objects are measured at the spacing really used (downsample * mpp)."""
    rgb = np.full((40, 40, 3), 255, np.uint8)
    rgb[10:14, 10:14] = (230, 150, 200)  # 4 x 4 px: 4096 um^2 at 16 um/px, 1024 at 8
    real = mask_from_thumbnail(
        rgb,
        downsample=1.0,
        spacing=8.0,
        mpp=16.0,
        method="fixed",
        threshold=0.1,
        min_object_um2=2000.0,
    )
    assert real.spacing == 16.0 and real.downsample == 1.0
    assert real.mask[10:14, 10:14].all()
    with pytest.raises(NoTissueError):  # wrongly taken as 8 um/px it is too small
        mask_from_thumbnail(
            rgb,
            downsample=1.0,
            spacing=8.0,
            method="fixed",
            threshold=0.1,
            min_object_um2=2000.0,
        )
    same = mask_from_thumbnail(
        rgb,
        downsample=16.0,
        spacing=8.0,
        mpp=0.5,
        method="fixed",
        threshold=0.1,
        min_object_um2=0.0,
    )
    assert same.spacing == 8.0


def test_no_tissue_hint_names_config_keys(slide_factory: SlideFactory) -> None:
    white = synthetic.SyntheticSlide(width=1024, height=1024, mpp=0.5)
    with open_slide(slide_factory(white)) as r, pytest.raises(NoTissueError) as ei:
        detect_tissue(r)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "tissue.method=fixed, tissue.threshold=0.03 via --set or the config" in msg
    assert "(--tissue-method" not in msg  # not offered as if every command had it


def test_mask_from_thumbnail_needs_dimensions_for_roi_file(tmp_path: Path) -> None:
    rgb = np.full((10, 10, 3), 255, np.uint8)
    rgb[2:8, 2:8] = (230, 150, 200)
    tm = mask_from_thumbnail(rgb, downsample=16, spacing=8.0, min_object_um2=0)
    assert tm.mask[2:8, 2:8].all() and not tm.mask[0, 0]
    with pytest.raises(ValueError, match="slide_dimensions"):
        mask_from_thumbnail(rgb, downsample=16, spacing=8.0, roi=tmp_path / "x.png")
