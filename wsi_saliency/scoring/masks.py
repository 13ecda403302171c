"""Lesion masks: the Camelyon16 evaluation mask (level 5) and masks on the heatmap grid.

Camelyon16 evaluation mask
--------------------------
:func:`evaluation_mask` follows ``computeEvaluationMask`` and ``computeITCList`` of the
challenge organisers' ``Evaluation_FROC.py`` (computationalpathologygroup/Camelyon16):

* **matched**: the mask lives on the level-``level`` grid (default 5, i.e. 2^5 = 32
  level-0 px per pixel); the Euclidean distance transform of the non-lesion pixels is
  thresholded with ``distance < 75 / (2 * MPP * 2^level)`` pixels (lesions grown by
  37.5 um, so lesions closer than 75 um, "the size of 5 tumour cells", merge); holes are
  filled (``binary_fill_holes``); connected components are labelled with
  8-connectivity (``measure.label(connectivity=2)``); a component is an isolated tumour
  cell cluster (ITC) when ``regionprops`` ``major axis length < 275 / (MPP * 2^level)``
  pixels (200 um ITC limit + the 75 um growth);
* **differs**: the original reads level 5 of the ground-truth mask TIFF (a level-0
  raster downsampled by the file's pyramid) and calls only pixels equal to 255 lesion;
  here the polygons are rasterised straight onto the level-5 grid (a pixel is lesion
  when its centre is inside; no level-0 raster is ever made), and each lesion polygon
  also marks the pixel holding its representative point, so a lesion smaller than a
  level-5 pixel is not lost. The original hard-codes MPP 0.243; here the slide's MPP
  from ``run.json`` is used (for a non-square pixel the distance transform is sampled
  in the slide's units and the ITC rule uses the mean MPP). The mask has
  ``ceil(size / 2^level)`` pixels per axis.

Heatmap-grid masks
------------------
:func:`heatmap_lesion_mask` rasterises the lesions on the heatmap grid of a run (pixel
centres, the same convention as the stitcher), never at level 0, so memory is bounded by
the heatmap size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
import shapely.affinity
from scipy import ndimage
from skimage import measure

from wsi_saliency.roi import rasterize_geometry

__all__ = [
    "DILATION_UM",
    "ITC_MAJOR_AXIS_UM",
    "EvaluationMask",
    "dilation_threshold_px",
    "evaluation_mask",
    "heatmap_lesion_mask",
    "itc_threshold_px",
]

#: Lesions closer than this merge (each grows by half of it); Camelyon16's 75 um.
DILATION_UM = 75.0
#: Components whose major axis is shorter than this (after the growth) are ITCs.
ITC_MAJOR_AXIS_UM = 275.0


def dilation_threshold_px(mpp: float, level: int = 5) -> float:
    """``75 / (2 * mpp * 2**level)``: the distance threshold in level-``level`` pixels."""
    return DILATION_UM / (2.0 * mpp * 2**level)


def itc_threshold_px(mpp: float, level: int = 5) -> float:
    """``275 / (mpp * 2**level)``: the ITC major-axis limit in level-``level`` pixels."""
    return ITC_MAJOR_AXIS_UM / (mpp * 2**level)


@dataclass(frozen=True, eq=False)
class EvaluationMask:
    """A labelled Camelyon16 evaluation mask.

    Parameters
    ----------
    labels
        ``int32`` labels (0 = background, 1..n = lesions) on the level grid.
    itc
        Labels that are isolated tumour cells.
    downsample
        Level-0 pixels per mask pixel (``2**level``).
    """

    labels: npt.NDArray[np.int32]
    itc: frozenset[int]
    downsample: int

    @property
    def n_labels(self) -> int:
        """Number of labelled components (lesions and ITCs)."""
        return int(self.labels.max()) if self.labels.size else 0

    @property
    def n_lesions(self) -> int:
        """Lesions to be detected (components that are not ITCs)."""
        return self.n_labels - len(self.itc)

    def label_at(self, x: int, y: int) -> int:
        """Label under level-0 point ``(x, y)``: pixel ``(y // ds, x // ds)``; 0 outside."""
        r, c = int(y) // self.downsample, int(x) // self.downsample
        h, w = self.labels.shape
        if 0 <= r < h and 0 <= c < w:
            return int(self.labels[r, c])
        return 0


def evaluation_mask(
    lesions: shapely.Geometry,
    dimensions: tuple[int, int],
    mpp: tuple[float, float],
    *,
    level: int = 5,
) -> EvaluationMask:
    """The Camelyon16 evaluation mask of a slide (see the module docstring).

    Parameters
    ----------
    lesions
        Lesion area in level-0 px (may be empty).
    dimensions
        Level-0 ``(width, height)``.
    mpp
        Level-0 ``(x, y)`` um/px.
    level
        Evaluation level; the grid has ``2**level`` level-0 px per pixel.

    Returns
    -------
    EvaluationMask
    """
    ds = 2**level
    shape = (max(1, math.ceil(dimensions[1] / ds)), max(1, math.ceil(dimensions[0] / ds)))
    raw = rasterize_geometry(lesions, shape, float(ds))
    if not lesions.is_empty:
        for part in shapely.get_parts(lesions):
            if part.is_empty:
                continue
            pt = part.representative_point()
            r, c = int(pt.y // ds), int(pt.x // ds)
            if 0 <= r < shape[0] and 0 <= c < shape[1]:
                raw[r, c] = True
    if not raw.any():
        return EvaluationMask(np.zeros(shape, np.int32), frozenset(), ds)
    mx, my = mpp
    thr = dilation_threshold_px(mx, level)
    # work on the lesions' bounding box plus a margin wider than the growth: outside it
    # nothing can change, and a background ring around the box keeps hole filling and
    # the raster order of the labels the same as on the whole grid
    rows, cols = np.flatnonzero(raw.any(axis=1)), np.flatnonzero(raw.any(axis=0))
    pad_r = int(math.ceil(thr * mx / my)) + 2
    pad_c = int(math.ceil(thr)) + 2
    r0, r1 = max(0, rows[0] - pad_r), min(shape[0], rows[-1] + pad_r + 1)
    c0, c1 = max(0, cols[0] - pad_c), min(shape[1], cols[-1] + pad_c + 1)
    # distance to the nearest lesion pixel, in level pixels along x
    dist = ndimage.distance_transform_edt(~raw[r0:r1, c0:c1], sampling=(my / mx, 1.0))
    filled = ndimage.binary_fill_holes(dist < thr)
    labels = np.zeros(shape, dtype=np.int32)
    labels[r0:r1, c0:c1] = measure.label(filled, connectivity=2)
    limit = itc_threshold_px(math.sqrt(mx * my), level)
    itc = frozenset(
        int(p.label) for p in measure.regionprops(labels) if p.axis_major_length < limit
    )
    return EvaluationMask(labels, itc, ds)


def heatmap_lesion_mask(
    lesions: shapely.Geometry,
    shape: tuple[int, int],
    downsample: tuple[float, float],
) -> npt.NDArray[np.bool_]:
    """Lesions on a heatmap grid: pixel ``(i, j)`` is lesion when level-0 point
    ``((j + 0.5) * sx, (i + 0.5) * sy)`` is inside.

    Parameters
    ----------
    lesions
        Lesion area in level-0 px.
    shape
        Heatmap ``(height, width)``.
    downsample
        Level-0 px per heatmap pixel ``(sx, sy)``.
    """
    sx, sy = downsample
    if lesions.is_empty:
        return np.zeros(shape, dtype=bool)
    if math.isclose(sx, sy, rel_tol=1e-9):
        return rasterize_geometry(lesions, shape, sx)
    scaled = shapely.affinity.scale(lesions, xfact=1.0 / sx, yfact=1.0 / sy, origin=(0, 0))
    return rasterize_geometry(scaled, shape, 1.0)
