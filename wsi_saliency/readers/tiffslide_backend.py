"""tiffslide backend (pure Python on tifffile + imagecodecs; needs no OpenSlide)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from wsi_saliency.readers.base import BaseSlideReader
from wsi_saliency.types import SlideInfo

__all__ = ["TiffSlideReader", "open_tiffslide"]


class TiffSlideReader(BaseSlideReader):
    """A slide served by tiffslide."""

    def __init__(self, slide: object, info: SlideInfo) -> None:
        super().__init__(info)
        self._slide = slide

    def _read_level_raw(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> npt.NDArray[np.uint8]:
        ds = self._info.level_downsamples[level]
        # tiffslide maps a level-0 location to level pixel int(location / ds): the
        # smallest integer location at or above x * ds lands exactly on x.
        lx = math.ceil(x * ds - 1e-9)
        ly = math.ceil(y * ds - 1e-9)
        if int(lx / ds) != x:
            lx += 1
        if int(ly / ds) != y:
            ly += 1
        arr = self._slide.read_region((lx, ly), level, (width, height), as_array=True)  # type: ignore[attr-defined]
        a = np.asarray(arr)
        if a.dtype != np.uint8:
            raise TypeError(f"tiffslide returned {a.dtype} pixels, expected uint8")
        return a

    def _close(self) -> None:
        self._slide.close()  # type: ignore[attr-defined]


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
    dims = tuple((int(w), int(h)) for w, h in slide.level_dimensions)  # type: ignore[attr-defined]
    ds = tuple(float(d) for d in slide.level_downsamples)  # type: ignore[attr-defined]
    return dims, ds


def tiffslide_objective(props: Mapping[str, object]) -> float | None:
    """Objective power, when recorded."""
    v = props.get("tiffslide.objective-power")
    try:
        f = float(v) if v not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if f is not None and math.isfinite(f) and f > 0 else None
