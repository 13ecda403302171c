"""A bounded, thread-safe cache of decoded slide blocks, so each compressed tile is decoded once.

Overlapping tile-sized reads decode the same compressed slide tiles again and again:
with overlap 0.5 a slide tile lies under up to four tiles (more with the resampling
margin), and every read decodes it anew. :class:`BlockCache` instead reads a pyramid
level in **blocks aligned with the file's own compressed tiles** (a whole number of
them, at least :data:`MIN_BLOCK_PX` a side; :data:`FALLBACK_BLOCK_PX` where the tile
size is unknown) and serves every window from the blocks it covers. A block is read
once while it stays in the cache: the least recently used blocks are dropped when the
decoded pixels exceed the byte limit, so memory stays bounded.

One cache serves all reader threads of a slide (their readers are separate handles on
the same file; a block is the same pixels whichever reads it). A block that one thread
is reading is waited for, not read twice.

The byte limit :meth:`BlockCache.for_rows` chooses holds the blocks under two grid
rows across the whole level, which is what row-major tile order needs to decode every
block once, capped at :data:`DEFAULT_MAX_BYTES`.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from wsi_saliency.types import SlideInfo

__all__ = ["DEFAULT_MAX_BYTES", "BlockCache", "CacheStats"]

#: Largest byte limit :meth:`BlockCache.for_rows` chooses (decoded RGB pixels).
DEFAULT_MAX_BYTES: Final[int] = 256 * 1024 * 1024
#: Smallest block side: tiny compressed tiles are grouped into blocks at least this big.
MIN_BLOCK_PX: Final[int] = 256
#: Block side where the file's tile size is unknown (stripped TIFF, some formats).
FALLBACK_BLOCK_PX: Final[int] = 512


class _LevelReader(Protocol):
    @property
    def info(self) -> SlideInfo: ...

    def read_level(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> npt.NDArray[np.uint8]: ...


@dataclass
class CacheStats:
    """Counters of a :class:`BlockCache`."""

    #: Blocks read from the slide (decoded).
    reads: int = 0
    #: Block lookups served from the cache.
    hits: int = 0
    #: Blocks dropped to stay under the byte limit.
    evictions: int = 0
    #: Largest number of bytes held at once.
    peak_bytes: int = 0


def _block_side(native: int | None) -> int:
    if not native or native <= 0:
        return FALLBACK_BLOCK_PX
    return native * max(1, math.ceil(MIN_BLOCK_PX / native))


class BlockCache:
    """Decoded blocks of slide levels, least recently used dropped beyond ``max_bytes``.

    Parameters
    ----------
    max_bytes
        Byte limit of the decoded pixels held (a block larger than the limit is still
        served, then dropped).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.stats = CacheStats()
        self._blocks: OrderedDict[tuple[str, int, int, int], npt.NDArray[np.uint8]] = OrderedDict()
        self._pending: dict[tuple[str, int, int, int], threading.Event] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def for_rows(
        cls,
        level_width: int,
        window_height: float,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        block_height: int = FALLBACK_BLOCK_PX,
    ) -> BlockCache:
        """A cache big enough to decode each block once when tiles are read row by row.

        Holds ``ceil(window_height / block_height) + 2`` block rows across the level
        (RGB bytes), at most ``max_bytes``.

        Parameters
        ----------
        level_width
            Width in pixels of the pyramid level the tiles are read from.
        window_height
            Height in level pixels of one tile's source window (with its margins).
        max_bytes
            Upper bound of the limit.
        block_height
            Block height assumed (the largest block the cache normally uses).
        """
        rows = math.ceil(window_height / block_height) + 2
        return cls(min(int(max_bytes), int(rows * block_height * level_width * 3)))

    @property
    def nbytes(self) -> int:
        """Bytes of decoded pixels held now."""
        return self._bytes

    def block_shape(self, reader: _LevelReader, level: int) -> tuple[int, int]:
        """``(width, height)`` of the blocks of ``level`` (whole compressed tiles)."""
        native = getattr(reader, "native_tile_shape", None)
        shape = native(level) if callable(native) else None
        if shape is None:
            return FALLBACK_BLOCK_PX, FALLBACK_BLOCK_PX
        return _block_side(shape[0]), _block_side(shape[1])

    def read_level(
        self,
        reader: _LevelReader,
        level: int,
        x: int,
        y: int,
        width: int,
        height: int,
        *,
        out: npt.NDArray[np.uint8] | None = None,
    ) -> npt.NDArray[np.uint8]:
        """``reader.read_level(level, x, y, width, height)``, served from cached blocks.

        Pixels are identical to the direct read (white outside the level). ``out``, a
        uint8 ``(height, width, 3)`` array, receives them when given.
        """
        x, y, width, height = int(x), int(y), int(width), int(height)
        if out is None:
            out = np.empty((height, width, 3), dtype=np.uint8)
        elif out.shape != (height, width, 3) or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 {(height, width, 3)}, got {out.dtype} {out.shape}")
        lw, lh = reader.info.level_dimensions[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lw), min(y + height, lh)
        if x0 != x or y0 != y or x1 != x + width or y1 != y + height:
            out[...] = 255  # partly outside the level: white there
        if x1 <= x0 or y1 <= y0:
            return out
        bw, bh = self.block_shape(reader, level)
        for by in range(y0 // bh, (y1 - 1) // bh + 1):
            for bx in range(x0 // bw, (x1 - 1) // bw + 1):
                block = self._block(reader, level, bx, by, bw, bh)
                gx0, gy0 = bx * bw, by * bh
                ix0, iy0 = max(x0, gx0), max(y0, gy0)
                ix1 = min(x1, gx0 + block.shape[1])
                iy1 = min(y1, gy0 + block.shape[0])
                out[iy0 - y : iy1 - y, ix0 - x : ix1 - x] = block[
                    iy0 - gy0 : iy1 - gy0, ix0 - gx0 : ix1 - gx0
                ]
        return out

    def _block(
        self, reader: _LevelReader, level: int, bx: int, by: int, bw: int, bh: int
    ) -> npt.NDArray[np.uint8]:
        key = (reader.info.path, level, bx, by)
        while True:
            with self._lock:
                block = self._blocks.get(key)
                if block is not None:
                    self._blocks.move_to_end(key)
                    self.stats.hits += 1
                    return block
                event = self._pending.get(key)
                if event is None:
                    event = threading.Event()
                    self._pending[key] = event
                    break
            event.wait()  # another thread is reading it; then look again
        try:
            lw, lh = reader.info.level_dimensions[level]
            gx, gy = bx * bw, by * bh
            block = reader.read_level(level, gx, gy, min(bw, lw - gx), min(bh, lh - gy))
            block.flags.writeable = False
            with self._lock:
                self.stats.reads += 1
                self._blocks[key] = block
                self._bytes += block.nbytes
                self.stats.peak_bytes = max(self.stats.peak_bytes, self._bytes)
                while self._bytes > self.max_bytes and self._blocks:
                    _, old = self._blocks.popitem(last=False)
                    self._bytes -= old.nbytes
                    self.stats.evictions += 1
            return block
        finally:
            with self._lock:
                self._pending.pop(key, None)
            event.set()

    def clear(self) -> None:
        """Drop every block."""
        with self._lock:
            self._blocks.clear()
            self._bytes = 0
