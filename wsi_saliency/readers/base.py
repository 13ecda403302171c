"""The slide reader contract (:class:`SlideReader`) and the shared reader machinery.

Modelled on tiffslide's ``_types.py``: a ``@runtime_checkable`` Protocol is the
contract every backend meets; :class:`BaseSlideReader` implements everything that is
the same for all backends on top of two primitives a backend provides
(``_read_level_raw`` and ``_close``).

Geometry: level ``k`` pixel ``(i, j)`` covers the level-0 rectangle
``[j * d_k, (j + 1) * d_k) x [i * d_k, (i + 1) * d_k)`` with ``d_k`` the level's
downsample as the backend reports it (OpenSlide and tiffslide agree). Everything
outside the slide, and every transparent pixel, reads as white (255).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from wsi_saliency.errors import MissingMppError, SlideOpenError
from wsi_saliency.readers.resample import resample_margin, resample_window
from wsi_saliency.types import SlideInfo

__all__ = ["BaseSlideReader", "SlideReader", "composite_on_white"]

#: Relative slack when comparing level downsamples with a wanted downsample.
LEVEL_TOLERANCE: Final[float] = 0.002

#: Largest strip (bytes of level pixels) read at once by :meth:`read_at_downsample`.
_STRIP_BYTES: Final[int] = 16 * 1024 * 1024
#: Source columns per block when reading a whole slide at a downsample.
_BLOCK_SRC_PX: Final[int] = 8192


@runtime_checkable
class SlideReader(Protocol):
    """What every slide reader offers. Coordinates are level-0 ``(x, y)`` unless noted."""

    @property
    def info(self) -> SlideInfo:
        """Dimensions, levels, spacing, backend; never patient data or associated images."""
        ...

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> npt.NDArray[np.uint8]:
        """OpenSlide semantics: ``size`` pixels of ``level`` starting at level-0 ``location``.

        Returns uint8 ``(h, w, 3)`` RGB; outside the slide and transparent pixels are white.
        """
        ...

    def read_level(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> npt.NDArray[np.uint8]:
        """Pixels ``[x, x + width) x [y, y + height)`` in **level** coordinates (white outside)."""
        ...

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample``."""
        ...

    def read_at_downsample(self, downsample: float) -> npt.NDArray[np.uint8]:
        """The whole slide at ``downsample`` (anti-aliased, memory-bounded strips).

        Shape ``(ceil(H / ds), ceil(W / ds), 3)``; pixel ``(r, c)`` covers level-0
        ``[c * ds, (c + 1) * ds) x [r * ds, (r + 1) * ds)``.
        """
        ...

    def read_at_spacing(self, spacing: float) -> npt.NDArray[np.uint8]:
        """The whole slide at ``spacing`` um/px (downsample ``spacing / mpp.x``)."""
        ...

    def get_thumbnail(self, max_size: tuple[int, int]) -> npt.NDArray[np.uint8]:
        """The whole slide fitting in ``max_size`` ``(width, height)``, aspect kept."""
        ...

    def close(self) -> None:
        """Release the file."""
        ...

    def __enter__(self) -> SlideReader: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def composite_on_white(rgba: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Composite (non-premultiplied) RGBA onto white; RGB passes through."""
    if rgba.ndim != 3:
        raise ValueError(f"expected an (h, w, 3|4) array, got shape {rgba.shape}")
    if rgba.shape[2] == 3:
        return np.ascontiguousarray(rgba)
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class BaseSlideReader(ABC):
    """Shared implementation of :class:`SlideReader`; backends add two primitives."""

    def __init__(self, info: SlideInfo) -> None:
        self._info = info
        self._closed = False
        #: Native (compressed) tile ``(width, height)`` per level, ``None`` where unknown
        #: (stripped TIFF, formats that do not say); set by ``open_slide``.
        self.tile_shapes: tuple[tuple[int, int] | None, ...] = (None,) * info.level_count

    # -- primitives ---------------------------------------------------------------
    @abstractmethod
    def _read_level_raw(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> npt.NDArray[np.uint8]:
        """Pixels of a window lying wholly inside ``level``; RGB or RGBA uint8."""

    @abstractmethod
    def _close(self) -> None:
        """Release backend resources."""

    # -- public API ---------------------------------------------------------------
    @property
    def info(self) -> SlideInfo:
        """Dimensions, levels, spacing and backend of the slide."""
        return self._info

    def native_tile_shape(self, level: int) -> tuple[int, int] | None:
        """``(width, height)`` of the slide file's compressed tiles at ``level``, if known."""
        if 0 <= level < len(self.tile_shapes):
            return self.tile_shapes[level]
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise SlideOpenError(f"{self._info.path}: the slide reader is closed; open it again")

    def read_level(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> npt.NDArray[np.uint8]:
        """Pixels ``[x, x + width) x [y, y + height)`` of ``level`` in level coordinates.

        Returns
        -------
        numpy.ndarray
            uint8 ``(height, width, 3)``; pixels outside the level, and transparent
            pixels, are white.
        """
        self._check_open()
        if not 0 <= level < self._info.level_count:
            raise IndexError(f"level {level} out of range 0..{self._info.level_count - 1}")
        width, height = int(width), int(height)
        if width < 0 or height < 0:
            raise ValueError(f"negative region size {(width, height)}")
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        lw, lh = self._info.level_dimensions[level]
        x0, y0 = max(int(x), 0), max(int(y), 0)
        x1, y1 = min(int(x) + width, lw), min(int(y) + height, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            raw = self._read_level_raw(level, x0, y0, x1 - x0, y1 - y0)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - decoder errors of any kind
            raise SlideOpenError(
                f"{self._info.path}: cannot read pixels at level {level} ({type(exc).__name__}: {exc}); "
                "the file may be truncated or corrupt - copy it again"
            ) from exc
        out[y0 - y : y1 - y, x0 - x : x1 - x] = composite_on_white(raw)
        return out

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> npt.NDArray[np.uint8]:
        """``size`` pixels of ``level`` starting at level-0 ``location`` (white outside).

        The level-0 location maps to level pixel ``floor(location / downsample)``.
        """
        ds = self._info.level_downsamples[level]
        lx = math.floor(location[0] / ds + 1e-9)
        ly = math.floor(location[1] / ds + 1e-9)
        return self.read_level(level, lx, ly, size[0], size[1])

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level with downsample <= ``downsample`` (level 0 at least).

        A relative slack of :data:`LEVEL_TOLERANCE` accepts levels such as 2.0005 of
        odd-sized slides for a downsample of 2.
        """
        best = 0
        for k, d in enumerate(self._info.level_downsamples):
            if d <= downsample * (1 + LEVEL_TOLERANCE):
                best = k
        return best

    def read_at_downsample(self, downsample: float) -> npt.NDArray[np.uint8]:
        """The whole slide at ``downsample`` level-0 px per pixel, in bounded strips.

        Reads the coarsest level not coarser than ``downsample`` and resamples with
        anti-aliasing; pixel ``(r, c)`` covers level-0 ``[c * ds, (c + 1) * ds) x
        [r * ds, (r + 1) * ds)``.
        """
        if not (downsample > 0 and math.isfinite(downsample)):
            raise ValueError(f"downsample must be positive, got {downsample}")
        w0, h0 = self._info.dimensions
        cols = max(1, math.ceil(w0 / downsample - 1e-9))
        rows = max(1, math.ceil(h0 / downsample - 1e-9))
        level = self.best_level_for_downsample(downsample)
        d = self._info.level_downsamples[level]
        f = downsample / d  # level px per output px
        margin = resample_margin(f)
        # Blocks of about _BLOCK_SRC_PX source columns and enough rows that the filter
        # margins cost at most half again; memory stays bounded on single-level slides.
        block_cols = max(1, int(_BLOCK_SRC_PX / max(f, 1.0)))
        src_block_w = block_cols * f + 2 * margin + 2
        rows_per_strip = max(
            math.ceil(4 * margin / f) if margin else 1,
            int(_STRIP_BYTES / (3 * src_block_w * max(f, 1.0))),
            1,
        )
        out = np.empty((rows, cols, 3), dtype=np.uint8)
        for r0 in range(0, rows, rows_per_strip):
            r1 = min(rows, r0 + rows_per_strip)
            v0 = r0 * f
            sy0 = math.floor(v0) - margin
            sy1 = math.ceil(r1 * f) + margin
            for c0 in range(0, cols, block_cols):
                c1 = min(cols, c0 + block_cols)
                u0 = c0 * f
                sx0 = math.floor(u0) - margin
                sx1 = math.ceil(c1 * f) + margin
                src = self.read_level(level, sx0, sy0, sx1 - sx0, sy1 - sy0)
                out[r0:r1, c0:c1] = resample_window(
                    src, (sx0, sy0), (u0, v0), f, (r1 - r0, c1 - c0)
                )
        return out

    def read_at_spacing(self, spacing: float) -> npt.NDArray[np.uint8]:
        """The whole slide at ``spacing`` um/px (needs the spacing: MissingMppError)."""
        mpp = self._info.mpp
        if mpp is None:
            raise MissingMppError(
                f"{self._info.path}: no pixel spacing known; give it in um/px with --mpp (CLI, e.g. --mpp 0.25) / mpp= (open_slide)"
            )
        return self.read_at_downsample(spacing / mpp.x)

    def get_thumbnail(self, max_size: tuple[int, int]) -> npt.NDArray[np.uint8]:
        """The whole slide fitting in ``max_size`` = ``(width, height)``, aspect kept."""
        w0, h0 = self._info.dimensions
        ds = max(w0 / max_size[0], h0 / max_size[1], 1.0)
        return self.read_at_downsample(ds)

    def close(self) -> None:
        """Release the file (idempotent)."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> BaseSlideReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._info.path!r})"
