"""Helpers shared by the writers: tile boxes, lazy 2x pyramids, colours, number formatting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import numpy.typing as npt

from wsi_saliency.tiling import tile_boxes

__all__ = [
    "class_colors",
    "clean_float",
    "downsample2",
    "pyramid",
    "pyramid_shapes",
    "tile_boxes",
]

# Fixed palette (RGB); the tumour class is always red.
_TUMOUR_RGB = (200, 0, 0)
_OTHER_RGB = (
    (0, 150, 0),
    (31, 119, 180),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def class_colors(class_names: Sequence[str], tumor_class: int) -> list[tuple[int, int, int]]:
    """RGB colour of every class: red for the tumour class, a fixed palette for the rest."""
    out: list[tuple[int, int, int]] = []
    j = 0
    for i in range(len(class_names)):
        if i == tumor_class:
            out.append(_TUMOUR_RGB)
        else:
            out.append(_OTHER_RGB[j % len(_OTHER_RGB)])
            j += 1
    return out


def _nanmean_reduce(
    x: npt.NDArray[Any], axis: tuple[int, ...] | None = None
) -> npt.NDArray[np.float32]:
    valid = ~np.isnan(x)
    s = np.where(valid, x, 0).sum(axis=axis, dtype=np.float64)
    n = valid.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s / n).astype(np.float32)


def downsample2(x: da.Array, chunk: int = 512) -> da.Array:
    """Halve the last two axes by averaging 2x2 blocks, ignoring NaN (lazy).

    Output pixel ``(i, j)`` is the NaN-mean of input pixels ``(2i..2i+1, 2j..2j+1)``;
    odd sizes are padded with NaN, so the output has ``ceil(n / 2)`` pixels and pixel
    ``(i, j)`` covers exactly twice the extent of the input pixels (no offset).
    """
    pad = [(0, 0)] * (x.ndim - 2) + [(0, x.shape[-2] % 2), (0, x.shape[-1] % 2)]
    if any(p[1] for p in pad):
        x = da.pad(x, pad, mode="constant", constant_values=np.nan)
    lead = {i: 1 for i in range(x.ndim - 2)}
    x = x.rechunk(
        {
            **{i: x.chunks[i] for i in range(x.ndim - 2)},
            x.ndim - 2: 2 * chunk,
            x.ndim - 1: 2 * chunk,
        }
    )
    return da.coarsen(
        _nanmean_reduce, x, {**lead, x.ndim - 2: 2, x.ndim - 1: 2}, trim_excess=False
    ).astype(np.float32)


def pyramid_shapes(shape: tuple[int, int], min_size: int = 512) -> list[tuple[int, int]]:
    """``(H, W)`` of every pyramid level: halve (ceil) until the larger side <= ``min_size``."""
    h, w = int(shape[0]), int(shape[1])
    out = [(h, w)]
    while max(h, w) > min_size:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        out.append((h, w))
    return out


def pyramid(x: da.Array, min_size: int = 512, chunk: int = 512) -> list[da.Array]:
    """Lazy 2x NaN-mean pyramid of ``x`` (last two axes) down to about ``min_size`` px."""
    levels = [x]
    while max(levels[-1].shape[-2:]) > min_size:
        levels.append(downsample2(levels[-1], chunk))
    return levels


def clean_float(v: float, digits: int = 6) -> float | None:
    """Round to ``digits`` significant digits for stable text output; None if not finite."""
    f = float(v)
    if not math.isfinite(f):
        return None
    if f == 0.0:
        return 0.0
    return float(f"{f:.{digits}g}")
