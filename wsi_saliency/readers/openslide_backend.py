"""OpenSlide backend (the OpenSlide library comes from the ``openslide-bin`` wheel)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from wsi_saliency.readers.handle import HandleSlideReader, handle_geometry, objective_power

__all__ = ["OpenSlideReader", "open_openslide"]


class OpenSlideReader(HandleSlideReader):
    """A slide served by OpenSlide."""

    def level_location(self, level: int, x: int, y: int) -> tuple[int, int]:
        """OpenSlide positions a level-k read at location / downsample (interpolating
        fractional positions); with whole downsamples ``x * ds`` is exact."""
        ds = self._info.level_downsamples[level]
        return round(x * ds), round(y * ds)

    def handle_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> npt.NDArray[np.uint8]:
        """OpenSlide's RGBA PIL image as an array."""
        return np.asarray(self._slide.read_region(location, level, size))  # type: ignore[attr-defined]


def open_openslide(path: str) -> tuple[object, Mapping[str, str]]:
    """Open ``path`` with OpenSlide; return the handle and its properties.

    Raises whatever OpenSlide raises (the caller turns it into SlideOpenError).
    """
    import openslide

    slide = openslide.OpenSlide(path)
    return slide, dict(slide.properties)


def openslide_geometry(slide: object) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    """Level dimensions and downsamples."""
    return handle_geometry(slide)


def openslide_objective(props: Mapping[str, str]) -> float | None:
    """Objective power, when recorded."""
    return objective_power(props, "openslide.objective-power")
