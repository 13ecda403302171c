"""The tile grid of a slide at a physical spacing, and reading tiles through it.

Grid geometry (all level-0 pixels, origin at the slide's top-left corner):

* a tile is ``tile_size`` px at ``spacing`` um/px, so its footprint is
  ``size_level0 = tile_size * spacing / mpp`` (x and y separately, may be fractional);
* neighbours are ``stride = round(tile_size * (1 - overlap))`` tile pixels apart;
  tile ``(row, col)`` has its top-left corner at
  ``coords = rint((col, row) * stride * spacing / mpp)`` - computed from the grid index,
  never accumulated, so footprints never drift;
* the grid has the fewest columns (rows) that cover the slide width (height):
  ``n = ceil((W - size_level0) / step) + 1`` with ``step = stride * spacing / mpp``; tiles
  crossing the right/bottom edge are padded with white background when read;
* a tile is kept when the fraction of its footprint covered by the tissue mask (exact
  area overlap with the mask's pixels; outside the slide counts as no tissue) is at
  least ``min_tissue``.

Reading: from the coarsest pyramid level whose downsample does not exceed the target
(``spacing / mpp``, with :data:`LEVEL_TOLERANCE` relative slack for levels such as
2.0005 of odd-sized slides), resized with anti-aliasing onto the tile's exact footprint (see
:mod:`wsi_saliency.readers.resample`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from wsi_saliency.errors import ConfigError, MissingMppError, NoTissueError, SlideTooSmallError
from wsi_saliency.readers.base import LEVEL_TOLERANCE, SlideReader
from wsi_saliency.readers.blockcache import DEFAULT_MAX_BYTES, BlockCache
from wsi_saliency.readers.resample import resample_margin, resample_window
from wsi_saliency.types import Mpp, SlideInfo, TileGrid, TissueMask

__all__ = [
    "check_slide_fits",
    "full_grid",
    "grid_geojson",
    "level_crops",
    "make_grid",
    "read_tile",
    "read_tiles",
    "tile_boxes",
    "tile_cache",
    "tile_window",
    "tissue_fractions",
]


def _level_for(info: SlideInfo, target_downsample: float) -> int:
    best = 0
    for k, d in enumerate(info.level_downsamples):
        if d <= target_downsample * (1 + LEVEL_TOLERANCE):
            best = k
    return best


def tissue_fractions(
    mask: TissueMask,
    x0: npt.NDArray[np.float64],
    y0: npt.NDArray[np.float64],
    width: float,
    height: float,
) -> npt.NDArray[np.float32]:
    """Fraction of each rectangle ``[x0, x0 + width) x [y0, y0 + height)`` that is tissue.

    Exact area overlap with the mask pixels (a summed-area table interpolated
    bilinearly, which is exact for a piecewise-constant mask); area outside the mask
    counts as background. Rectangles are processed in bands of rows so that memory
    stays bounded for very large masks.
    """
    x0 = np.asarray(x0, dtype=np.float64)
    y0 = np.asarray(y0, dtype=np.float64)
    x0, y0 = np.broadcast_arrays(x0, y0)
    shape = x0.shape
    xf, yf = x0.reshape(-1), y0.reshape(-1)
    out = np.zeros(xf.shape, dtype=np.float32)
    m = mask.mask
    rows, cols = m.shape
    ds = mask.downsample
    if xf.size == 0 or not m.any():
        return out.reshape(shape)
    # only the mask's occupied bounding box matters
    rr = np.nonzero(m.any(axis=1))[0]
    cc = np.nonzero(m.any(axis=0))[0]
    br0, br1, bc0, bc1 = int(rr[0]), int(rr[-1]) + 1, int(cc[0]), int(cc[-1]) + 1
    order = np.argsort(yf, kind="stable")
    band_rows = max(64, (1 << 22) // max(1, bc1 - bc0))  # ~32 MB of float64 table
    pix_area = (width / ds) * (height / ds)
    i = 0
    n = order.size
    while i < n:
        v_lo = yf[order[i]] / ds
        r_lo = max(br0, int(math.floor(v_lo)))
        j = i
        r_hi_limit = r_lo + band_rows
        while j < n and (yf[order[j]] + height) / ds <= r_hi_limit:
            j += 1
        if j == i:  # one rectangle taller than a band: take it alone
            j = i + 1
        sel = order[i:j]
        v0 = yf[sel] / ds
        v1 = (yf[sel] + height) / ds
        u0 = xf[sel] / ds
        u1 = (xf[sel] + width) / ds
        r0 = min(max(br0, int(math.floor(v0.min()))), br1)
        r1 = max(min(br1, int(math.ceil(v1.max()))), r0)
        if r1 > r0:
            sub = m[r0:r1, bc0:bc1]
            sat = np.zeros((r1 - r0 + 1, bc1 - bc0 + 1), dtype=np.float64)
            sat[1:, 1:] = sub.cumsum(0, dtype=np.float64).cumsum(1)
            a = _sat_area(sat, u1 - bc0, v1 - r0) - _sat_area(sat, u0 - bc0, v1 - r0)
            a -= _sat_area(sat, u1 - bc0, v0 - r0) - _sat_area(sat, u0 - bc0, v0 - r0)
            out[sel] = np.clip(a / pix_area, 0.0, 1.0)
        i = j
    return out.reshape(shape)


def _sat_area(
    sat: npt.NDArray[np.float64], u: npt.NDArray[np.float64], v: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Tissue area in ``[0, u) x [0, v)`` (mask px) from a summed-area table."""
    rows, cols = sat.shape[0] - 1, sat.shape[1] - 1
    u = np.clip(u, 0.0, cols)
    v = np.clip(v, 0.0, rows)
    i = np.minimum(np.floor(u).astype(np.int64), max(cols - 1, 0))
    j = np.minimum(np.floor(v).astype(np.int64), max(rows - 1, 0))
    fu = u - i
    fv = v - j
    out: npt.NDArray[np.float64] = (sat[j, i] * (1 - fu) + sat[j, i + 1] * fu) * (1 - fv) + (
        sat[j + 1, i] * (1 - fu) + sat[j + 1, i + 1] * fu
    ) * fv
    return out


_MPP_FIX = (
    "give it in um/px with --mpp (CLI, e.g. --mpp 0.25) / mpp= (open_slide) "
    'or a {stem}.mpp.json sidecar holding {"mpp": 0.25}'
)


def _check_tile(tile_size: int, spacing: float) -> None:
    if not (isinstance(tile_size, (int, np.integer)) and tile_size >= 1):
        raise ConfigError(f"tile size must be a positive integer, got {tile_size!r}")
    if not (spacing > 0 and math.isfinite(spacing)):
        raise ConfigError(f"tile spacing must be positive um/px, got {spacing!r}")


def check_slide_fits(info: SlideInfo, *, tile_size: int, spacing: float) -> Mpp:
    """Refuse a slide smaller than one tile, before any tissue detection.

    A tile is ``tile_size`` px at ``spacing`` um/px, i.e. ``tile_size * spacing`` um
    square; the slide is ``width * mpp.x`` by ``height * mpp.y`` um.

    Returns
    -------
    Mpp
        The slide's level-0 spacing (known, since it was checked).

    Raises
    ------
    SlideTooSmallError
        The slide is narrower or shorter than one tile.
    MissingMppError
        The slide's spacing is unknown.
    ConfigError
        ``tile_size`` or ``spacing`` out of range.
    """
    if info.mpp is None:
        raise MissingMppError(f"{info.path}: no pixel spacing known; {_MPP_FIX}")
    _check_tile(tile_size, spacing)
    w0, h0 = info.dimensions
    size_x = tile_size * spacing / info.mpp.x
    size_y = tile_size * spacing / info.mpp.y
    if w0 < size_x - 1e-6 or h0 < size_y - 1e-6:
        tile_um = tile_size * spacing
        raise SlideTooSmallError(
            f"{info.path}: the slide ({w0}x{h0} px = {w0 * info.mpp.x:.4g}x"
            f"{h0 * info.mpp.y:.4g} um) is smaller than one tile ({int(tile_size)} px at "
            f"{spacing:g} um/px = {tile_um:.4g}x{tile_um:.4g} um); use a smaller "
            "--tile-size or a finer --spacing (tiling.tile_size / tiling.spacing)"
        )
    return info.mpp


def make_grid(
    info: SlideInfo,
    mask: TissueMask,
    *,
    tile_size: int,
    spacing: float,
    overlap: float = 0.0,
    min_tissue: float = 0.25,
) -> TileGrid:
    """Lay the tile grid over a slide and keep the tiles with enough tissue.

    Parameters
    ----------
    info
        The slide (its spacing must be known).
    mask
        Tissue mask (from :func:`wsi_saliency.tissue.detect_tissue`).
    tile_size
        Tile width = height in pixels at ``spacing``.
    spacing
        Tile spacing in um/px.
    overlap
        Fraction of a tile shared with its neighbour, ``0 <= overlap < 1``.
    min_tissue
        Smallest tissue fraction of a kept tile, ``0..1``.

    Returns
    -------
    TileGrid
        Kept tiles in row-major order.

    Raises
    ------
    SlideTooSmallError
        The slide is smaller than one tile at ``spacing``.
    NoTissueError
        No tile reaches ``min_tissue``.
    ConfigError
        Out-of-range parameters.
    """
    mpp = check_slide_fits(info, tile_size=tile_size, spacing=spacing)
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap!r}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"min_tissue must be in [0, 1], got {min_tissue!r}")
    tile_size = int(tile_size)
    stride = round(tile_size * (1.0 - overlap))
    if stride < 1:
        raise ConfigError(f"overlap {overlap} leaves no stride for {tile_size} px tiles; lower it")
    w0, h0 = info.dimensions
    size_x = tile_size * spacing / mpp.x
    size_y = tile_size * spacing / mpp.y
    step_x = stride * spacing / mpp.x
    step_y = stride * spacing / mpp.y
    n_cols = max(1, math.ceil((w0 - size_x) / step_x - 1e-9) + 1)
    n_rows = max(1, math.ceil((h0 - size_y) / step_y - 1e-9) + 1)
    xs = np.rint(np.arange(n_cols, dtype=np.float64) * stride * spacing / mpp.x)
    ys = np.rint(np.arange(n_rows, dtype=np.float64) * stride * spacing / mpp.y)
    frac = tissue_fractions(
        mask,
        np.broadcast_to(xs[None, :], (n_rows, n_cols)),
        np.broadcast_to(ys[:, None], (n_rows, n_cols)),
        size_x,
        size_y,
    )
    keep = frac >= np.float32(min_tissue) - np.float32(1e-6)
    rows, cols = np.nonzero(keep)
    if rows.size == 0:
        raise NoTissueError(
            f"{info.path}: no tile has at least {min_tissue:g} tissue "
            f"({tile_size} px at {spacing:g} um/px); lower --min-tissue (tiling.min_tissue) or check the tissue mask"
        )
    target = spacing / mpp.x
    level = _level_for(info, target)
    level_ds = float(info.level_downsamples[level])
    coords = np.stack([xs[cols], ys[rows]], axis=1).astype(np.int64)
    return TileGrid(
        tile_size=tile_size,
        spacing=float(spacing),
        overlap=float(overlap),
        stride=int(stride),
        mpp=mpp,
        level=level,
        level_downsample=level_ds,
        scale=float(tile_size / (size_x / level_ds)),
        size_level0=(float(size_x), float(size_y)),
        grid_shape=(n_rows, n_cols),
        coords=coords,
        rows=rows.astype(np.int64),
        cols=cols.astype(np.int64),
        tissue_fraction=frac[rows, cols].astype(np.float32),
        slide_dimensions=(int(w0), int(h0)),
    )


def full_grid(
    info: SlideInfo, *, tile_size: int, spacing: float, overlap: float = 0.0
) -> TileGrid:
    """Every grid position over the slide, without tissue filtering.

    The same grid :func:`make_grid` lays (same coordinates, level and scale), with no
    tile left out: for stitching results computed elsewhere, benchmarks and tests.
    ``tissue_fraction`` is 1 for tiles wholly inside the slide.

    Raises
    ------
    SlideTooSmallError, ConfigError
        As :func:`make_grid`.
    """
    w0, h0 = info.dimensions
    slide = TissueMask(
        mask=np.ones((1, 1), dtype=bool), downsample=float(max(w0, h0)), spacing=0.0
    )
    return make_grid(info, slide, tile_size=tile_size, spacing=spacing, overlap=overlap,
                     min_tissue=0.0)


def tile_window(grid: TileGrid, k: int) -> tuple[int, int, int, int, float, float, float, float]:
    """Where tile ``k`` is read from ``grid.level``.

    Returns
    -------
    tuple
        ``(sx, sy, w, h, u0, v0, fx, fy)``: the source window (level pixels, with the
        resampling margin; may reach outside the level), the level coordinates of the
        tile's top-left corner and the level pixels per tile pixel along x and y.
    """
    t = grid.tile_size
    ds = grid.level_downsample
    x0, y0 = (float(v) for v in grid.coords[k])
    fx = grid.size_level0[0] / ds / t  # level px per tile px
    fy = grid.size_level0[1] / ds / t
    u0, v0 = x0 / ds, y0 / ds
    margin = resample_margin(max(fx, fy))
    sx = math.floor(u0 + 1e-9) - margin
    sy = math.floor(v0 + 1e-9) - margin
    ex = math.ceil(u0 + t * fx - 1e-9) + margin
    ey = math.ceil(v0 + t * fy - 1e-9) + margin
    return sx, sy, ex - sx, ey - sy, u0, v0, fx, fy


def tile_cache(grid: TileGrid, *, max_bytes: int = DEFAULT_MAX_BYTES) -> BlockCache:
    """A :class:`~wsi_saliency.readers.blockcache.BlockCache` sized for reading ``grid``.

    Big enough to hold the slide blocks under two rows of tiles across the level (so
    that, read in grid order, each compressed slide tile is decoded once), at most
    ``max_bytes``. Share it between the reader threads of one slide.
    """
    if len(grid) == 0:
        return BlockCache(0)
    _, _, _, h, *_ = tile_window(grid, 0)
    level_width = math.ceil(grid.slide_dimensions[0] / grid.level_downsample)
    return BlockCache.for_rows(level_width, h, max_bytes=max_bytes)


def _identity_origin(u0: float, v0: float, fx: float, fy: float) -> tuple[int, int] | None:
    """Level pixel of the tile's corner when the tile is a plain crop of the level."""
    eps = 1e-6
    if abs(fx - 1.0) < eps and abs(fy - 1.0) < eps:
        x, y = round(u0), round(v0)
        if abs(u0 - x) < eps and abs(v0 - y) < eps:
            return x, y
    return None


def level_crops(grid: TileGrid) -> npt.NDArray[np.int64] | None:
    """Level-pixel corners ``(N, 2)`` of the tiles when every tile is a plain crop of
    ``grid.level`` (one level pixel per tile pixel, whole offsets), else None.

    Such tiles are read without resampling (:func:`read_tile`), which is what decoding
    them straight from the level's compressed tiles needs (``inference.decode: gpu``).
    """
    out = np.empty((len(grid), 2), dtype=np.int64)
    for k in range(len(grid)):
        _, _, _, _, u0, v0, fx, fy = tile_window(grid, k)
        crop = _identity_origin(u0, v0, fx, fy)
        if crop is None:
            return None
        out[k] = crop
    return out


def read_tile(
    reader: SlideReader,
    grid: TileGrid,
    k: int,
    *,
    cache: BlockCache | None = None,
    out: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.uint8]:
    """Tile ``k`` of ``grid``: uint8 ``(tile_size, tile_size, 3)``.

    Reads the window of ``grid.level`` under the tile's exact level-0 footprint (plus
    a filter margin) and resamples it with anti-aliasing; outside the slide is white.
    A tile that is a plain crop of the level (one level pixel per tile pixel, whole
    offsets) is read as that crop. With ``cache`` the window is assembled from cached
    slide blocks (the same pixels, decoded once); without it the window is read
    directly. ``out`` receives the tile when given.
    """
    sx, sy, w, h, u0, v0, fx, fy = tile_window(grid, k)
    t = grid.tile_size
    crop = _identity_origin(u0, v0, fx, fy)
    if crop is not None:
        if cache is not None:
            return cache.read_level(reader, grid.level, crop[0], crop[1], t, t, out=out)
        tile = reader.read_level(grid.level, crop[0], crop[1], t, t)
    else:
        if cache is None:
            src = reader.read_level(grid.level, sx, sy, w, h)
        else:
            src = cache.read_level(reader, grid.level, sx, sy, w, h)
        tile = resample_window(src, (sx, sy), (u0, v0), (fx, fy), (t, t))
    if out is None:
        return tile
    out[...] = tile
    return out


def read_tiles(
    reader: SlideReader,
    grid: TileGrid,
    indices: Sequence[int] | npt.NDArray[np.integer[Any]],
    *,
    cache: BlockCache | None = None,
) -> npt.NDArray[np.uint8]:
    """Several tiles: uint8 ``(B, tile_size, tile_size, 3)``.

    Overlapping tiles share compressed slide tiles; reading through ``cache`` (shared
    by every call on the slide, see :func:`tile_cache`) decodes each of them once.
    Without ``cache`` a cache local to this call still decodes each slide tile once
    per batch. The pixels are the same either way.
    """
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    out = np.empty((len(idx), grid.tile_size, grid.tile_size, 3), dtype=np.uint8)
    if cache is None and len(idx) > 1:
        cache = BlockCache()
    for j, k in enumerate(idx):
        read_tile(reader, grid, k, cache=cache, out=out[j])
    return out


def tile_boxes(grid: TileGrid) -> npt.NDArray[np.int64]:
    """Integer level-0 boxes ``(x0, y0, x1, y1)`` of every kept tile, shape ``(N, 4)``.

    ``x0, y0`` are ``grid.coords``; the far corner is
    ``round((col * stride + tile_size) * spacing / mpp)`` (the same rounding as the
    top-left), so tiles without overlap share their edges exactly. Every output that
    draws tiles (``tiles.geojson``, ``tiles.csv``, the ``tiles`` preview) uses these.
    """
    ext = float(grid.tile_size) * float(grid.spacing)
    step = float(grid.stride) * float(grid.spacing)
    x1 = np.round((grid.cols.astype(np.float64) * step + ext) / float(grid.mpp.x))
    y1 = np.round((grid.rows.astype(np.float64) * step + ext) / float(grid.mpp.y))
    out = np.empty((len(grid), 4), dtype=np.int64)
    out[:, 0] = grid.coords[:, 0]
    out[:, 1] = grid.coords[:, 1]
    out[:, 2] = x1.astype(np.int64)
    out[:, 3] = y1.astype(np.int64)
    return out


def grid_geojson(grid: TileGrid, *, object_type: str = "tile") -> dict[str, Any]:
    """The tiles as a QuPath-importable GeoJSON FeatureCollection (level-0 px).

    Each feature is a Polygon (closed ring) with properties ``objectType``
    (``"tile"`` or ``"detection"``) and ``measurements`` (row, col, tissue fraction).
    """
    if object_type not in ("tile", "detection", "annotation"):
        raise ValueError(f"unknown QuPath objectType {object_type!r}")
    feats = []
    for k, (x0, y0, x1, y1) in enumerate(tile_boxes(grid).tolist()):
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        feats.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": object_type,
                    "name": f"tile {int(grid.rows[k])},{int(grid.cols[k])}",
                    "measurements": {
                        "row": int(grid.rows[k]),
                        "col": int(grid.cols[k]),
                        "tissue_fraction": round(float(grid.tissue_fraction[k]), 4),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": feats}
