"""Seeded, deterministic choice of tissue tiles for an evaluation.

The same path as a run: open the slide, detect tissue on a thumbnail, lay the tile
grid (without overlap), keep tiles with enough tissue. From the kept tiles it draws
``n`` at random (seeded per slide, so a slide's sample does not depend on the other
slides) and one block of ``k x k`` adjacent tissue tiles for the seam ratio.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from wsi_saliency.config import RunConfig
from wsi_saliency.plan import plan_slide
from wsi_saliency.readers import open_slide
from wsi_saliency.tiling import read_tiles
from wsi_saliency.types import TileGrid

__all__ = ["SlideSample", "find_block", "sample_slide", "slide_rng"]


@dataclass(frozen=True, eq=False)
class SlideSample:
    """Tiles drawn from one slide.

    Parameters
    ----------
    path
        The slide.
    tiles
        uint8 ``(n, S, S, 3)`` tiles at the model's spacing.
    indices
        ``(n,)`` indices of the tiles in the slide's grid (sorted).
    positions
        ``(n, 2)`` grid ``(row, col)`` of each tile.
    n_grid
        Number of tissue tiles the slide has.
    block
        uint8 ``(k * k, S, S, 3)`` tiles of a block of adjacent tissue tiles in
        row-major order, or None when the slide has no such block.
    block_shape
        ``(k, k)`` (``(0, 0)`` without a block).
    block_origin
        Grid ``(row, col)`` of the block's top-left tile (``(-1, -1)`` without one).
    """

    path: Path
    tiles: npt.NDArray[np.uint8]
    indices: npt.NDArray[np.int64]
    positions: npt.NDArray[np.int64]
    n_grid: int
    block: npt.NDArray[np.uint8] | None
    block_shape: tuple[int, int]
    block_origin: tuple[int, int]


def slide_rng(seed: int, path: str | Path) -> np.random.Generator:
    """Generator seeded by ``seed`` and the slide's file name (not its folder)."""
    return np.random.default_rng([int(seed), zlib.crc32(Path(path).name.encode("utf-8"))])


def find_block(
    grid: TileGrid, k: int, rng: np.random.Generator
) -> tuple[tuple[int, int], npt.NDArray[np.int64]] | None:
    """A ``k x k`` block of adjacent kept tiles, chosen at random among all such blocks.

    Returns
    -------
    ((row, col), indices) or None
        The block's top-left grid position and the grid indices of its tiles in
        row-major order; None when no block of that size is fully tissue.
    """
    rows_n, cols_n = grid.grid_shape
    index = np.full((rows_n, cols_n), -1, np.int64)
    index[grid.rows, grid.cols] = np.arange(len(grid))
    if rows_n < k or cols_n < k:
        return None
    present = (index >= 0).astype(np.int64)
    sat = np.zeros((rows_n + 1, cols_n + 1), np.int64)
    sat[1:, 1:] = present.cumsum(0).cumsum(1)
    full = sat[k:, k:] - sat[:-k, k:] - sat[k:, :-k] + sat[:-k, :-k] == k * k
    candidates = np.argwhere(full)
    if len(candidates) == 0:
        return None
    r, c = (int(v) for v in candidates[rng.integers(len(candidates))])
    return (r, c), index[r:r + k, c:c + k].reshape(-1)


def sample_slide(
    path: str | Path,
    config: RunConfig,
    n_tiles: int,
    *,
    seed: int = 0,
    block: int = 3,
) -> SlideSample:
    """Draw ``n_tiles`` tissue tiles and a block of adjacent tiles from a slide.

    Parameters
    ----------
    path
        The slide.
    config
        Run configuration with tile size and spacing resolved (slide, tissue and
        ``tiling.min_tissue`` are used; the overlap is always 0 here).
    n_tiles
        Tiles wanted; all tissue tiles when the slide has fewer.
    seed
        Seed; with the slide's file name it fixes the draw.
    block
        Side of the block of adjacent tiles (falls back to 2 when the slide has no
        ``block x block`` tissue block; no block at all when it has none of 2 x 2).

    Raises
    ------
    WsiSaliencyError
        Unreadable slide, missing spacing, slide smaller than a tile, no tissue.
    """
    slide_path = Path(path)
    rng = slide_rng(seed, slide_path)
    # the run's one open -> tissue -> grid path, at overlap 0 (disjoint tiles)
    plan_config = dataclasses.replace(
        config, tiling=dataclasses.replace(config.tiling, overlap=0.0)
    )
    with open_slide(slide_path, backend=config.slide.backend, mpp=config.slide.mpp,
                    mpp_sidecar=config.slide.mpp_sidecar) as reader:
        grid = plan_slide(reader, plan_config).grid
        n = min(int(n_tiles), len(grid))
        chosen = np.sort(rng.choice(len(grid), size=n, replace=False)).astype(np.int64)
        tiles = read_tiles(reader, grid, chosen)
        found = None
        for k in (block, 2):
            found = find_block(grid, k, rng)
            if found is not None:
                break
        if found is None:
            block_tiles, shape, origin = None, (0, 0), (-1, -1)
        else:
            origin, idx = found
            side = int(round(len(idx) ** 0.5))
            block_tiles = read_tiles(reader, grid, idx)
            shape = (side, side)
    positions = np.stack([grid.rows[chosen], grid.cols[chosen]], axis=1).astype(np.int64)
    return SlideSample(path=slide_path, tiles=tiles, indices=chosen, positions=positions,
                       n_grid=len(grid), block=block_tiles, block_shape=shape,
                       block_origin=origin)
