"""Streaming stitcher: per-tile probabilities and saliency maps into slide heatmaps.

The heatmap grid
----------------
Every tile is cut at ``grid.spacing`` um/px with ``grid.tile_size`` px and explained by
a ``(m, m)`` saliency map, so one map pixel covers ``tile_size / m`` tile pixels. The
heatmap pixel size is therefore::

    pixel_size_um = grid.spacing * grid.tile_size / m

(224 px tiles at 0.5 um/px with a 14 x 14 map give 8 um/px). The heatmap is anchored at
level-0 pixel (0, 0) with no offset: heatmap pixel ``(i, j)`` covers the level-0
rectangle ``[j * sx, (j + 1) * sx) x [i * sy, (i + 1) * sy)`` with
``sx = pixel_size_um / mpp.x`` and ``sy = pixel_size_um / mpp.y``. Its shape covers the
whole slide: ``ceil(slide_size_um / pixel_size_um)`` along each axis.

Tile ``k`` at grid position ``(r, c)`` lands at heatmap pixel
``(r * stride * m / tile_size, c * stride * m / tile_size)``; both must be whole numbers,
so the stride must be a multiple of ``tile_size / gcd(tile_size, m)`` (a clear
:class:`~wsi_saliency.errors.ConfigError` says which overlaps work otherwise).

Channels
--------
Channel 0 is the probability of the tumour class painted over each tile's footprint,
channel 1 the raw (signed) saliency map placed at the tile's position, then the
probability of every other class, then any ``extra_maps`` requested.

Blending
--------
Overlapping tiles are merged by a weighted average. ``"uniform"`` (the Stitcher's default;
``output.blend`` defaults to ``"reliability"``) gives every pixel of every tile weight 1,
i.e. a plain average of the tiles that cover a pixel. ``"reliability"`` cross-fades
linearly over the overlap, weighted by the border profile measured on the slide's tiles,
and rescales the dim border rows of each saliency map (:mod:`wsi_saliency.border`).
``"hann"`` weights tile pixel ``(u, v)`` by ``w(u) * w(v)`` with
``w(u) = sin^2(pi * (u + 0.5) / m)``: a smooth window that is never zero (so slide edges
stay covered) and, at overlap 0.5, sums to exactly 1 between neighbours.

Uncovered pixels
----------------
Heatmap pixels that no tile covers (background, tiles left out for lack of tissue) are
**NaN** in the normalised heatmap and have weight 0.

Memory
------
Weighted sums and weights are accumulated in on-disk zarr arrays below ``store``. Only a
bounded number of heatmap chunks (``cache_chunks``, least recently used) is held in
memory; evicted chunks are written back to disk, so memory stays bounded whatever the
slide size. :meth:`Stitcher.finalize` normalises chunk by chunk.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import numpy.typing as npt

from wsi_saliency.border import BorderProfile, reliability_window
from wsi_saliency.errors import ConfigError, OutputError, StitchError
from wsi_saliency.types import BatchResult, TileGrid

if TYPE_CHECKING:
    import zarr

__all__ = [
    "BLENDS",
    "Blend",
    "StitchedHeatmaps",
    "Stitcher",
    "TileStats",
    "blend_window",
    "check_tile_geometry",
    "heatmap_pixel_size",
]

Blend = Literal["uniform", "hann", "reliability"]
#: Names accepted by ``blend`` (``output.blend``).
BLENDS: tuple[Blend, ...] = get_args(Blend)

_EPS = 1e-9


def blend_window(blend: str, shape: tuple[int, int], *, overlap: int = 0,
                 profile: BorderProfile | None = None) -> npt.NDArray[np.float32]:
    """Return the per-pixel weight of one tile map.

    Parameters
    ----------
    blend
        ``"uniform"`` (all ones), ``"hann"`` (``sin^2(pi (u + 0.5) / n)`` separable) or
        ``"reliability"`` (:func:`wsi_saliency.border.reliability_window`).
    shape
        ``(h, w)`` of the map.
    overlap
        ``"reliability"`` only: map pixels shared by neighbouring tiles.
    profile
        ``"reliability"`` only: the measured border profile (``None``: ramp alone).

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` float32 weights, all strictly positive.

    Raises
    ------
    ConfigError
        If ``blend`` is not one of :data:`BLENDS`.
    """
    h, w = shape
    if blend == "uniform":
        return np.ones((h, w), dtype=np.float32)
    if blend == "hann":
        wy = np.sin(np.pi * (np.arange(h) + 0.5) / h) ** 2
        wx = np.sin(np.pi * (np.arange(w) + 0.5) / w) ** 2
        return np.outer(wy, wx).astype(np.float32)
    if blend == "reliability":
        return reliability_window((h, w), overlap, profile)
    raise ConfigError(
        f"unknown blend {blend!r}: use one of {', '.join(repr(b) for b in BLENDS)} "
        "(output.blend via --set or the config)"
    )


def heatmap_pixel_size(grid: TileGrid, map_shape: tuple[int, int]) -> float:
    """Heatmap pixel size in um: ``grid.spacing * grid.tile_size / map_px``.

    Parameters
    ----------
    grid
        The slide's tile grid.
    map_shape
        ``(h, w)`` of the per-tile saliency map; must be square.

    Returns
    -------
    float
        Micrometres per heatmap pixel.

    Raises
    ------
    ConfigError
        If the map is not square or not positive.
    """
    mh, mw = (int(v) for v in map_shape)
    if mh <= 0 or mw <= 0:
        raise ConfigError(f"saliency map shape {map_shape} must be positive")
    if mh != mw:
        raise ConfigError(
            f"saliency map shape {map_shape} is not square: heatmap pixels must be square; "
            "pick a layer whose feature map is square for square tiles"
        )
    return float(grid.spacing) * int(grid.tile_size) / mh


def _stride_in_map_px(tile: int, stride: int, overlap: float, m: int) -> int:
    """The stride in heatmap pixels, or a ConfigError naming valid overlaps."""
    unit = tile // math.gcd(tile, m)  # smallest stride (tile px) landing on whole map px
    if stride <= 0 or (stride * m) % tile != 0:
        q = tile // unit  # valid overlaps are the multiples j / q, j = 0 .. q - 1
        valid = [j / q for j in range(q)]
        nearest = sorted(valid, key=lambda o: (abs(o - float(overlap)), o))[:2]
        examples = [o for o in (0.0, 0.5) if o in valid]
        shown = ", ".join(f"{o:.4g}" for o in sorted(set(nearest + examples)))
        raise ConfigError(
            f"tile stride {stride} px (tile_size {tile}, overlap {overlap:g}) does not land "
            f"on whole heatmap pixels of a {m}x{m} map: the stride must be a multiple of "
            f"{unit} px, i.e. the overlap a multiple of 1/{q}; use e.g. --overlap "
            f"(tiling.overlap) {shown}"
        )
    return stride * m // tile


def _check_stride(grid: TileGrid, m: int) -> int:
    """Return the stride in heatmap pixels or raise a ConfigError naming valid overlaps."""
    return _stride_in_map_px(int(grid.tile_size), int(grid.stride), float(grid.overlap), m)


def check_tile_geometry(tile_size: int, overlap: float, map_shape: tuple[int, int]) -> None:
    """Check before any slide is read that tiles will stitch onto whole heatmap pixels.

    Parameters
    ----------
    tile_size
        Tile size in pixels.
    overlap
        Tile overlap fraction; the stride is ``round(tile_size * (1 - overlap))`` as in
        :class:`~wsi_saliency.types.TileGrid`.
    map_shape
        ``(h, w)`` of the per-tile saliency map.

    Raises
    ------
    ConfigError
        A non-square map, or an overlap whose stride misses whole heatmap pixels (the
        message lists valid overlaps).
    """
    mh, mw = (int(v) for v in map_shape)
    if mh <= 0 or mw <= 0 or mh != mw:
        raise ConfigError(
            f"saliency map shape {map_shape} is not square: heatmap pixels must be square; "
            "pick a layer whose feature map is square for square tiles"
        )
    stride = round(tile_size * (1 - overlap))
    _stride_in_map_px(int(tile_size), int(stride), float(overlap), mh)


@dataclass(frozen=True, eq=False)
class TileStats:
    """Per-tile results kept beside the heatmaps (for GeoJSON and CSV).

    Parameters
    ----------
    probabilities
        ``(N, C)`` float32 class probabilities, NaN for tiles never added.
    saliency_mean, saliency_max, saliency_positive_fraction
        ``(N,)`` float32 statistics of each tile's raw saliency map: mean, maximum and the
        fraction of map pixels > 0. NaN for tiles never added.
    done
        ``(N,)`` bool, True for tiles that were added.
    """

    probabilities: npt.NDArray[np.float32]
    saliency_mean: npt.NDArray[np.float32]
    saliency_max: npt.NDArray[np.float32]
    saliency_positive_fraction: npt.NDArray[np.float32]
    done: npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class StitchedHeatmaps:
    """The normalised heatmaps of one slide, on disk.

    Parameters
    ----------
    store
        The zarr group folder holding ``heatmap``, ``sum`` and ``weight`` (scratch; the
        caller may delete it once the writers have run).
    heatmap
        ``(C, H, W)`` float32 zarr array; NaN where no tile covers a pixel. Channel 0 is
        the tumour probability, channel 1 the raw signed saliency; see
        ``channel_names``.
    weight
        ``(H, W)`` float32 zarr array of accumulated blend weights (0 = not covered).
    channel_names
        Label of every channel (``probability_<tumour>``, ``saliency``,
        ``probability_<other class>`` ..., extra map names).
    pixel_size_um
        Micrometres per heatmap pixel (same along x and y).
    shape
        ``(H, W)`` of the heatmap.
    coverage
        Fraction of heatmap pixels covered by at least one tile.
    grid
        The tile grid that was stitched.
    class_names
        Names of the model's classes.
    tumor_class
        Index of the tumour class in ``class_names``.
    blend
        Blend used (``"uniform"``, ``"hann"`` or ``"reliability"``).
    tiles
        Per-tile results (:class:`TileStats`).
    chunk_size
        Chunk edge of the zarr arrays in heatmap pixels.
    """

    store: Path
    heatmap: zarr.Array
    weight: zarr.Array
    channel_names: tuple[str, ...]
    pixel_size_um: float
    shape: tuple[int, int]
    coverage: float
    grid: TileGrid
    class_names: tuple[str, ...]
    tumor_class: int
    blend: str
    tiles: TileStats
    chunk_size: int

    @property
    def has_saliency(self) -> bool:
        """Whether a ``saliency`` channel was stitched (False for ``--method none``)."""
        return "saliency" in self.channel_names

    @property
    def downsample(self) -> tuple[float, float]:
        """Level-0 pixels per heatmap pixel ``(sx, sy)`` = ``pixel_size_um / mpp``."""
        return (
            self.pixel_size_um / float(self.grid.mpp.x),
            self.pixel_size_um / float(self.grid.mpp.y),
        )

    def channel_index(self, name: str) -> int:
        """Index of the channel labelled ``name``.

        Raises
        ------
        KeyError
            If no channel has that label.
        """
        try:
            return self.channel_names.index(name)
        except ValueError:
            raise KeyError(
                f"no heatmap channel {name!r}; channels are {list(self.channel_names)}"
            ) from None


class Stitcher:
    """Accumulate tile results into on-disk heatmaps, memory bounded.

    Parameters
    ----------
    store
        Folder for the scratch zarr group (created; must not exist or be an empty folder).
    grid
        The slide's tile grid; ``BatchResult.indices`` index into it.
    map_shape
        ``(h, w)`` of each tile's saliency map; must be square, and the grid's stride
        must land on whole heatmap pixels.
    class_names
        Class names of the model (``BatchResult.probabilities`` columns).
    blend
        ``"uniform"`` (default, plain average), ``"hann"`` (smooth window) or
        ``"reliability"`` (ramp x measured border profile, and the border gain on the
        saliency channel: :mod:`wsi_saliency.border`).
    border
        ``"reliability"`` only: the border profile measured on this slide's tile maps
        (``None``: the ramp window alone, no gain).
    tumor_class
        Index of the tumour class (channel 0).
    extra_maps
        Names of ``BatchResult.extra`` maps to stitch as further channels (others are
        ignored).
    saliency
        Stitch the saliency channel (default). ``False`` for prediction only
        (``--method none``): there is no ``saliency`` channel, ``BatchResult.maps`` must
        be ``None`` and the per-tile saliency statistics stay NaN; ``map_shape`` still
        sets the heatmap resolution.
    chunk_size
        Chunk edge of the on-disk arrays in heatmap pixels.
    cache_chunks
        How many chunks of the accumulators stay in memory (least recently used first
        out). Memory is about ``cache_chunks * (C + 1) * chunk_size**2 * 4`` bytes.

    Raises
    ------
    ConfigError
        Bad blend name, non-square map, a stride that does not land on whole heatmap
        pixels, a bad ``tumor_class`` or chunk settings.
    OutputError
        If ``store`` exists and is not an empty folder.
    """

    def __init__(
        self,
        store: Path,
        grid: TileGrid,
        map_shape: tuple[int, int],
        class_names: Sequence[str],
        *,
        blend: str = "uniform",
        border: BorderProfile | None = None,
        tumor_class: int = 1,
        extra_maps: Sequence[str] = (),
        saliency: bool = True,
        chunk_size: int = 512,
        cache_chunks: int = 32,
    ) -> None:
        self._pixel_size = heatmap_pixel_size(grid, map_shape)
        self._m = int(map_shape[0])
        self._step = _check_stride(grid, self._m)
        mh, mw = int(map_shape[0]), int(map_shape[1])
        overlap_px = max(self._m - self._step, 0)
        self._window = blend_window(blend, (mh, mw), overlap=overlap_px)
        # reliability with a measured profile: the saliency channel has its own window
        # (ramp x profile, accumulated in a hidden last channel of ``sum``) and the border
        # gain (1.0 inside every tile); the probability channels keep the ramp, so they
        # are the same with and without saliency
        # (window, window x gain) of the saliency channel; None: it uses self._window
        self._sal: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        if (blend == "reliability" and saliency and border is not None
                and len(border.rows) == mh and len(border.cols) == mw):
            sal_window = blend_window(blend, (mh, mw), overlap=overlap_px, profile=border)
            self._sal = (sal_window, sal_window * border.gain())
        names = tuple(str(c) for c in class_names)
        if len(names) < 1:
            raise ConfigError("class_names is empty: the model must name its classes")
        if len(set(names)) != len(names):
            raise ConfigError(f"class names {list(names)} are not unique: rename the classes")
        if not 0 <= int(tumor_class) < len(names):
            raise ConfigError(
                f"tumor_class {tumor_class} is out of range for classes {list(names)}"
            )
        if chunk_size < 16 or chunk_size % 2:
            raise ConfigError(f"chunk_size {chunk_size} must be an even number >= 16")
        if cache_chunks < 4:
            raise ConfigError(f"cache_chunks {cache_chunks} must be at least 4")
        self._blend = blend
        self._grid = grid
        self._class_names = names
        self._tumor = int(tumor_class)
        self._extra = tuple(str(e) for e in extra_maps)
        others = [i for i in range(len(names)) if i != self._tumor]
        self._prob_order = [self._tumor, *others]
        self._saliency = bool(saliency)
        channels = (
            f"probability_{names[self._tumor]}",
            *(("saliency",) if self._saliency else ()),
            *(f"probability_{names[i]}" for i in others),
            *self._extra,
        )
        if len(set(channels)) != len(channels):
            raise ConfigError(f"heatmap channel names {list(channels)} clash: rename extra_maps")
        self._channels = channels
        self._n_ch = len(channels)
        self._n_sum = self._n_ch + (self._sal is not None)  # + hidden weight channel
        self._chunk = int(chunk_size)
        self._cache_max = int(cache_chunks)

        mpp = grid.mpp
        width_um = grid.slide_dimensions[0] * float(mpp.x)
        height_um = grid.slide_dimensions[1] * float(mpp.y)
        self._shape = (
            max(1, math.ceil(height_um / self._pixel_size - _EPS)),
            max(1, math.ceil(width_um / self._pixel_size - _EPS)),
        )

        self._store = Path(store)
        if self._store.exists() and (not self._store.is_dir() or any(self._store.iterdir())):
            raise OutputError(
                f"stitch store {self._store} already exists and is not empty: "
                "give a fresh folder (e.g. a temporary directory)"
            )
        import zarr  # here, not at module level: the configuration imports Blend from here

        self._group = zarr.open_group(str(self._store), mode="w")
        h, w = self._shape
        cs = self._chunk
        self._sum = self._group.create_array(
            "sum",
            shape=(self._n_sum, h, w),
            chunks=(self._n_sum, cs, cs),
            dtype="float32",
            fill_value=0.0,
        )
        self._weight = self._group.create_array(
            "weight", shape=(h, w), chunks=(cs, cs), dtype="float32", fill_value=0.0
        )
        # LRU cache: chunk (cy, cx) -> (sum block (C, ch, cw), weight block (ch, cw))
        self._cache: OrderedDict[
            tuple[int, int], tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
        ] = OrderedDict()
        n = len(grid)
        c = len(names)
        self._probs = np.full((n, c), np.nan, dtype=np.float32)
        self._s_mean = np.full(n, np.nan, dtype=np.float32)
        self._s_max = np.full(n, np.nan, dtype=np.float32)
        self._s_pos = np.full(n, np.nan, dtype=np.float32)
        self._done = np.zeros(n, dtype=bool)
        self._finalized = False

    # -- properties -----------------------------------------------------------------
    @property
    def pixel_size_um(self) -> float:
        """Micrometres per heatmap pixel (``spacing * tile_size / map_px``)."""
        return self._pixel_size

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the heatmap: ``ceil(slide size in um / pixel size)``."""
        return self._shape

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Labels of the heatmap channels in order."""
        return self._channels

    @property
    def n_added(self) -> int:
        """Number of tiles added so far."""
        return int(self._done.sum())

    # -- accumulation -----------------------------------------------------------------
    def _chunk_arrays(
        self, key: tuple[int, int]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        cs = self._chunk
        y0, x0 = key[0] * cs, key[1] * cs
        y1, x1 = min(y0 + cs, self._shape[0]), min(x0 + cs, self._shape[1])
        s = np.ascontiguousarray(self._sum[:, y0:y1, x0:x1], dtype=np.float32)
        w = np.ascontiguousarray(self._weight[y0:y1, x0:x1], dtype=np.float32)
        self._cache[key] = (s, w)
        while len(self._cache) > self._cache_max:
            old, (os_, ow) = self._cache.popitem(last=False)
            self._write_chunk(old, os_, ow)
        return s, w

    def _write_chunk(
        self,
        key: tuple[int, int],
        s: npt.NDArray[np.float32],
        w: npt.NDArray[np.float32],
    ) -> None:
        cs = self._chunk
        y0, x0 = key[0] * cs, key[1] * cs
        self._sum[:, y0 : y0 + s.shape[1], x0 : x0 + s.shape[2]] = s
        self._weight[y0 : y0 + w.shape[0], x0 : x0 + w.shape[1]] = w

    def flush(self) -> None:
        """Write every cached chunk back to disk and empty the cache."""
        while self._cache:
            key, (s, w) = self._cache.popitem(last=False)
            self._write_chunk(key, s, w)

    def add(self, result: BatchResult) -> None:
        """Add one batch of tile results.

        Parameters
        ----------
        result
            Indices into the grid, ``(B, C)`` probabilities and ``(B, h, w)`` maps
            (``h, w`` = ``map_shape``), plus the ``extra_maps`` named at construction.

        Raises
        ------
        StitchError
            Wrong shapes, indices out of range, a tile added twice, or ``add`` after
            :meth:`finalize`.
        """
        if self._finalized:
            raise StitchError("Stitcher.add called after finalize(): create a new Stitcher")
        idx = np.asarray(result.indices, dtype=np.int64).reshape(-1)
        b = idx.shape[0]
        probs = np.asarray(result.probabilities, dtype=np.float32)
        m = self._m
        if not self._saliency:
            if result.maps is not None:
                raise StitchError("this Stitcher was built without saliency (saliency=False) "
                                  "but the batch carries maps: pass maps=None")
            maps = np.zeros((b, m, m), dtype=np.float32)
        elif result.maps is None:
            raise StitchError("the batch has no saliency maps (maps=None) but this Stitcher "
                              "stitches saliency: build it with saliency=False")
        else:
            maps = np.asarray(result.maps, dtype=np.float32)
        c = len(self._class_names)
        if probs.shape != (b, c):
            raise StitchError(
                f"probabilities have shape {probs.shape}, expected ({b}, {c}) for classes "
                f"{list(self._class_names)}"
            )
        if maps.shape != (b, m, m):
            raise StitchError(
                f"saliency maps have shape {maps.shape}, expected ({b}, {m}, {m}): the "
                "Stitcher's map_shape must match the saliency engine's map_shape"
            )
        extras: list[npt.NDArray[np.float32]] = []
        for name in self._extra:
            if name not in result.extra:
                raise StitchError(
                    f"extra map {name!r} missing from the batch (has {sorted(result.extra)})"
                )
            e = np.asarray(result.extra[name], dtype=np.float32)
            if e.shape != (b, m, m):
                raise StitchError(
                    f"extra map {name!r} has shape {e.shape}, expected ({b}, {m}, {m})"
                )
            extras.append(e)
        if b == 0:
            return
        n = len(self._grid)
        if idx.min() < 0 or idx.max() >= n:
            raise StitchError(f"tile indices out of range 0..{n - 1}: {idx.min()}..{idx.max()}")
        if np.unique(idx).shape[0] != b or self._done[idx].any():
            dup = idx[self._done[idx]] if self._done[idx].any() else idx
            raise StitchError(
                f"tile {int(dup[0])} added twice: each tile must be added exactly once"
            )

        # per-tile statistics
        self._probs[idx] = probs
        if self._saliency:
            flat = maps.reshape(b, -1)
            self._s_mean[idx] = flat.mean(axis=1, dtype=np.float64).astype(np.float32)
            self._s_max[idx] = flat.max(axis=1)
            self._s_pos[idx] = (flat > 0).mean(axis=1, dtype=np.float64).astype(np.float32)
        self._done[idx] = True

        # weighted blocks (B, C, m, m) built for the whole batch at once
        win = self._window
        block = np.empty((b, self._n_sum, m, m), dtype=np.float32)
        block[:, 0] = probs[:, self._prob_order[0], None, None] * win
        first = 1
        if self._saliency:
            if self._sal is None:
                block[:, 1] = maps * win
            else:
                block[:, 1] = maps * self._sal[1]
                block[:, -1] = self._sal[0]
            first = 2
        for j, ci in enumerate(self._prob_order[1:]):
            block[:, first + j] = probs[:, ci, None, None] * win
        base = first + len(self._prob_order) - 1
        for j, e in enumerate(extras):
            block[:, base + j] = e * win

        rows0 = self._grid.rows[idx] * self._step
        cols0 = self._grid.cols[idx] * self._step
        h, w = self._shape
        cs = self._chunk
        for k in range(b):
            ty0, tx0 = int(rows0[k]), int(cols0[k])
            ty1, tx1 = min(ty0 + m, h), min(tx0 + m, w)
            if ty1 <= ty0 or tx1 <= tx0:
                continue  # tile entirely outside the slide (cannot happen for a valid grid)
            for cy in range(ty0 // cs, (ty1 - 1) // cs + 1):
                y0 = max(ty0, cy * cs)
                y1 = min(ty1, (cy + 1) * cs)
                for cx in range(tx0 // cs, (tx1 - 1) // cs + 1):
                    x0 = max(tx0, cx * cs)
                    x1 = min(tx1, (cx + 1) * cs)
                    s_blk, w_blk = self._chunk_arrays((cy, cx))
                    ly0, lx0 = y0 - cy * cs, x0 - cx * cs
                    ly1, lx1 = y1 - cy * cs, x1 - cx * cs
                    s_blk[:, ly0:ly1, lx0:lx1] += block[
                        k, :, y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0
                    ]
                    w_blk[ly0:ly1, lx0:lx1] += win[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]

    def finalize(self) -> StitchedHeatmaps:
        """Flush, normalise chunk by chunk and return the heatmaps.

        Returns
        -------
        StitchedHeatmaps
            The normalised ``(C, H, W)`` heatmap (NaN where uncovered), weights and
            per-tile statistics.

        Raises
        ------
        StitchError
            If called twice.
        """
        if self._finalized:
            raise StitchError("Stitcher.finalize called twice")
        self.flush()
        self._finalized = True
        h, w = self._shape
        cs = self._chunk
        heat = self._group.create_array(
            "heatmap",
            shape=(self._n_ch, h, w),
            chunks=(1, cs, cs),
            dtype="float32",
            fill_value=float("nan"),
        )
        covered = 0
        for y0 in range(0, h, cs):
            for x0 in range(0, w, cs):
                y1, x1 = min(y0 + cs, h), min(x0 + cs, w)
                wt = np.asarray(self._weight[y0:y1, x0:x1])
                pos = wt > 0
                n_pos = int(pos.sum())
                if n_pos == 0:
                    continue  # stays at fill value NaN, nothing written
                covered += n_pos
                s = np.asarray(self._sum[:, y0:y1, x0:x1])
                out = np.full((self._n_ch, *s.shape[1:]), np.nan, dtype=np.float32)
                np.divide(s[: self._n_ch], wt, out=out, where=pos[None])
                if self._sal is not None:  # the saliency channel's own weights
                    out[1] = np.nan
                    np.divide(s[1], s[-1], out=out[1], where=pos & (s[-1] > 0))
                heat[:, y0:y1, x0:x1] = out
        self._group.attrs.update(
            {
                "channel_names": list(self._channels),
                "pixel_size_um": self._pixel_size,
                "blend": self._blend,
            }
        )
        stats = TileStats(
            probabilities=self._probs,
            saliency_mean=self._s_mean,
            saliency_max=self._s_max,
            saliency_positive_fraction=self._s_pos,
            done=self._done,
        )
        return StitchedHeatmaps(
            store=self._store,
            heatmap=heat,
            weight=self._weight,
            channel_names=self._channels,
            pixel_size_um=self._pixel_size,
            shape=self._shape,
            coverage=covered / float(h * w),
            grid=self._grid,
            class_names=self._class_names,
            tumor_class=self._tumor,
            blend=self._blend,
            tiles=stats,
            chunk_size=cs,
        )
