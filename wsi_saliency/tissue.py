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

import math
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi
from skimage import color, filters, morphology, segmentation

from wsi_saliency.errors import ConfigError, MissingMppError, NoTissueError
from wsi_saliency.readers.base import SlideReader
from wsi_saliency.roi import Roi, load_roi
from wsi_saliency.types import TissueMask

__all__ = [
    "CLOSING_UM",
    "DILATION_UM",
    "MIN_SATURATION",
    "detect_tissue",
    "mask_from_thumbnail",
    "save_tissue_png",
    "saturation",
    "thumbnail_at_spacing",
    "tissue_overlay",
]

#: Lowest saturation threshold Otsu may pick (an all-white slide has only JPEG noise).
MIN_SATURATION: Final[float] = 0.05
#: Radius (um) of the structuring element closing small gaps between tissue fragments.
CLOSING_UM: Final[float] = 32.0
#: Radius (um) by which the cleaned mask is grown, so that pale tissue borders are kept.
DILATION_UM: Final[float] = 16.0
#: Contour colour drawn in ``tissue.png``.
CONTOUR_RGB: Final[tuple[int, int, int]] = (0, 200, 0)

_METHODS: Final[tuple[str, ...]] = ("otsu", "fixed")


def thumbnail_at_spacing(
    reader: SlideReader, spacing: float
) -> tuple[npt.NDArray[np.uint8], float]:
    """The whole slide at ``spacing`` um/px.

    Returns
    -------
    rgb, downsample
        uint8 ``(ceil(H / ds), ceil(W / ds), 3)`` and ``ds = spacing / mpp.x``; pixel
        ``(r, c)`` covers level-0 ``[c * ds, (c + 1) * ds) x [r * ds, (r + 1) * ds)``.
    """
    mpp = reader.info.mpp
    if mpp is None:
        raise MissingMppError(
            f"{reader.info.path}: no pixel spacing known; give it with --mpp (um/px, e.g. --mpp 0.25)"
        )
    if not (spacing > 0 and math.isfinite(spacing)):
        raise ConfigError(f"tissue spacing must be positive um/px, got {spacing!r}")
    ds = spacing / mpp.x
    return reader.read_at_downsample(ds), ds


def saturation(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """HSV saturation in 0..1."""
    sat: npt.NDArray[np.float64] = color.rgb2hsv(rgb)[..., 1]
    return sat


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
        Thumbnail spacing in um/px.
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
    method: str = "otsu",
    threshold: float | None = None,
    min_object_um2: float = 20000.0,
    roi: str | Path | Roi | None = None,
    slide_dimensions: tuple[int, int] | None = None,
    name: str = "slide",
) -> TissueMask:
    """Tissue mask from an already-read thumbnail (see :func:`detect_tissue`).

    ``rgb`` must be the slide at ``downsample`` (= ``spacing`` um/px), as
    :func:`thumbnail_at_spacing` returns it. ``slide_dimensions`` is needed to place
    a mask-image ROI.
    """
    if method not in _METHODS:
        raise ConfigError(f"unknown tissue method {method!r}; use one of {', '.join(_METHODS)}")
    if method == "fixed" and (threshold is None or not 0.0 <= float(threshold) <= 1.0):
        raise ConfigError(
            f"tissue method 'fixed' needs a saturation threshold in 0..1, got {threshold!r}"
        )
    if min_object_um2 < 0:
        raise ConfigError(f"min_object_um2 must be >= 0, got {min_object_um2!r}")
    sat = saturation(rgb)
    if method == "otsu":
        t = float(filters.threshold_otsu(sat)) if np.ptp(sat) > 0 else 1.0
        t = max(t, MIN_SATURATION)
    else:
        assert threshold is not None
        t = float(threshold)
    mask = _clean(sat > t, spacing, min_object_um2)
    used = method
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
            f"{spacing:g} um/px); check the slide, or set a lower fixed threshold "
            "(--tissue-method fixed --tissue-threshold 0.03)"
        )
    return TissueMask(mask=mask, downsample=downsample, spacing=spacing, threshold=t, method=used)


def _clean(mask: npt.NDArray[np.bool_], px_um: float, min_object_um2: float) -> npt.NDArray[np.bool_]:
    """Closing, small-object removal, hole filling, dilation - all sized in microns."""
    se = _disk(CLOSING_UM / px_um)
    if se is not None:
        # pad so that closing does not erode tissue touching the border
        pad = se.shape[0]
        padded = np.pad(mask, pad, mode="constant")
        mask = ndi.binary_closing(padded, structure=se)[pad:-pad, pad:-pad] | mask
    min_px = int(min_object_um2 / (px_um * px_um))
    if min_px >= 1:
        mask = morphology.remove_small_objects(mask, max_size=min_px)
        mask = morphology.remove_small_holes(mask, max_size=min_px)
    se = _disk(DILATION_UM / px_um)
    if se is not None and mask.any():
        mask = ndi.binary_dilation(mask, structure=se)
    return np.ascontiguousarray(mask, dtype=bool)


def tissue_overlay(
    rgb: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint8]:
    """The thumbnail with the tissue contour drawn in :data:`CONTOUR_RGB`."""
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"thumbnail {rgb.shape[:2]} and mask {mask.shape} differ in shape")
    out = rgb.copy()
    edge = segmentation.find_boundaries(mask, mode="inner")
    if max(mask.shape) > 600:
        edge = ndi.binary_dilation(edge)
    out[edge] = CONTOUR_RGB
    return out


def save_tissue_png(
    reader_or_thumb: SlideReader | npt.NDArray[np.uint8], mask: TissueMask, path: str | Path
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
    """
    from PIL import Image

    if isinstance(reader_or_thumb, np.ndarray):
        rgb = reader_or_thumb
    else:
        rgb = reader_or_thumb.read_at_downsample(mask.downsample)
    img = tissue_overlay(rgb, mask.mask)
    p = Path(path)
    Image.fromarray(img).save(p, format="PNG")
    return p
