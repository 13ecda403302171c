"""Seam ratio of a stitched saliency map: are tile borders darker or rougher than tile interiors?

A map stitched from tiles shows the tile grid when the pixels at tile borders are
systematically weaker (zero padding, one-sided smoothing boxes) or when neighbouring
tiles disagree at their common border. :func:`seam_ratio` measures both on a heatmap
whose tiles sit on a regular grid of ``period`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SeamRatio", "seam_ratio"]


@dataclass(frozen=True)
class SeamRatio:
    """Border-vs-interior statistics of a tiled heatmap (1.0 = no seam).

    Parameters
    ----------
    magnitude
        Mean ``|map|`` on heatmap pixels at tile borders divided by mean ``|map|`` on
        interior pixels.
    tv
        Mean ``|difference|`` between neighbouring pixels across tile borders divided by
        the mean ``|difference|`` between neighbours within tiles.
    n_border, n_interior
        Number of finite border and interior pixels.
    """

    magnitude: float
    tv: float
    n_border: int
    n_interior: int


def _ratio(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> float:
    if num.size == 0 or den.size == 0:
        return float("nan")
    d = float(den.mean())
    return float(num.mean()) / d if d > 0 else float("nan")


def seam_ratio(
    heatmap: npt.ArrayLike,
    period: int | tuple[int, int],
    offset: tuple[int, int] = (0, 0),
) -> SeamRatio:
    """Seam ratio of a heatmap made of ``period``-sized tiles.

    Tile cells are ``period`` pixels high and wide and start at ``offset`` (row, col);
    a pixel is a border pixel when it is the first or last row or column of its cell.
    NaN pixels (no tile) are ignored, as are differences that involve one.

    Parameters
    ----------
    heatmap
        2-D map.
    period
        Cell size in heatmap pixels, ``int`` or ``(rows, cols)``; at least 3 so that a
        cell has interior pixels.
    offset
        ``(row, col)`` of the first cell's top-left pixel.

    Returns
    -------
    SeamRatio
        NaN ratios when there are no border or no interior pixels, or a zero denominator.
    """
    a = np.asarray(heatmap, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {a.shape}")
    py, px = (period, period) if isinstance(period, (int, np.integer)) else period
    py, px = int(py), int(px)
    if py < 3 or px < 3:
        raise ValueError(f"period must be at least 3 pixels, got {(py, px)}")
    oy, ox = int(offset[0]), int(offset[1])
    h, w = a.shape
    ry = (np.arange(h) - oy) % py
    rx = (np.arange(w) - ox) % px
    border = ((ry == 0) | (ry == py - 1))[:, None] | ((rx == 0) | (rx == px - 1))[None, :]
    finite = np.isfinite(a)
    mag = np.abs(a)
    b = border & finite
    i = ~border & finite
    magnitude = _ratio(mag[b], mag[i])
    # differences between vertical neighbours (r, r+1) and horizontal ones (c, c+1)
    dv = np.abs(a[1:, :] - a[:-1, :])
    dh = np.abs(a[:, 1:] - a[:, :-1])
    across_v = np.broadcast_to((ry[:-1] == py - 1)[:, None], dv.shape)
    across_h = np.broadcast_to((rx[:-1] == px - 1)[None, :], dh.shape)
    fv, fh = np.isfinite(dv), np.isfinite(dh)
    across = np.concatenate([dv[across_v & fv], dh[across_h & fh]])
    within = np.concatenate([dv[~across_v & fv], dh[~across_h & fh]])
    return SeamRatio(magnitude=magnitude, tv=_ratio(across, within),
                     n_border=int(b.sum()), n_interior=int(i.sum()))
