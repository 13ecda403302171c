"""tiffslide backend (pure Python on tifffile + imagecodecs; needs no OpenSlide)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from wsi_saliency.readers.handle import HandleSlideReader, handle_geometry, objective_power

__all__ = ["TiffSlideReader", "open_tiffslide"]


class TiffSlideReader(HandleSlideReader):
    """A slide served by tiffslide."""

    def level_location(self, level: int, x: int, y: int) -> tuple[int, int]:
        """tiffslide maps a level-0 location to level pixel ``int(location / ds)``: the
        smallest integer location at or above ``x * ds`` lands exactly on ``x``."""
        ds = self._info.level_downsamples[level]
        lx = math.ceil(x * ds - 1e-9)
        ly = math.ceil(y * ds - 1e-9)
        if int(lx / ds) != x:
            lx += 1
        if int(ly / ds) != y:
            ly += 1
        return lx, ly

    def handle_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> npt.NDArray[np.uint8]:
        """tiffslide's array; anything but uint8 pixels is refused."""
        arr = self._slide.read_region(location, level, size, as_array=True)  # type: ignore[attr-defined]
        a = np.asarray(arr)
        if a.dtype != np.uint8:
            raise TypeError(f"tiffslide returned {a.dtype} pixels, expected uint8")
        return a


def open_tiffslide(path: str) -> tuple[object, Mapping[str, object]]:
    """Open ``path`` with tiffslide; return the handle and its properties."""
    import tiffslide

    slide = tiffslide.TiffSlide(path)
    try:
        props = dict(slide.properties)
    except Exception:
        slide.close()
        raise
    return slide, props


def tiffslide_geometry(slide: object) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    """Level dimensions and downsamples."""
    return handle_geometry(slide)


def tiffslide_objective(props: Mapping[str, object]) -> float | None:
    """Objective power, when recorded."""
    return objective_power(props, "tiffslide.objective-power")
