"""Block cache of decoded slide tiles: same pixels as direct reads, each slide tile
decoded once when tiles overlap, bounded memory, shared safely by reader threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from wsi_saliency.prefetch import iter_tile_batches
from wsi_saliency.readers import open_slide
from wsi_saliency.readers.base import BaseSlideReader
from wsi_saliency.readers.blockcache import BlockCache
from wsi_saliency.tiling import full_grid, read_tile, read_tiles, tile_cache
from wsi_saliency.types import TileGrid

BACKENDS = ("openslide", "tiffslide", "pyvips")


class _Counting:
    """Counts the compressed slide tiles each ``read_level`` of a reader decodes."""

    def __init__(self, reader: BaseSlideReader) -> None:
        self.reader = reader
        self.decoded: list[tuple[int, int, int]] = []
        self._lock = threading.Lock()
        orig = reader._read_level_raw

        def raw(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
            shape = reader.native_tile_shape(level)
            assert shape is not None
            tw, th = shape
            tiles = [
                (level, tx, ty)
                for ty in range(y // th, (y + h - 1) // th + 1)
                for tx in range(x // tw, (x + w - 1) // tw + 1)
            ]
            with self._lock:
                self.decoded.extend(tiles)
            return orig(level, x, y, w, h)

        reader._read_level_raw = raw  # type: ignore[method-assign]


def _grid(reader: BaseSlideReader, overlap: float, spacing: float | None = None) -> TileGrid:
    assert reader.info.mpp is not None
    return full_grid(
        reader.info,
        tile_size=224,
        spacing=spacing if spacing is not None else reader.info.mpp.x,
        overlap=overlap,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("overlap", "spacing"), [(0.0, 0.5), (0.5, 0.5), (0.5, 0.75), (0.5, 2.0)])
def test_cached_reads_equal_direct_reads(
    rect_svs: Path, backend: str, overlap: float, spacing: float
) -> None:
    with open_slide(rect_svs, backend=backend) as r:
        g = _grid(r, overlap, spacing)
        idx = np.arange(len(g))
        direct = np.stack([read_tile(r, g, int(k)) for k in idx])
        np.testing.assert_array_equal(read_tiles(r, g, idx, cache=tile_cache(g)), direct)
        np.testing.assert_array_equal(read_tiles(r, g, idx), direct)  # call-local cache
        # a cache far too small for reuse: still the same pixels
        tiny = BlockCache(max_bytes=1)
        np.testing.assert_array_equal(read_tiles(r, g, idx[::3], cache=tiny), direct[::3])
        assert tiny.nbytes <= 256 * 256 * 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_slide_tile_decoded_once_with_overlap(rect_svs: Path, backend: str) -> None:
    """Overlap 0.5 read tile by tile decodes slide tiles ~4x over; through the shared
    cache, in grid order and in batches, every slide tile is decoded exactly once."""
    with open_slide(rect_svs, backend=backend) as r:
        g = _grid(r, 0.5)
        counting = _Counting(r)
        for k in range(len(g)):
            read_tile(r, g, k)
        direct = len(counting.decoded)
        distinct = len(set(counting.decoded))
        assert direct >= 3 * distinct  # the waste the cache removes
        counting.decoded.clear()
        cache = tile_cache(g)
        for s in range(0, len(g), 32):
            read_tiles(r, g, np.arange(s, min(s + 32, len(g))), cache=cache)
        assert len(counting.decoded) == distinct == len(set(counting.decoded))
        assert cache.stats.reads == distinct and cache.stats.hits > 3 * distinct
        assert cache.stats.evictions == 0 and cache.stats.peak_bytes <= cache.max_bytes


def test_cache_is_bounded_and_sized_for_two_rows(rect_svs: Path) -> None:
    with open_slide(rect_svs, backend="pyvips") as r:
        g = _grid(r, 0.5)
        cache = tile_cache(g)
        # 224 px windows + margins: ceil(228/512) + 2 = 3 rows of 512 px blocks
        assert cache.max_bytes == 3 * 512 * 2048 * 3
        assert tile_cache(g, max_bytes=10_000).max_bytes == 10_000
        small = BlockCache(max_bytes=4 * 256 * 256 * 3)
        read_tiles(r, g, np.arange(len(g)), cache=small)
        assert small.stats.peak_bytes <= small.max_bytes + 256 * 256 * 3
        assert small.stats.evictions > 0
        assert small.nbytes <= small.max_bytes


@pytest.mark.parametrize("backend", BACKENDS)
def test_reader_threads_share_one_cache(rect_svs: Path, backend: str) -> None:
    """Two reader threads, each with its own slide handle, one cache: the batches are
    those of a direct read, and no slide tile is decoded twice."""
    with open_slide(rect_svs, backend=backend) as r:
        g = _grid(r, 0.5)
        expected = np.stack([read_tile(r, g, k) for k in range(len(g))])
    cache = tile_cache(g)
    counters: list[_Counting] = []

    def open_reader() -> BaseSlideReader:
        reader = open_slide(rect_svs, backend=backend)
        counters.append(_Counting(reader))
        return reader

    batches = iter_tile_batches(
        open_reader,
        lambda rd, idx: read_tiles(rd, g, idx, cache=cache),
        len(g),
        batch_size=8,
        workers=2,
    )
    got = {int(idx[0]): t for idx, t in batches}
    tiles = np.concatenate([got[k] for k in sorted(got)])
    np.testing.assert_array_equal(tiles, expected)
    decoded = [t for c in counters for t in c.decoded]
    assert len(decoded) == len(set(decoded)) == cache.stats.reads


def test_cache_outside_level_is_white(rect_svs: Path) -> None:
    with open_slide(rect_svs, backend="pyvips") as r:
        cache = BlockCache()
        w, h = r.info.level_dimensions[0]
        for x, y in ((-50, -50), (w - 30, h - 20), (w + 10, 0)):
            np.testing.assert_array_equal(
                cache.read_level(r, 0, x, y, 100, 80), r.read_level(0, x, y, 100, 80)
            )
    with pytest.raises(ValueError, match="max_bytes"):
        BlockCache(max_bytes=-1)
