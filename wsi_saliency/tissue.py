"""Tissue detection on a thumbnail chosen by physical pixel size.

The thumbnail is read at ``spacing`` um/px (default 8; 8-16 is sensible) whatever the
pyramid looks like - never by level index. Default method: Otsu's threshold on HSV
saturation (floored at :data:`MIN_SATURATION` so an empty slide finds nothing), then
morphological closing (:data:`CLOSING_UM`), removal of objects and filling of holes
smaller than ``min_object_um2`` (areas in um^2, so independent of the thumbnail scale),
and a small dilation (:data:`DILATION_UM`) so that tissue borders are kept. A region of
interest (:mod:`wsi_saliency.roi`) restricts the result.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Final, Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

from wsi_saliency.errors import ConfigError, MissingMppError, NoTissueError
from wsi_saliency.readers.base import SlideReader
from wsi_saliency.roi import Roi, load_roi
from wsi_saliency.types import TissueMask

__all__ = [
    "CLOSING_UM",
    "TISSUE_METHODS",
    "TissueMethod",
    "DILATION_UM",
    "MIN_SATURATION",
    "TISSUE_PNG_MAX",
    "TISSUE_PNG_MIN",
    "detect_tissue",
    "effective_spacing",
    "mask_from_thumbnail",
    "otsu_threshold",
    "save_tissue_png",
    "saturation",
    "thumbnail_at_spacing",
    "tissue_overlay",
    "upscale_factor",
]

#: Lowest saturation threshold Otsu may pick (an all-white slide has only JPEG noise).
MIN_SATURATION: Final[float] = 0.05
#: Radius (um) of the structuring element closing small gaps between tissue fragments.
CLOSING_UM: Final[float] = 32.0
#: Radius (um) by which the cleaned mask is grown, so that pale tissue borders are kept.
DILATION_UM: Final[float] = 16.0
#: Longest side (px) of ``tissue.png``; larger thumbnails are reduced for a quick look.
TISSUE_PNG_MAX: Final[int] = 2048
#: Shortest long side (px) of ``tissue.png``; smaller thumbnails are enlarged by a whole
#: factor (nearest neighbour) so that the contour can be judged.
TISSUE_PNG_MIN: Final[int] = 1024
#: Contour colour drawn in ``tissue.png``.
CONTOUR_RGB: Final[tuple[int, int, int]] = (0, 200, 0)

TissueMethod = Literal["otsu", "fixed"]
#: Tissue detection methods (``tissue.method``).
TISSUE_METHODS: tuple[TissueMethod, ...] = get_args(TissueMethod)
_MPP_FIX: Final[str] = (
    "give it in um/px with --mpp (CLI, e.g. --mpp 0.25) / mpp= (open_slide) "
    'or a {stem}.mpp.json sidecar holding {"mpp": 0.25}'
)


def effective_spacing(mpp_x: float, spacing: float) -> float:
    """The spacing a thumbnail is really read at: ``spacing``, but never finer than the
    slide itself (``mpp_x``), so a thumbnail is never larger than level 0."""
    return max(float(spacing), float(mpp_x))


def thumbnail_at_spacing(
    reader: SlideReader, spacing: float
) -> tuple[npt.NDArray[np.uint8], float]:
    """The whole slide at ``spacing`` um/px (or at level 0 when the slide is coarser).

    Returns
    -------
    rgb, downsample
        uint8 ``(ceil(H / ds), ceil(W / ds), 3)`` and
        ``ds = max(spacing / mpp.x, 1)`` (:func:`effective_spacing`): a slide coarser
        than ``spacing`` is read at level 0, never upscaled. Pixel ``(r, c)`` covers
        level-0 ``[c * ds, (c + 1) * ds) x [r * ds, (r + 1) * ds)``. Pass ``ds * mpp.x``
        (or ``mpp=mpp.x``) to :func:`mask_from_thumbnail` as the spacing really used.
    """
    mpp = reader.info.mpp
    if mpp is None:
        raise MissingMppError(f"{reader.info.path}: no pixel spacing known; {_MPP_FIX}")
    if not (spacing > 0 and math.isfinite(spacing)):
        raise ConfigError(f"tissue spacing must be positive um/px, got {spacing!r}")
    ds = effective_spacing(mpp.x, spacing) / mpp.x
    return reader.read_at_downsample(ds), ds


def saturation(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """HSV saturation ``(max - min) / max`` scaled to 0..255 (uint8), in row strips.

    Equals ``round(255 * skimage.color.rgb2hsv(rgb)[..., 1])`` without its float64
    copies of the whole image (a 100k px slide at 8 um/px is a 6250 x 6250 thumbnail).
    """
    h = rgb.shape[0]
    out = np.empty(rgb.shape[:2], dtype=np.uint8)
    step = max(1, (1 << 20) // max(1, rgb.shape[1]))
    for r0 in range(0, h, step):
        a = rgb[r0 : r0 + step]
        mx = np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2])
        mn = np.minimum(np.minimum(a[..., 0], a[..., 1]), a[..., 2])
        num = (mx - mn).astype(np.float32) * np.float32(255.0)
        sat = np.divide(num, mx, out=np.zeros_like(num), where=mx > 0)
        out[r0 : r0 + step] = np.rint(sat).astype(np.uint8)
    return out


def otsu_threshold(sat: npt.NDArray[np.uint8]) -> float:
    """Otsu's threshold (0..1) of a uint8 saturation image; pixels above it are tissue."""
    hist = np.bincount(sat.reshape(-1), minlength=256).astype(np.float64)
    if np.count_nonzero(hist) < 2:
        return 1.0
    centres = np.arange(256, dtype=np.float64)
    t = float(filters.threshold_otsu(hist=(hist, centres)))
    return t / 255.0


def _disk(radius_px: float) -> npt.NDArray[np.uint8] | None:
    r = int(round(radius_px))
    return morphology.disk(r) if r >= 1 else None


def detect_tissue(
    reader: SlideReader,
    *,
    method: str = "otsu",
    threshold: float | None = None,
    spacing: float = 8.0,
    min_object_um2: float = 20000.0,
    roi: str | Path | Roi | None = None,
) -> TissueMask:
    """Find tissue on a thumbnail at ``spacing`` um/px.

    Parameters
    ----------
    reader
        An open slide (with a known spacing).
    method
        ``"otsu"`` (Otsu on HSV saturation) or ``"fixed"`` (``threshold``).
    threshold
        Saturation threshold in 0..1; required for ``"fixed"``, ignored by ``"otsu"``.
    spacing
        Thumbnail spacing in um/px (a slide coarser than this is used at level 0, and
        the mask's ``spacing`` says so).
    min_object_um2
        Objects and holes smaller than this area (um^2) are removed / filled.
    roi
        Region of interest (file path or :class:`~wsi_saliency.roi.Roi`) restricting
        the mask.

    Returns
    -------
    TissueMask
        ``method`` records what was used (``"otsu"``, ``"fixed"``, ``"otsu+roi"``, ...).

    Raises
    ------
    NoTissueError
        When nothing is left after clean-up (and ROI restriction).
    ConfigError
        Bad method, threshold or ROI.
    """
    rgb, ds = thumbnail_at_spacing(reader, spacing)
    return mask_from_thumbnail(
        rgb,
        downsample=ds,
        spacing=spacing,
        mpp=reader.info.mpp.x if reader.info.mpp is not None else None,
        method=method,
        threshold=threshold,
        min_object_um2=min_object_um2,
        roi=roi,
        slide_dimensions=reader.info.dimensions,
        name=reader.info.path,
    )


def mask_from_thumbnail(
    rgb: npt.NDArray[np.uint8],
    *,
    downsample: float,
    spacing: float,
    mpp: float | None = None,
    method: str = "otsu",
    threshold: float | None = None,
    min_object_um2: float = 20000.0,
    roi: str | Path | Roi | None = None,
    slide_dimensions: tuple[int, int] | None = None,
    name: str = "slide",
) -> TissueMask:
    """Tissue mask from an already-read thumbnail (see :func:`detect_tissue`).

    ``rgb`` must be the slide at ``downsample``, as :func:`thumbnail_at_spacing`
    returns it. Its pixel size is ``downsample * mpp`` when the slide's level-0
    spacing ``mpp`` (um/px along x) is given - which differs from the requested
    ``spacing`` when the slide is coarser than it - and ``spacing`` otherwise; that is
    the size used for the micron-sized clean-up and recorded as ``TissueMask.spacing``.
    ``slide_dimensions`` is needed to place a mask-image ROI.
    """
    if mpp is not None:
        if not (mpp > 0 and math.isfinite(mpp)):
            raise ConfigError(f"slide spacing must be positive um/px, got {mpp!r}")
        read_at = downsample * float(mpp)
        # keep the requested value exactly when the thumbnail was read at it
        spacing = float(spacing) if math.isclose(read_at, spacing, rel_tol=1e-6) else read_at
    if not (spacing > 0 and math.isfinite(spacing)):
        raise ConfigError(f"tissue spacing must be positive um/px, got {spacing!r}")
    if method not in TISSUE_METHODS:
        raise ConfigError(f"unknown tissue method {method!r}; use one of {', '.join(TISSUE_METHODS)}")
    if method == "fixed" and (threshold is None or not 0.0 <= float(threshold) <= 1.0):
        raise ConfigError(
            f"tissue method 'fixed' needs a saturation threshold in 0..1, got {threshold!r}"
        )
    if min_object_um2 < 0:
        raise ConfigError(f"min_object_um2 must be >= 0, got {min_object_um2!r}")
    sat = saturation(rgb)
    if method == "otsu":
        t = max(otsu_threshold(sat), MIN_SATURATION)
    else:
        assert threshold is not None
        t = float(threshold)
    mask = _clean(sat > np.float32(t * 255.0), spacing, min_object_um2)
    used: str = method
    if roi is not None:
        if isinstance(roi, Roi):
            r = roi
        else:
            if slide_dimensions is None:
                raise ValueError("slide_dimensions is needed to load an ROI file")
            r = load_roi(roi, slide_dimensions)
        mask &= r.rasterize(mask.shape, downsample)
        used = f"{method}+roi"
    if not mask.any():
        where = " inside the ROI" if roi is not None else ""
        raise NoTissueError(
            f"{name}: no tissue found{where} (saturation threshold {t:.3f} at "
            f"{spacing:g} um/px); check the slide, or lower the threshold "
            "(tissue.method=fixed, tissue.threshold=0.03 via --set or the config; "
            "`tiles` has --tissue-method/--tissue-threshold)"
        )
    return TissueMask(mask=mask, downsample=downsample, spacing=spacing, threshold=t, method=used)


#: Block size (mask px) of the coarse occupancy grid that lets clean-up skip empty areas.
_BLOCK: Final[int] = 64


def _clean(
    mask: npt.NDArray[np.bool_], px_um: float, min_object_um2: float
) -> npt.NDArray[np.bool_]:
    """Closing, small-object removal, hole filling, dilation - all sized in microns.

    Works only where there is something: candidate pixels are grouped into clusters of
    64 x 64 px blocks (clusters at least one empty block apart cannot influence each
    other through these operations, whose reach is far below 64 px), and each cluster's
    bounding box is cleaned on its own. Time and memory follow the tissue, not the
    slide, so a sparse 100k x 100k px slide is cleaned in a fraction of a second.
    """
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    b = _BLOCK
    rows, cols = mask.shape
    nbr, nbc = -(-rows // b), -(-cols // b)
    padded = np.zeros((nbr * b, nbc * b), dtype=bool)
    padded[:rows, :cols] = mask
    occupied = padded.reshape(nbr, b, nbc, b).any(axis=(1, 3))
    grown = ndi.binary_dilation(occupied, structure=np.ones((3, 3), bool))
    labels = measure.label(grown, connectivity=2)
    for region in measure.regionprops(labels):
        br0, bc0, br1, bc1 = region.bbox
        r0, c0 = br0 * b, bc0 * b
        r1, c1 = min(rows, br1 * b), min(cols, bc1 * b)
        own = np.repeat(np.repeat(labels[br0:br1, bc0:bc1] == region.label, b, 0), b, 1)
        own = own[: r1 - r0, : c1 - c0]
        cleaned = _clean_dense(mask[r0:r1, c0:c1] & own, px_um, min_object_um2)
        out[r0:r1, c0:c1] |= cleaned & own
    return out


def _remove_small(
    mask: npt.NDArray[np.bool_], max_px: int, *, holes: bool
) -> npt.NDArray[np.bool_]:
    """Remove objects (or fill holes) of at most ``max_px`` pixels with scikit-image.

    scikit-image 0.26 renamed ``min_size``/``area_threshold`` (remove ``<``) to
    ``max_size`` (remove ``<=``); both spellings are supported.
    """
    fn = morphology.remove_small_holes if holes else morphology.remove_small_objects
    if "max_size" in inspect.signature(fn).parameters:
        out = fn(mask, max_size=max_px)
    elif holes:
        out = fn(mask, area_threshold=max_px + 1)
    else:
        out = fn(mask, min_size=max_px + 1)
    return np.asarray(out, dtype=bool)


def _clean_dense(
    mask: npt.NDArray[np.bool_], px_um: float, min_object_um2: float
) -> npt.NDArray[np.bool_]:
    se = _disk(CLOSING_UM / px_um)
    if se is not None:
        # pad so that closing does not erode tissue touching the border
        pad = se.shape[0]
        padded = np.pad(mask, pad, mode="constant")
        mask = ndi.binary_closing(padded, structure=se)[pad:-pad, pad:-pad] | mask
    min_px = int(min_object_um2 / (px_um * px_um))
    if min_px >= 1:
        mask = _remove_small(mask, min_px, holes=False)
        mask = _remove_small(mask, min_px, holes=True)
    se = _disk(DILATION_UM / px_um)
    if se is not None and mask.any():
        mask = ndi.binary_dilation(mask, structure=se)
    return np.ascontiguousarray(mask, dtype=bool)


def tissue_overlay(
    rgb: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.bool_],
    max_size: int | None = None,
    min_size: int | None = None,
) -> npt.NDArray[np.uint8]:
    """The thumbnail with the tissue contour drawn in :data:`CONTOUR_RGB`.

    With ``max_size``, thumbnail and mask are first reduced by the smallest whole
    factor that brings the longer side to at most ``max_size`` pixels (block mean).
    With ``min_size``, a smaller one is enlarged by the smallest whole factor that
    brings the longer side to at least ``min_size`` pixels (nearest neighbour, every
    pixel an exact ``k x k`` block), but never beyond ``max_size``. The contour is
    drawn on the tissue side of the mask's boundary only, so every contour pixel is
    tissue and every tissue pixel next to background is contour.
    """
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"thumbnail {rgb.shape[:2]} and mask {mask.shape} differ in shape")
    long = max(mask.shape)
    k = 1
    if max_size is not None and long > max_size:
        k = math.ceil(long / max_size)
    if k > 1:
        rows, cols = mask.shape[0] // k, mask.shape[1] // k
        small = np.empty((rows, cols, 3), dtype=np.uint8)
        step = max(1, 256 // k)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            blk = rgb[r0 * k : r1 * k, : cols * k].reshape(r1 - r0, k, cols, k, 3)
            small[r0:r1] = blk.mean(axis=(1, 3)).round().astype(np.uint8)
        m = mask[: rows * k, : cols * k].reshape(rows, k, cols, k).mean(axis=(1, 3)) >= 0.5
        rgb, mask = small, m
    up = upscale_factor(long, min_size, max_size)
    if up > 1:
        rgb = np.repeat(np.repeat(rgb, up, axis=0), up, axis=1)
        mask = np.repeat(np.repeat(mask, up, axis=0), up, axis=1)
    out = rgb.copy()
    edge = segmentation.find_boundaries(mask, mode="inner")
    if max(mask.shape) > 600:
        edge = ndi.binary_dilation(edge) & mask
    out[edge] = CONTOUR_RGB
    return out


def upscale_factor(long_side: int, min_size: int | None, max_size: int | None) -> int:
    """Smallest whole factor bringing ``long_side`` to at least ``min_size`` px without
    passing ``max_size`` (1 when no enlargement is wanted or possible)."""
    if min_size is None or long_side <= 0 or long_side >= min_size:
        return 1
    k = math.ceil(min_size / long_side)
    if max_size is not None:
        k = min(k, max(1, max_size // long_side))
    return max(1, k)


def save_tissue_png(
    reader_or_thumb: SlideReader | npt.NDArray[np.uint8],
    mask: TissueMask,
    path: str | Path,
    *,
    max_size: int | None = TISSUE_PNG_MAX,
    min_size: int | None = TISSUE_PNG_MIN,
) -> Path:
    """Write ``tissue.png``: the thumbnail at the mask's spacing with the tissue contour.

    Parameters
    ----------
    reader_or_thumb
        An open slide (the thumbnail is read at ``mask.downsample``) or a thumbnail
        of exactly ``mask.mask.shape``.
    mask
        The tissue mask.
    path
        Output PNG.
    max_size
        Longest side of the PNG; larger thumbnails are reduced by a whole factor
        (``None``: full size).
    min_size
        Smaller thumbnails (an 8 um/px thumbnail of a small slide is a few hundred
        pixels) are enlarged by a whole factor, nearest neighbour, until the longest
        side is at least this (but at most ``max_size``); ``None``: never enlarged.
        One mask pixel is then exactly ``k x k`` PNG pixels.
    """
    from PIL import Image

    if isinstance(reader_or_thumb, np.ndarray):
        rgb = reader_or_thumb
    else:
        rgb = reader_or_thumb.read_at_downsample(mask.downsample)
    img = tissue_overlay(rgb, mask.mask, max_size, min_size)
    p = Path(path)
    Image.fromarray(img).save(p, format="PNG")
    return p
