"""``probability.ome.tif`` and ``saliency.ome.tif``: tiled pyramidal OME-TIFFs.

Each file holds one float32 channel: the full-resolution heatmap in the first IFD and
the 2x pyramid levels in its SubIFDs (the layout QuPath / Bio-Formats and tiffslide
read), 256 x 256 tiles, deflate compression, ``PhysicalSizeX/Y`` in um in the OME-XML and
the same pixel size in the TIFF resolution tags (pixels per centimetre). NaN marks pixels
no tile covered. Pixel ``(i, j)`` of level ``k`` covers ``[j * p * 2**k, (j + 1) * p * 2**k)``
um from the slide's top-left corner (``p`` = PhysicalSizeX), the stitcher's contract.

Levels are written tile row by tile row from chunked (zarr / dask) arrays, so a level is
never loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import numpy.typing as npt
import tifffile
import zarr

from wsi_saliency.errors import OutputError
from wsi_saliency.stitch import StitchedHeatmaps
from wsi_saliency.writers._common import pyramid

__all__ = [
    "PROBABILITY_FILENAME",
    "SALIENCY_FILENAME",
    "write_heatmap_tiffs",
    "write_ome_tiff",
]

#: File names downstream pipelines rely on.
PROBABILITY_FILENAME = "probability.ome.tif"
SALIENCY_FILENAME = "saliency.ome.tif"

_TILE = 256


def _as_dask2d(a: Any) -> da.Array:
    if isinstance(a, da.Array):
        x = a
    elif isinstance(a, zarr.Array):
        x = da.from_zarr(a)
    else:
        x = da.from_array(np.asarray(a), chunks=(_TILE * 4, _TILE * 4))
    if x.ndim != 2:
        raise ValueError(f"OME-TIFF levels must be 2-D (H, W), got shape {x.shape}")
    return x


def _tiles(level: da.Array, tile: int) -> Iterator[npt.NDArray[np.float32]]:
    """Yield ``tile x tile`` float32 tiles in row-major order, one band in memory."""
    h, w = (int(s) for s in level.shape)
    for y0 in range(0, h, tile):
        band = np.asarray(
            level[y0 : min(y0 + tile, h), :].compute(scheduler="threads"), dtype=np.float32
        )
        for x0 in range(0, w, tile):
            t = np.full((tile, tile), np.nan, dtype=np.float32)
            part = band[:, x0 : x0 + tile]
            t[: part.shape[0], : part.shape[1]] = part
            yield t


def write_ome_tiff(
    path: Path,
    levels: Sequence[Any],
    pixel_size_um: float,
    *,
    name: str,
    tile: int = _TILE,
) -> Path:
    """Write a tiled pyramidal single-channel float32 OME-TIFF.

    Parameters
    ----------
    path
        Target file (``*.ome.tif``); replaced if it exists.
    levels
        2-D ``(H_i, W_i)`` array-likes (zarr, dask or numpy), finest first; level ``i``
        must have pixel size ``pixel_size_um * 2**i``.
    pixel_size_um
        Micrometres per pixel of the finest level.
    name
        Image and channel name in the OME-XML (e.g. ``"probability"``).
    tile
        Tile edge in pixels (a multiple of 16).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    path = Path(path)
    arrays = [_as_dask2d(a) for a in levels]
    if not arrays:
        raise ValueError("write_ome_tiff needs at least one level")
    p = float(pixel_size_um)
    nbytes = sum(int(np.prod(a.shape)) * 4 for a in arrays)
    common: dict[str, Any] = {
        "dtype": np.float32,
        "tile": (tile, tile),
        "photometric": "minisblack",
        "compression": "zlib",
        "resolutionunit": "CENTIMETER",
    }
    metadata = {
        "axes": "YX",
        "Name": name,
        "PhysicalSizeX": p,
        "PhysicalSizeXUnit": "\u00b5m",
        "PhysicalSizeY": p,
        "PhysicalSizeYUnit": "\u00b5m",
        "Channel": {"Name": [name]},
    }
    try:
        with tifffile.TiffWriter(path, bigtiff=nbytes > 2**31, ome=True) as tif:
            base = arrays[0]
            tif.write(
                _tiles(base, tile),
                shape=tuple(int(s) for s in base.shape),
                subifds=len(arrays) - 1,
                resolution=(1e4 / p, 1e4 / p),
                metadata=metadata,
                **common,
            )
            for i, lvl in enumerate(arrays[1:], start=1):
                ps = p * 2**i
                tif.write(
                    _tiles(lvl, tile),
                    shape=tuple(int(s) for s in lvl.shape),
                    subfiletype=1,
                    resolution=(1e4 / ps, 1e4 / ps),
                    metadata=None,
                    **common,
                )
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    return path


def write_heatmap_tiffs(
    out_dir: Path,
    heatmaps: StitchedHeatmaps,
    *,
    levels: Sequence[Any] | None = None,
    min_size: int = 512,
) -> dict[str, Path]:
    """Write ``probability.ome.tif`` (channel 0) and ``saliency.ome.tif`` (channel 1).

    Parameters
    ----------
    out_dir
        The slide's output folder (exists).
    heatmaps
        Output of :meth:`wsi_saliency.stitch.Stitcher.finalize`.
    levels
        Optional ``(C, H_i, W_i)`` pyramid levels already written (e.g. what
        :func:`wsi_saliency.writers.ome_zarr.write_ome_zarr` returns) to reuse; by default
        a lazy 2x NaN-mean pyramid is built from ``heatmaps.heatmap`` with dask.
    min_size
        Halve until the larger side is at most this many pixels (when ``levels`` is None).

    Returns
    -------
    dict
        ``{"probability": path, "saliency": path}``; no ``saliency.ome.tif`` when the
        heatmaps have no saliency channel (``--method none``).
    """
    out_dir = Path(out_dir)
    if levels is None:
        with dask.config.set(scheduler="threads"):
            lv = pyramid(da.from_zarr(heatmaps.heatmap), min_size, int(heatmaps.chunk_size))
    else:
        lv = [
            a
            if isinstance(a, da.Array)
            else da.from_zarr(a)
            if isinstance(a, zarr.Array)
            else da.asarray(a)
            for a in levels
        ]
    out: dict[str, Path] = {}
    files = [("probability", PROBABILITY_FILENAME, 0)]
    if heatmaps.has_saliency:
        files.append(("saliency", SALIENCY_FILENAME, heatmaps.channel_index("saliency")))
    for key, fname, ch in files:
        out[key] = write_ome_tiff(
            out_dir / fname, [x[ch] for x in lv], heatmaps.pixel_size_um, name=key
        )
    return out
