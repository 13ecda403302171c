"""Lesion detections (points with a probability) from a tumour-probability heatmap.

Rule (the non-maximum suppression of the published Camelyon16 pipelines: NCRF's
``nms.py``, after Liu et al. 2017, "Detecting cancer metastases on gigapixel pathology
images"):

1. uncovered heatmap pixels (NaN) count as probability 0;
2. repeat: take the highest remaining pixel; stop when it is not above ``threshold``
   (default 0.5); record a detection at that pixel's centre, in level-0 px
   (``x = floor((j + 0.5) * sx)``, ``y = floor((i + 0.5) * sy)``) with that probability;
   suppress every pixel within ``radius_um`` (a square window ``|di|, |dj| <= r``,
   ``r = round(radius_um / pixel_size_um)``);
3. ties are taken in row-major order.

Every detection is thus a local maximum of the map within its window. The default radius
186.6 um is NCRF's 12 px at level 6 of a 0.243 um/px slide (12 x 64 x 0.243 um), which is
also Liu et al.'s 6 px at level 7. Differences from NCRF: the window is symmetric (NCRF
zeroes ``[c - r, c + r)``), the radius is physical (so it does not change with the
heatmap's pixel size), and there is no optional Gaussian pre-smoothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_NMS_RADIUS_UM", "DEFAULT_THRESHOLD", "Detection", "find_detections"]

#: NCRF's NMS radius: 12 px at level 6 (64 level-0 px) of a 0.243 um/px slide.
DEFAULT_NMS_RADIUS_UM = 12 * 64 * 0.243
#: Detections must be above this probability.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Detection:
    """A detected lesion: a level-0 point and its probability.

    Parameters
    ----------
    x, y
        Level-0 pixel coordinates.
    probability
        Tumour probability at the point.
    row, col
        Heatmap pixel it came from.
    """

    x: int
    y: int
    probability: float
    row: int = -1
    col: int = -1


def find_detections(
    probability: npt.NDArray[np.floating],
    *,
    downsample: tuple[float, float],
    pixel_size_um: float,
    threshold: float = DEFAULT_THRESHOLD,
    radius_um: float = DEFAULT_NMS_RADIUS_UM,
) -> list[Detection]:
    """Detections of a probability heatmap by greedy non-maximum suppression.

    Parameters
    ----------
    probability
        ``(H, W)`` tumour probability, NaN where no tile covered the slide.
    downsample
        Level-0 px per heatmap pixel ``(sx, sy)``.
    pixel_size_um
        Heatmap pixel size in um.
    threshold
        Only pixels strictly above this probability become detections.
    radius_um
        Suppression radius in um (0: every pixel above the threshold is a detection).

    Returns
    -------
    list of Detection
        In decreasing probability.
    """
    p = np.asarray(probability)
    h, w = p.shape
    flat = p.ravel()  # NaN > threshold is False: uncovered pixels never qualify ...
    if threshold < 0:  # ... unless 0 does: then they count as probability 0
        flat = np.nan_to_num(flat.astype(np.float64), nan=0.0)
    cand = np.flatnonzero(flat > threshold)
    if cand.size == 0:
        return []
    # decreasing probability; equal values keep row-major order (stable sort)
    order = cand[np.argsort(-flat[cand], kind="stable")]
    r = max(0, int(round(radius_um / pixel_size_um)))
    suppressed = np.zeros((h, w), dtype=bool)
    sx, sy = downsample
    out: list[Detection] = []
    for k in order.tolist():
        i, j = divmod(k, w)
        if suppressed[i, j]:
            continue
        out.append(
            Detection(
                x=int(math.floor((j + 0.5) * sx)),
                y=int(math.floor((i + 0.5) * sy)),
                probability=float(flat[k]),
                row=i,
                col=j,
            )
        )
        suppressed[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1] = True
    return out
