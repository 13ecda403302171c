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
first tile starts, normally ``(0, 0)``): every tile border then lies on a cell border,
because tiles start on multiples of the stride and the tile size... need not be a multiple
of the stride; in that case the far border of a tile falls inside a cell and is counted
as interior. This is the definition used for every run's ``run.json``.

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

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SeamRatio", "seam_ratio"]


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
    x = np.asarray(heatmap, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {x.shape}")
    ph, pw = (period, period) if isinstance(period, (int, np.integer)) else period
    ph, pw = int(ph), int(pw)
    if ph < 1 or pw < 1:
        raise ValueError(f"period must be >= 1, got {(ph, pw)}")
    h, w = x.shape
    pr = _cell_position(h, ph, int(offset[0]))
    pc = _cell_position(w, pw, int(offset[1]))
    border_r = (pr == 0) | (pr == ph - 1)
    border_c = (pc == 0) | (pc == pw - 1)
    finite = np.isfinite(x)
    a = np.where(finite, np.abs(x), 0.0)
    border = (border_r[:, None] | border_c[None, :]) & finite
    interior = ~(border_r[:, None] | border_c[None, :]) & finite
    n_b, n_i = int(border.sum()), int(interior.sum())
    magnitude = _ratio(float(a[border].sum()), n_b, float(a[interior].sum()), n_i)

    # neighbour differences: rows i / i+1 and columns j / j+1
    cross_sum = within_sum = 0.0
    n_cross = n_within = 0
    if h > 1:
        d = np.abs(x[1:, :] - x[:-1, :])
        ok = finite[1:, :] & finite[:-1, :]
        cross = (pr[1:] == 0)[:, None] & ok  # row i+1 starts a new cell
        within = (pr[1:] != 0)[:, None] & ok
        cross_sum += float(d[cross].sum())
        within_sum += float(d[within].sum())
        n_cross += int(cross.sum())
        n_within += int(within.sum())
    if w > 1:
        d = np.abs(x[:, 1:] - x[:, :-1])
        ok = finite[:, 1:] & finite[:, :-1]
        cross = (pc[1:] == 0)[None, :] & ok
        within = (pc[1:] != 0)[None, :] & ok
        cross_sum += float(d[cross].sum())
        within_sum += float(d[within].sum())
        n_cross += int(cross.sum())
        n_within += int(within.sum())
    tv = _ratio(cross_sum, n_cross, within_sum, n_within)
    return SeamRatio(magnitude=magnitude, tv=tv, n_border=n_b, n_interior=n_i)
