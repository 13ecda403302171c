"""Smoothness of maps: the paper's total variation and the seam ratio of a tile block."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from wsi_saliency.saliency.seams import SeamRatio, seam_ratio

__all__ = ["block_mosaic", "block_seam_ratio"]


def block_mosaic(maps: npt.ArrayLike, shape: tuple[int, int]) -> npt.NDArray[np.float64]:
    """Place ``rows * cols`` maps ``(k, h, w)`` (row-major) side by side: ``(rows*h, cols*w)``."""
    m = np.asarray(maps, dtype=np.float64)
    rows, cols = shape
    k, h, w = m.shape
    if k != rows * cols:
        raise ValueError(f"{k} maps do not fill a {rows} x {cols} block")
    out: npt.NDArray[np.float64] = (
        m.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w))
    return out


def block_seam_ratio(maps: npt.ArrayLike, shape: tuple[int, int]) -> SeamRatio:
    """Seam ratio of adjacent tiles' maps placed side by side (period = map size)."""
    mosaic = block_mosaic(maps, shape)
    h, w = np.asarray(maps).shape[1:]
    return seam_ratio(mosaic, (int(h), int(w)))
