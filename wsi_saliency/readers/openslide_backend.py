"""OpenSlide backend (the OpenSlide library comes from the ``openslide-bin`` wheel)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from wsi_saliency.readers.base import BaseSlideReader
from wsi_saliency.types import SlideInfo

__all__ = ["OpenSlideReader", "open_openslide"]


class OpenSlideReader(BaseSlideReader):
    """A slide served by OpenSlide."""

    def __init__(self, slide: object, info: SlideInfo) -> None:
        super().__init__(info)
        self._slide = slide

    def _read_level_raw(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> npt.NDArray[np.uint8]:
        ds = self._info.level_downsamples[level]
        # OpenSlide positions a level-k read at location / downsample (interpolating
        # fractional positions); with whole downsamples x * ds is exact.
        loc = (round(x * ds), round(y * ds))
        img = self._slide.read_region(loc, level, (width, height))  # type: ignore[attr-defined]
        return np.asarray(img)

    def _close(self) -> None:
        self._slide.close()  # type: ignore[attr-defined]


def open_openslide(path: str) -> tuple[object, Mapping[str, str]]:
    """Open ``path`` with OpenSlide; return the handle and its properties.

    Raises whatever OpenSlide raises (the caller turns it into SlideOpenError).
    """
    import openslide

    slide = openslide.OpenSlide(path)
    return slide, dict(slide.properties)


def openslide_geometry(slide: object) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    """Level dimensions and downsamples."""
    dims = tuple((int(w), int(h)) for w, h in slide.level_dimensions)  # type: ignore[attr-defined]
    ds = tuple(float(d) for d in slide.level_downsamples)  # type: ignore[attr-defined]
    return dims, ds


def openslide_objective(props: Mapping[str, str]) -> float | None:
    """Objective power, when recorded."""
    v = props.get("openslide.objective-power")
    try:
        f = float(v) if v not in (None, "") else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) and f > 0 else None
