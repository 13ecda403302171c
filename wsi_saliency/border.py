"""Border calibration of tile maps: the ``reliability`` blend.

Why
---
A tile's saliency map is dimmer along its frame than inside. The border-aware backward
hook (:func:`wsi_saliency.saliency.hooks.border_gain`) restores the number of gradient
terms a border pixel receives, but the *forward* pass still zero-pads every convolution
at the tile border, so the activations (and the gates of every ReLU after them) near the
frame differ from the interior ones. Measured on the demo model at ``layer3``
(gradient x activation, 14 x 14 maps), mean ``|map|`` per map row over the interior
mean is ``0.24, 0.73, 0.86`` for the first three rows and ``0.46`` for the last one;
columns ``0.44, 0.80, 0.91`` and ``0.37``; the same within 0.03 on two different
slides, so it is a property of the model, not of the tissue. With the default overlap
of two map pixels no blend window can hide the dim rows (both tiles are dim where they
overlap), and a faint grid stays visible.

What
----
The stitcher measures this *border profile* on the slide's own tiles: the first
:data:`CALIBRATION_TILES` tiles of the grid (grid order, so the same tiles whatever the
number of reader threads), mean ``|map|`` per map row and per map column over the mean
on the interior block (rows and columns ``margin .. m - margin - 1`` with
``margin = m // 4``). Then, on the stitched saliency only:

``gain``
    The outer rows/columns of every tile map (at most ``margin`` from each edge, and
    only the contiguous run from the edge whose profile differs from 1 by more than
    :data:`GAIN_TOLERANCE`) are multiplied by ``1 / profile`` (clipped to
    ``[1 / MAX_GAIN, MAX_GAIN]``), separably for rows and columns. Every other pixel is
    multiplied by exactly 1.0, so the interior of every tile is the engine's map,
    bitwise.
``window``
    Overlapping tiles are averaged with the weight ``ramp(u) * profile(u)`` per axis:
    ``ramp`` cross-fades linearly over the overlap band (``min(1, (u + 1) / (o + 1),
    (m - u) / (o + 1))`` for an overlap of ``o`` map pixels), and ``profile`` (floored at
    :data:`MIN_WEIGHT`) gives the less reliable border rows of one tile less say than
    the neighbour's interior rows at the same place.

The probability channels use the same window (a probability is constant over its tile,
so only the hand-over between neighbours changes). Per-tile statistics (``tiles.csv``,
GeoJSON measurements) come from the engine's maps, without gain.

Slides with fewer than :data:`MIN_CALIBRATION_TILES` tiles, maps smaller than 4 x 4 and
runs without saliency have no profile: the window is the ramp alone and there is no gain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from wsi_saliency.types import BatchResult

__all__ = [
    "CALIBRATION_TILES",
    "GAIN_TOLERANCE",
    "MAX_GAIN",
    "MIN_CALIBRATION_TILES",
    "MIN_WEIGHT",
    "BorderProfile",
    "CalibratingStitcher",
    "measure_border_profile",
    "ramp",
    "reliability_window",
]

CALIBRATION_TILES = 256
"""Tiles (the first ones in grid order) whose maps the border profile is measured on."""
MIN_CALIBRATION_TILES = 8
"""Fewer tiles than this give no profile (too noisy): ramp window, no gain."""
GAIN_TOLERANCE = 0.05
"""Rows/columns whose profile is within this of 1.0 get no gain."""
MAX_GAIN = 5.0
"""Gains are clipped to ``[1 / MAX_GAIN, MAX_GAIN]``."""
MIN_WEIGHT = 0.05
"""Floor of the profile in the blend window (weights stay strictly positive)."""


def _margin(m: int) -> int:
    return m // 4


@dataclass(frozen=True)
class BorderProfile:
    """Mean ``|map|`` per tile-map row and column over the interior mean.

    Parameters
    ----------
    rows
        One value per map row (1.0 = as bright as the interior).
    cols
        One value per map column.
    n_tiles
        Number of tile maps it was measured on.
    """

    rows: tuple[float, ...]  # mean |map| per map row / interior mean
    cols: tuple[float, ...]  # mean |map| per map column / interior mean
    n_tiles: int  # tile maps measured

    def gain(self) -> npt.NDArray[np.float32]:
        """The ``(h, w)`` gain map (see the module docstring); 1.0 in the interior."""
        return np.outer(_axis_gain(self.rows), _axis_gain(self.cols)).astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict: profile and gains rounded to 3 decimals, and the tile count."""
        def r(v: Sequence[float] | npt.NDArray[np.float64]) -> list[float]:
            return [round(float(x), 3) for x in v]

        return {"tiles": self.n_tiles, "rows": r(self.rows), "cols": r(self.cols),
                "gain_rows": r(_axis_gain(self.rows)), "gain_cols": r(_axis_gain(self.cols))}


def _axis_gain(profile: Sequence[float]) -> npt.NDArray[np.float64]:
    p = np.asarray(profile, dtype=np.float64)
    n = p.shape[0]
    g = np.ones(n, dtype=np.float64)
    for order in (range(_margin(n)), range(n - 1, n - 1 - _margin(n), -1)):
        for i in order:
            if not np.isfinite(p[i]) or p[i] <= 0 or abs(p[i] - 1.0) <= GAIN_TOLERANCE:
                break
            g[i] = min(max(1.0 / p[i], 1.0 / MAX_GAIN), MAX_GAIN)
    return g


def measure_border_profile(maps: npt.ArrayLike) -> BorderProfile | None:
    """Measure the border profile of a stack of tile maps.

    Parameters
    ----------
    maps
        ``(N, h, w)`` maps (signed; their absolute value is used). Non-finite maps are
        left out.

    Returns
    -------
    BorderProfile or None
        ``None`` for fewer than :data:`MIN_CALIBRATION_TILES` finite maps, maps smaller
        than 4 x 4, or an interior of all zeros.
    """
    a = np.abs(np.asarray(maps, dtype=np.float64))
    if a.ndim != 3 or min(a.shape[1:]) < 4:
        return None
    a = a[np.isfinite(a).all(axis=(1, 2))]
    if a.shape[0] < MIN_CALIBRATION_TILES:
        return None
    h, w = a.shape[1:]
    mh, mw = _margin(h), _margin(w)
    inner = float(a[:, mh:h - mh, mw:w - mw].mean())
    if not inner > 0:
        return None
    rows = a[:, :, mw:w - mw].mean(axis=(0, 2)) / inner
    cols = a[:, mh:h - mh, :].mean(axis=(0, 1)) / inner
    return BorderProfile(rows=tuple(float(v) for v in rows),
                         cols=tuple(float(v) for v in cols), n_tiles=int(a.shape[0]))


def ramp(m: int, overlap: int) -> npt.NDArray[np.float64]:
    """Linear cross-fade over an overlap band of ``overlap`` map pixels (all ones for 0).

    Parameters
    ----------
    m
        Map side.
    overlap
        Map pixels shared by neighbouring tiles (``m - stride``).

    Returns
    -------
    numpy.ndarray
        ``(m,)`` weights in ``(0, 1]``; two neighbours' ramps sum to 1 over the band.
    """
    u = np.arange(m, dtype=np.float64)
    o = max(int(overlap), 0)
    return np.minimum(1.0, np.minimum((u + 1) / (o + 1), (m - u) / (o + 1)))


def reliability_window(shape: tuple[int, int], overlap: int,
                       profile: BorderProfile | None) -> npt.NDArray[np.float32]:
    """The ``reliability`` blend window: ``ramp x profile`` per axis (ramp alone without
    a profile).

    Parameters
    ----------
    shape
        ``(h, w)`` of the tile map.
    overlap
        Map pixels shared by neighbouring tiles.
    profile
        The measured border profile, or ``None``.

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` float32 weights, all strictly positive.
    """
    h, w = shape
    wy, wx = ramp(h, overlap), ramp(w, overlap)
    if profile is not None and len(profile.rows) == h and len(profile.cols) == w:
        wy = wy * np.maximum(np.asarray(profile.rows), MIN_WEIGHT)
        wx = wx * np.maximum(np.asarray(profile.cols), MIN_WEIGHT)
    return np.outer(wy, wx).astype(np.float32)


class CalibratingStitcher:
    """Hold back the first tiles until the border profile is measured, then stitch.

    Parameters
    ----------
    make
        Builds the stitcher from the profile (``None``: no profile), called once.
    calibrate
        Measure a profile at all (``False``: ``make(None)`` before the first batch).
    n_tiles
        Tiles to measure on (:data:`CALIBRATION_TILES`); batches are held until this many
        have arrived or :meth:`finish` is called.
    """

    def __init__(self, make: Callable[[BorderProfile | None], Any], *, calibrate: bool,
                 n_tiles: int = CALIBRATION_TILES) -> None:
        self._make = make
        self._n = int(n_tiles)
        self._held: list[BatchResult] = []
        self._count = 0
        self._stitcher: Any = None if calibrate else make(None)
        self._profile: BorderProfile | None = None

    @property
    def profile(self) -> BorderProfile | None:
        """The measured profile (``None`` before :meth:`finish` or without one)."""
        return self._profile

    def add(self, result: BatchResult) -> None:
        """Add one batch (held back while the profile is being measured)."""
        if self._stitcher is not None:
            self._stitcher.add(result)
            return
        self._held.append(result)
        self._count += len(np.asarray(result.indices).reshape(-1))
        if self._count >= self._n:
            self._release()

    def _release(self) -> None:
        maps = [np.asarray(r.maps) for r in self._held if r.maps is not None]
        self._profile = (measure_border_profile(np.concatenate(maps)[: self._n]) if maps
                         else None)
        self._stitcher = self._make(self._profile)
        held, self._held = self._held, []
        for r in held:
            self._stitcher.add(r)

    def finish(self) -> Any:
        """Stitch what is held back and return the stitcher built by ``make``."""
        if self._stitcher is None:
            self._release()
        return self._stitcher
