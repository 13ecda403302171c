"""Similarity of two sets of maps: Spearman rank correlation and SSIM, per tile."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata
from skimage.metrics import structural_similarity

__all__ = ["spearman", "ssim"]


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Spearman rank correlation of each pair of maps ``a[i]``, ``b[i]``.

    Average ranks for ties, then the Pearson correlation of the ranks: the same number
    as ``scipy.stats.spearmanr(a[i].ravel(), b[i].ravel())``, vectorised over tiles.
    NaN where either map is constant.

    Parameters
    ----------
    a, b
        ``(n, h, w)`` (or ``(n, k)``) maps.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"map shapes differ: {x.shape} vs {y.shape}")
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    rx = rankdata(x, axis=1)
    ry = rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (rx * ry).sum(axis=1) / den
    out: npt.NDArray[np.float64] = np.where(den > 0, np.clip(r, -1.0, 1.0), np.nan)
    return out


def _unit(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    lo, hi = float(m.min()), float(m.max())
    return np.zeros_like(m) if hi <= lo else (m - lo) / (hi - lo)


def ssim(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Structural similarity of each pair of maps, each min-max scaled to ``[0, 1]``.

    ``skimage.metrics.structural_similarity`` with ``data_range=1`` and the largest odd
    window up to 7 that fits the map.

    Parameters
    ----------
    a, b
        ``(n, h, w)`` maps.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"maps must both be (n, h, w); got {x.shape} and {y.shape}")
    side = min(x.shape[1:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"maps of {x.shape[1:]} are too small for SSIM (need 3 x 3)")
    return np.array([
        structural_similarity(_unit(p), _unit(q), data_range=1.0, win_size=win)
        for p, q in zip(x, y, strict=True)
    ], dtype=np.float64)
