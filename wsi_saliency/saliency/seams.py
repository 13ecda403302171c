"""Seam ratio: does a stitched heatmap show the tile grid?

A map stitched from tiles shows *seams* when the pixels at tile borders differ
systematically from those inside tiles (a dark frame around every tile when borders are
attenuated, a bright one when they are exaggerated). :func:`seam_ratio` measures this on
any 2-D heatmap whose tile grid is known, with two numbers:

``magnitude``
    mean ``|map|`` on *border* pixels / mean ``|map|`` on *interior* pixels.
``tv``
    mean ``|difference|`` between 4-neighbours on opposite sides of a cell border /
    mean ``|difference|`` between 4-neighbours inside one cell.

Both are 1.0 for a map without seams (e.g. a constant or a stationary random field),
< 1 for dark frames / steps that are smaller than the texture, > 1 for bright frames /
steps at the borders.

Cells
-----
The heatmap is cut into *cells* of ``period = (ph, pw)`` pixels starting at ``offset``:
cell ``(a, b)`` covers rows ``offset[0] + a * ph ... + ph - 1`` and columns
``offset[1] + b * pw ... + pw - 1`` (cells cut by the heatmap edge are kept, partial).
With overlap 0 the cells are the tiles. **With overlap > 0 the cells are the stride cells
of the tile grid** (``period`` = the stride in heatmap pixels, ``offset`` = where the
first tile starts, ``(0, 0)`` for the slide grid): every tile's first row/column then lies
on a cell border. Its last row/column does too when the tile size is a multiple of the
stride (overlap 0 or 0.5); otherwise (e.g. overlap 1/7: 14 map pixels, stride 12) it
falls inside the next cell (position ``tile - stride - 1``) and is counted as interior, so
a faint line there is not seen by this ratio. This is the definition used for every run's
``run.json``.

Border and interior pixels
--------------------------
* A pixel is **border** when it is in the first or last row, or the first or last
  column, of its cell; every other pixel is **interior**. Only *finite* pixels count
  (NaN = no data is ignored, so tissue edges do not count as seams), and a cell
  contributes its finite pixels whether or not it is fully covered.
* A **cross-border difference** is ``|x[i+1, j] - x[i, j]|`` where rows ``i`` and
  ``i + 1`` are in different cells (and likewise for columns); a **within-cell
  difference** is one between two pixels of the same cell. A difference counts when
  both pixels are finite.

Cells of fewer than 3 pixels along an axis have no interior along it; the ratio is then
NaN (as is any ratio whose denominator has no pixels or is zero while the numerator is
not; ``0 / 0`` is taken as 1.0, a perfectly flat map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "SEAM_FREE_OVERLAP",
    "SeamRatio",
    "heatmap_seams",
    "resolve_overlap",
    "seam_free_overlap",
    "seam_ratio",
]


@dataclass(frozen=True)
class SeamRatio:
    """Seam figures of one heatmap (see :mod:`wsi_saliency.saliency.seams`).

    Parameters
    ----------
    magnitude
        Mean ``|map|`` on heatmap pixels at tile borders / mean ``|map|`` on interior
        pixels.
    tv
        Mean ``|difference|`` between neighbouring pixels across tile borders / within
        tiles.
    n_border
        Pixels counted as border.
    n_interior
        Pixels counted as interior.
    """

    magnitude: float  # mean |map| on heatmap pixels at tile borders / mean |map| on interior pixels
    tv: float  # mean |difference| between neighbouring pixels across tile borders / within tiles
    n_border: int  # pixels counted as border
    n_interior: int  # pixels counted as interior

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready dict (NaN as ``None``), values rounded to 4 decimals."""
        def r(v: float) -> float | None:
            return None if not np.isfinite(v) else round(float(v), 4)

        return {"magnitude": r(self.magnitude), "tv": r(self.tv),
                "n_border": self.n_border, "n_interior": self.n_interior}


def _ratio(num: float, n_num: int, den: float, n_den: int) -> float:
    if n_num == 0 or n_den == 0:
        return float("nan")
    a, b = num / n_num, den / n_den
    if b == 0.0:
        return 1.0 if a == 0.0 else float("nan")
    return float(a / b)


def _cell_position(n: int, period: int, offset: int) -> npt.NDArray[np.int64]:
    """Position of every index ``0..n-1`` inside its cell (0 .. period - 1)."""
    return np.mod(np.arange(n, dtype=np.int64) - offset, period)


def seam_ratio(
    heatmap: npt.ArrayLike,
    period: int | tuple[int, int],
    offset: tuple[int, int] = (0, 0),
) -> SeamRatio:
    """Seam ratio of a stitched heatmap.

    Parameters
    ----------
    heatmap
        2-D float array; NaN = no data, ignored.
    period
        Tile cell size in heatmap pixels, ``(rows, cols)`` or one int for both. With
        tile overlap > 0 use the stride in heatmap pixels (the stride cells of the tile
        grid).
    offset
        Heatmap pixel ``(row, col)`` where the first cell starts (cells repeat in both
        directions from there).

    Returns
    -------
    SeamRatio
        ``magnitude`` and ``tv`` (1.0 = no seams), and the pixel counts.

    Raises
    ------
    ValueError
        ``heatmap`` is not 2-D, or a period is < 1.
    """
    x = np.asarray(heatmap)
    if x.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {x.shape}")
    ph, pw = _periods(period)
    sums = _SeamSums()
    sums.add(x, ph, pw, (int(offset[0]), int(offset[1])), row0=0, own_rows=x.shape[0])
    return sums.result()


def _periods(period: int | tuple[int, int]) -> tuple[int, int]:
    ph, pw = (period, period) if isinstance(period, (int, np.integer)) else period
    ph, pw = int(ph), int(pw)
    if ph < 1 or pw < 1:
        raise ValueError(f"period must be >= 1, got {(ph, pw)}")
    return ph, pw


class _SeamSums:
    """Running sums of :func:`seam_ratio`, so a large heatmap is measured band by band."""

    def __init__(self) -> None:
        self.b = self.i = self.cross = self.within = 0.0
        self.n_b = self.n_i = self.n_cross = self.n_within = 0

    def add(self, band: npt.NDArray[np.floating] | npt.NDArray[np.integer], ph: int, pw: int,
            offset: tuple[int, int], *, row0: int, own_rows: int) -> None:
        """Add rows ``row0 .. row0 + own_rows - 1`` of the heatmap; ``band`` holds them
        plus, when there is one, the next row (for the differences across the band end)."""
        x = np.asarray(band)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)
        h, w = x.shape
        pr = _cell_position(h, ph, offset[0] - row0)
        pc = _cell_position(w, pw, offset[1])
        own = x[:own_rows]
        finite = np.isfinite(own)
        a = np.abs(np.where(finite, own, 0.0))
        edge_r = (pr[:own_rows] == 0) | (pr[:own_rows] == ph - 1)
        edge_c = (pc == 0) | (pc == pw - 1)
        edge = edge_r[:, None] | edge_c[None, :]
        border, interior = edge & finite, ~edge & finite
        self.b += float(a[border].sum(dtype=np.float64))
        self.i += float(a[interior].sum(dtype=np.float64))
        self.n_b += int(border.sum())
        self.n_i += int(interior.sum())
        # row pairs (i, i + 1) with i a row of this band's own rows
        if h > 1:
            d = np.abs(x[1:, :] - x[:-1, :])[:own_rows]
            ok = (np.isfinite(x[1:, :]) & np.isfinite(x[:-1, :]))[:own_rows]
            new_cell = (pr[1:] == 0)[:own_rows]
            self._diffs(d, ok, new_cell[:, None])
        if w > 1:
            d = np.abs(own[:, 1:] - own[:, :-1])
            ok = finite[:, 1:] & finite[:, :-1]
            self._diffs(d, ok, (pc[1:] == 0)[None, :])

    def _diffs(self, d: npt.NDArray[np.floating], ok: npt.NDArray[np.bool_],
               new_cell: npt.NDArray[np.bool_]) -> None:
        cross, within = new_cell & ok, ~new_cell & ok
        self.cross += float(d[cross].sum(dtype=np.float64))
        self.within += float(d[within].sum(dtype=np.float64))
        self.n_cross += int(cross.sum())
        self.n_within += int(within.sum())

    def result(self) -> SeamRatio:
        return SeamRatio(
            magnitude=_ratio(self.b, self.n_b, self.i, self.n_i),
            tv=_ratio(self.cross, self.n_cross, self.within, self.n_within),
            n_border=self.n_b,
            n_interior=self.n_i,
        )


#: Tile overlap aimed at by :func:`seam_free_overlap` (2 cells of a 14 x 14 map).
SEAM_FREE_OVERLAP = 1.0 / 7.0


def seam_free_overlap(tile_size: int, map_shape: tuple[int, int]) -> float:
    """The default (``tiling.overlap: null``) tile overlap: seam-free at low cost.

    The valid overlap closest to :data:`SEAM_FREE_OVERLAP` (1/7 of the tile: two
    heatmap pixels of a 14 x 14 map, 32 px of a 224 px tile) that puts tile borders on
    whole heatmap pixels, and at least one heatmap pixel. With the border-aware backward
    hook and the ``reliability`` blend (:mod:`wsi_saliency.border`: dim border rows
    rescaled, overlapping rows weighted by their measured reliability) this takes the
    demo model's seam ratio from 0.13 to 0.97 and its tile-edge rows to 1.00 of the
    interior (the ``hann`` blend alone left them at 0.8: a faint grid; see the README's
    Saliency section). It costs about
    ``(1 / (1 - overlap))^2`` times the tiles of overlap 0 (1.36x for 1/7).

    Parameters
    ----------
    tile_size
        Tile size in pixels.
    map_shape
        ``(h, w)`` of the saliency map of one tile.

    Returns
    -------
    float
        ``j / q`` with ``q = gcd(tile_size, map side)``; 0.0 when only overlap 0 lands on
        whole heatmap pixels.
    """
    q = math.gcd(int(tile_size), int(map_shape[0]))
    if q <= 1:
        return 0.0
    j = max(1, round(q * SEAM_FREE_OVERLAP))
    return j / q


def resolve_overlap(overlap: float | None, tile_size: int, map_shape: tuple[int, int]) -> float:
    """``overlap`` itself, or :func:`seam_free_overlap` when it is ``None`` (the default)."""
    return seam_free_overlap(tile_size, map_shape) if overlap is None else float(overlap)


def heatmap_seams(
    heatmap: Any, tile_size: int, stride: int, map_shape: tuple[int, int],
    *, channel: int | None = None, band_rows: int = 1024,
) -> SeamRatio:
    """:func:`seam_ratio` of a stitched heatmap on the stride cells of its tile grid.

    Parameters
    ----------
    heatmap
        2-D stitched map (NaN = no tile): a numpy or zarr array (read ``band_rows`` rows
        at a time, so memory stays bounded).
    tile_size, stride
        Tile size and stride in tile pixels.
    map_shape
        ``(h, w)`` of one tile's map.
    channel
        With a ``(C, H, W)`` heatmap: the channel measured.
    band_rows
        Rows read at a time.

    Returns
    -------
    SeamRatio
        With ``period`` = the stride in heatmap pixels and offset ``(0, 0)`` (the grid
        starts at the slide's origin).
    """
    period = max(1, int(stride) * int(map_shape[0]) // int(tile_size))
    shape = tuple(int(v) for v in heatmap.shape)
    if len(shape) != (2 if channel is None else 3):
        raise ValueError(f"heatmap of shape {shape} does not match channel={channel}")
    h = shape[-2]
    sums = _SeamSums()
    for r0 in range(0, h, band_rows):
        r1 = min(h, r0 + band_rows)
        rows = slice(r0, min(h, r1 + 1))
        band = np.asarray(heatmap[rows] if channel is None else heatmap[channel, rows])
        sums.add(band, period, period, (0, 0), row0=r0, own_rows=r1 - r0)
    return sums.result()
