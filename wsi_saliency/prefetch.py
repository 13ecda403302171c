"""Read tile batches ahead of the model, in reader threads that each open the slide.

OpenSlide, libtiff and the JPEG / JPEG 2000 decoders release the GIL, so a few
threads keep the device fed while the main thread runs the model: reading overlaps
compute without worker processes. Threads (rather than processes) also keep the
per-slide job usable inside Dask workers, which are daemonic and may not fork.

Two choices of how tiles are fed are defined here (``inference.workers`` and
``inference.decode``) with the rules that resolve their ``auto``:

* :func:`resolve_workers`: reader threads per slide;
* :func:`choose_decode`: decode the slide's JPEG tiles on the CPU (the slide reader with
  its block cache) or on the GPU (:mod:`wsi_saliency.jpeg_tiles`, nvJPEG).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

__all__ = [
    "DECODES",
    "WORKERS_CHOICES",
    "Decode",
    "TileBatch",
    "Workers",
    "choose_decode",
    "iter_tile_batches",
    "resolve_workers",
]

TileBatch = tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]
"""``(indices (B,), tiles (B, T, T, 3) uint8)``."""

#: ``inference.workers`` takes a thread count or this word (:func:`resolve_workers`).
Workers = Literal["auto"]
WORKERS_CHOICES: tuple[Workers, ...] = get_args(Workers)

#: Where the slide's tiles are decoded (``inference.decode``, :func:`choose_decode`).
Decode = Literal["auto", "cpu", "gpu"]
DECODES: tuple[Decode, ...] = get_args(Decode)

#: Most reader threads ``auto`` starts for an accelerator.
MAX_AUTO_WORKERS = 8


def resolve_workers(workers: int | str, device_type: str, cores: int | None = None) -> int:
    """Reader threads for a slide: ``workers`` itself, or the rule for ``"auto"``.

    Rule for ``"auto"`` (from ``benchmarks/bench_throughput.py``; README, "Speed and
    precision"):

    * on the **CPU** the model and the readers share the cores, and reading is cheap next
      to the model (about 0.3-0.5 ms of CPU per 224 px JPEG tile through the block cache,
      against 20 ms for a ResNet-18 forward pass in bf16 on one core): **one** thread
      keeps ahead of the model, a second only takes cycles from PyTorch's threads. Two
      threads from 8 cores on;
    * on an **accelerator** (CUDA, MPS) the cores are free for reading and one thread
      decodes far fewer tiles than the device consumes: **cores - 1** threads (one core
      left to the thread that feeds the device), at most :data:`MAX_AUTO_WORKERS`.

    Parameters
    ----------
    workers
        A thread count (``0``: read in the calling thread) or ``"auto"``.
    device_type
        ``torch.device.type`` of the model: ``"cpu"``, ``"cuda"``, ``"mps"``, ...
    cores
        CPU cores this process may use (default: ``os.sched_getaffinity`` or
        ``os.cpu_count``).

    Returns
    -------
    int
        Reader threads, >= 1 for ``"auto"``.
    """
    if not isinstance(workers, str):
        return int(workers)
    if workers not in WORKERS_CHOICES:
        raise ValueError(f"workers {workers!r} is neither a thread count nor 'auto'")
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
    if device_type == "cpu":
        return 1 if cores < 8 else 2
    return max(1, min(MAX_AUTO_WORKERS, cores - 1))


def choose_decode(
    requested: str,
    *,
    gpu_decoder: bool,
    level_is_ycbcr_jpeg: bool,
    plain_crops: bool,
) -> tuple[Literal["cpu", "gpu"], str]:
    """Where a slide's tiles are decoded, and why.

    ``"gpu"`` (nvJPEG through :mod:`wsi_saliency.jpeg_tiles`) needs all of: the request is
    ``"auto"`` or ``"gpu"``; a GPU JPEG decoder (the model's device is CUDA and
    torchvision with CUDA is importable); every tile is a plain crop of the level it is
    read from (no resampling); that level is a tiled YCbCr JPEG TIFF level (nvJPEG would
    colour-convert Aperio's RGB JPEG wrongly), checked in this order. Anything else decodes on the
    CPU (the slide reader and its block cache), also when ``"gpu"`` was asked for: the
    job falls back per slide and records why (``run.json``: ``inference.decode``).

    Parameters
    ----------
    requested
        ``"auto"``, ``"cpu"`` or ``"gpu"``.
    gpu_decoder
        Whether nvJPEG can decode on the model's device.
    level_is_ycbcr_jpeg
        Whether the read level is a tiled YCbCr JPEG level of a TIFF file.
    plain_crops
        Whether every tile is a crop of the level (one level pixel per tile pixel).

    Returns
    -------
    used : {"cpu", "gpu"}
    reason : str
        Why (for ``run.json`` and the log).
    """
    if requested not in DECODES:
        raise ValueError(f"decode {requested!r} is not one of {list(DECODES)}")
    if requested == "cpu":
        return "cpu", "requested"
    if not gpu_decoder:
        return "cpu", "no GPU JPEG decoder (the device is not CUDA, or torchvision is missing)"
    if not plain_crops:
        return "cpu", "tiles are resampled from the level"
    if not level_is_ycbcr_jpeg:
        return "cpu", "the level is not a tiled YCbCr JPEG TIFF level"
    return "gpu", "requested" if requested == "gpu" else "auto: CUDA, YCbCr JPEG, plain crops"


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
