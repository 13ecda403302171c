"""What the OpenSlide-API backends share: a library handle with ``read_region``.

OpenSlide and tiffslide expose the same API (``level_dimensions``,
``level_downsamples``, ``properties``, ``read_region``, ``close``); they differ only in
how a level-0 location maps to a level's pixel and in the array they return. A backend
of that kind subclasses :class:`HandleSlideReader` and says just those two things.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from wsi_saliency.readers.base import BaseSlideReader
from wsi_saliency.types import SlideInfo

__all__ = ["HandleSlideReader", "handle_geometry", "objective_power"]


class HandleSlideReader(BaseSlideReader):
    """A slide served by a library handle with OpenSlide's API.

    Parameters
    ----------
    slide
        The open handle (closed with the reader).
    info
        Facts about the slide.
    """

    def __init__(self, slide: object, info: SlideInfo) -> None:
        super().__init__(info)
        self._slide = slide

    def level_location(self, level: int, x: int, y: int) -> tuple[int, int]:
        """The ``read_region`` location that lands on pixel ``(x, y)`` of ``level``."""
        raise NotImplementedError

    def handle_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> npt.NDArray[np.uint8]:
        """The handle's ``read_region`` as an ``(h, w, 3 or 4)`` uint8 array."""
        raise NotImplementedError

    def _read_level_raw(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> npt.NDArray[np.uint8]:
        return self.handle_region(self.level_location(level, x, y), level, (width, height))

    def _close(self) -> None:
        self._slide.close()  # type: ignore[attr-defined]


def handle_geometry(slide: object) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    """Level dimensions and downsamples of an OpenSlide-API handle."""
    dims = tuple((int(w), int(h)) for w, h in slide.level_dimensions)  # type: ignore[attr-defined]
    ds = tuple(float(d) for d in slide.level_downsamples)  # type: ignore[attr-defined]
    return dims, ds


def objective_power(props: Mapping[str, object], key: str) -> float | None:
    """The objective power recorded under ``key``, when it is a positive finite number."""
    v = props.get(key)
    try:
        f = float(v) if v not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if f is not None and math.isfinite(f) and f > 0 else None
