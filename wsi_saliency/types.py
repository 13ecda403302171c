"""Small frozen values that flow between the pipeline stages.

Geometry conventions used everywhere in the package:

* Coordinates are ``(x, y)`` = ``(column, row)`` in **level-0 pixels** of the slide,
  origin at the top-left corner of level 0. Sizes are ``(width, height)``.
* Array shapes are ``(rows, cols)`` (numpy order).
* A physical spacing is in micrometres per pixel (um/px). ``mpp_x``/``mpp_y`` are the
  slide's level-0 spacing; ``spacing`` is the spacing tiles are cut at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "BatchResult",
    "Mpp",
    "SlideInfo",
    "TileGrid",
    "TissueMask",
]


@dataclass(frozen=True)
class Mpp:
    """Level-0 physical pixel size of a slide and where it came from.

    Parameters
    ----------
    x, y
        Micrometres per level-0 pixel along x (columns) and y (rows).
    source
        One of ``"override"`` (``--mpp`` / ``slide.mpp``), ``"sidecar"`` (per-slide
        file), ``"openslide"`` (``openslide.mpp-x/y``), ``"aperio"`` (Aperio ``MPP``
        in the image description), ``"tiff-resolution"`` (TIFF resolution tags).
    """

    x: float
    y: float
    source: str


@dataclass(frozen=True)
class SlideInfo:
    """What the pipeline knows about an open slide; never patient data.

    Parameters
    ----------
    path
        Absolute path of the slide file.
    backend
        Name of the reader backend that served the slide (``"openslide"`` or
        ``"tiffslide"``).
    dimensions
        Level-0 ``(width, height)`` in pixels.
    level_dimensions
        ``(width, height)`` of every pyramid level, finest first.
    level_downsamples
        Downsample factor of every level relative to level 0.
    mpp
        Physical pixel size, or ``None`` when the slide carries none and none was given.
    objective_power
        Scanner objective magnification when the slide records it.
    vendor
        Scanner vendor/format string (e.g. ``"aperio"``, ``"generic-tiff"``).
    """

    path: str
    backend: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: Mpp | None
    objective_power: float | None = None
    vendor: str | None = None

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask on a regular grid over level 0.

    Mask pixel ``(r, c)`` covers level-0 pixels
    ``[c * downsample, (c + 1) * downsample) x [r * downsample, (r + 1) * downsample)``.

    Parameters
    ----------
    mask
        Boolean array ``(rows, cols)``; True is tissue.
    downsample
        Level-0 pixels per mask pixel (the same along x and y).
    spacing
        Micrometres per mask pixel along x (``downsample * mpp.x``).
    threshold
        The threshold used (saturation in 0..1), for the record.
    method
        ``"otsu"``, ``"fixed"``, ``"roi"`` or a combination such as ``"otsu+roi"``.
    """

    mask: npt.NDArray[np.bool_]
    downsample: float
    spacing: float
    threshold: float | None = None
    method: str = "otsu"


@dataclass(frozen=True, eq=False)
class TileGrid:
    """The tiles of one slide at one spacing.

    Tile ``k`` sits at grid position ``(rows[k], cols[k])`` and covers the level-0
    rectangle with top-left ``coords[k]`` and size ``size_level0``. The grid origin is
    level-0 pixel (0, 0): ``coords[k] == round((cols[k], rows[k]) * stride * spacing /
    mpp)`` elementwise, so tile footprints never drift across the slide.

    Parameters
    ----------
    tile_size
        Tile width = height in pixels at ``spacing`` (what the model sees).
    spacing
        Micrometres per pixel of the tiles.
    overlap
        Fraction of a tile shared with its neighbour (0 <= overlap < 1).
    stride
        Step between tiles in pixels at ``spacing``: ``round(tile_size * (1 - overlap))``.
    mpp
        The slide's level-0 spacing used to place the tiles.
    level
        Pyramid level tiles are read from: the coarsest level not coarser than ``spacing``.
    level_downsample
        Downsample of ``level`` relative to level 0.
    scale
        Resize factor from the read level to the tile: ``tile_size / size_at_level``.
    size_level0
        Tile footprint ``(width, height)`` in level-0 pixels (may be fractional).
    grid_shape
        ``(rows, cols)`` of the full grid over the slide (including tiles left out).
    coords
        ``(N, 2)`` int64 level-0 ``(x, y)`` of each kept tile's top-left corner.
    rows, cols
        ``(N,)`` int64 grid indices of each kept tile.
    tissue_fraction
        ``(N,)`` float32 fraction of each tile covered by tissue.
    slide_dimensions
        Level-0 ``(width, height)`` of the slide.
    """

    tile_size: int
    spacing: float
    overlap: float
    stride: int
    mpp: Mpp
    level: int
    level_downsample: float
    scale: float
    size_level0: tuple[float, float]
    grid_shape: tuple[int, int]
    coords: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    tissue_fraction: npt.NDArray[np.float32]
    slide_dimensions: tuple[int, int]

    def __len__(self) -> int:
        return int(self.coords.shape[0])


@dataclass(frozen=True, eq=False)
class BatchResult:
    """What the saliency engine returns for one batch of tiles.

    Parameters
    ----------
    indices
        ``(B,)`` int64 tile indices into the :class:`TileGrid`.
    probabilities
        ``(B, num_classes)`` float32 softmax probabilities.
    maps
        ``(B, h, w)`` float32 raw (signed, unnormalised) saliency at the layer's
        resolution; ``None`` for prediction only (``--method none``).
    extra
        Optional further per-tile maps by name, each ``(B, h, w)`` float32.
    """

    indices: npt.NDArray[np.int64]
    probabilities: npt.NDArray[np.float32]
    maps: npt.NDArray[np.float32] | None
    extra: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.indices.shape[0])
