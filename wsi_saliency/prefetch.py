"""Read tile batches ahead of the model, in reader threads that each open the slide.

OpenSlide, libtiff and the JPEG / JPEG 2000 decoders release the GIL, so a few
threads keep the device fed while the main thread runs the model: reading overlaps
compute without worker processes. Threads (rather than processes) also keep the
per-slide job usable inside Dask workers, which are daemonic and may not fork.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["TileBatch", "iter_tile_batches"]

TileBatch = tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]
"""``(indices (B,), tiles (B, T, T, 3) uint8)``."""


def _batches(n: int, batch_size: int) -> list[npt.NDArray[np.int64]]:
    return [np.arange(s, min(s + batch_size, n), dtype=np.int64) for s in range(0, n, batch_size)]


def iter_tile_batches(
    open_reader: Callable[[], Any],
    read_batch: Callable[[Any, npt.NDArray[np.int64]], npt.NDArray[np.uint8]],
    n_tiles: int,
    *,
    batch_size: int,
    workers: int,
    prefetch: int = 2,
) -> Iterator[TileBatch]:
    """Yield tile batches in order, read ahead by ``workers`` threads.

    Parameters
    ----------
    open_reader
        Opens a new reader on the slide; called once per reader thread (readers are not
        shared between threads).
    read_batch
        ``read_batch(reader, indices) -> (B, T, T, 3) uint8``.
    n_tiles
        Number of tiles in the grid; batches cover ``0 .. n_tiles - 1`` in order.
    batch_size
        Tiles per batch.
    workers
        Reader threads. ``0`` reads in the calling thread (no overlap; for debugging).
    prefetch
        Batches in flight per reader thread.

    Yields
    ------
    tuple
        ``(indices, tiles)`` per batch, in grid order.
    """
    batches = _batches(n_tiles, batch_size)
    if workers <= 0:
        reader = open_reader()
        try:
            for idx in batches:
                yield idx, read_batch(reader, idx)
        finally:
            reader.close()
        return

    local = threading.local()
    opened: list[Any] = []
    lock = threading.Lock()

    def task(idx: npt.NDArray[np.int64]) -> TileBatch:
        reader = getattr(local, "reader", None)
        if reader is None:
            reader = open_reader()
            local.reader = reader
            with lock:
                opened.append(reader)
        return idx, read_batch(reader, idx)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsi-read")
    pending: deque[Future[TileBatch]] = deque()
    todo = iter(batches)
    try:
        for idx in todo:
            pending.append(pool.submit(task, idx))
            if len(pending) >= workers * prefetch:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(task, nxt))
            yield result
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for reader in opened:
            reader.close()
