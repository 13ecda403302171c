"""``heatmaps.ome.zarr``: the stitched heatmaps as an OME-NGFF 0.4 multiscale image.

Layout (zarr format 2, ``/`` chunk key separator, Blosc-zstd, float32)::

    heatmaps.ome.zarr/
        .zattrs      multiscales (axes c, y, x; scale transforms in micrometre), omero
        0/ 1/ ...    (C, H_i, W_i) arrays; level i is the 2x NaN-mean of level i - 1

Channel 0 is the tumour probability, channel 1 the raw signed saliency; further channels
follow (``omero.channels[].label`` names them). NaN marks pixels no tile covered.

Coordinates: pixel ``(y, x)`` of level ``i`` covers ``[x * s_i, (x + 1) * s_i)`` um from
the slide's top-left corner, ``s_i = p * 2**i`` (``p`` = heatmap pixel size in um; the
stitcher's *pixel corner* convention; divide by the slide MPP for level-0 pixels).

OME-NGFF viewers (napari, ome-zarr-py) put array index ``k`` at world coordinate
``scale * k + translation`` and draw the pixel *centred* there; a slide opened beside it
with scale = its MPP and no translation puts its pixel ``k`` centred at ``k * mpp``. So
level ``i`` carries ``scale [1, s_i, s_i]`` and ``translation [0, (s_i - mpp_y) / 2,
(s_i - mpp_x) / 2]``: the centre of heatmap pixel ``(y, x)`` is then the centre of the
level-0 slide pixels it covers, and the two layers line up pixel-exactly.
``omero.rdefs.model`` is ``"color"`` so viewers use the channel colours (tumour red).

The pyramid is built with dask, chunk by chunk, each level read back from the one
written before it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import dask
import dask.array as da
import numpy as np
import zarr
from numcodecs import Blosc

from wsi_saliency.errors import OutputError
from wsi_saliency.stitch import StitchedHeatmaps
from wsi_saliency.writers._common import class_colors, downsample2

__all__ = ["FILENAME", "write_ome_zarr"]

#: File name downstream pipelines rely on.
FILENAME = "heatmaps.ome.zarr"


def _channel_meta(
    heatmaps: StitchedHeatmaps, ranges: list[tuple[float, float]]
) -> list[dict[str, Any]]:
    colors = class_colors(heatmaps.class_names, heatmaps.tumor_class)
    out: list[dict[str, Any]] = []
    for i, label in enumerate(heatmaps.channel_names):
        lo, hi = ranges[i]
        if label.startswith("probability_"):
            cls = label[len("probability_") :]
            rgb = (
                colors[heatmaps.class_names.index(cls)]
                if cls in heatmaps.class_names
                else (255, 255, 255)
            )
            window = {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
        else:
            rgb = (255, 255, 255)
            bound = max(abs(lo), abs(hi)) or 1.0
            if label == "saliency":
                window = {"min": -bound, "max": bound, "start": -bound, "end": bound}
            else:
                window = {
                    "min": lo,
                    "max": hi if hi > lo else lo + 1.0,
                    "start": lo,
                    "end": hi if hi > lo else lo + 1.0,
                }
        out.append(
            {
                "label": label,
                "color": "{:02X}{:02X}{:02X}".format(*rgb),
                "active": i < 2,
                "coefficient": 1.0,
                "family": "linear",
                "inverted": False,
                "window": {k: float(v) for k, v in window.items()},
            }
        )
    return out


def write_ome_zarr(
    path: Path,
    heatmaps: StitchedHeatmaps,
    *,
    name: str | None = None,
    min_size: int = 512,
    overwrite: bool = False,
) -> list[zarr.Array]:
    """Write ``heatmaps`` as an OME-NGFF 0.4 multiscale image.

    Parameters
    ----------
    path
        Target folder, normally ``<out>/heatmaps.ome.zarr``.
    heatmaps
        Output of :meth:`wsi_saliency.stitch.Stitcher.finalize`.
    name
        Image name in the metadata (e.g. the slide stem).
    min_size
        Halve until the larger side of the coarsest level is at most this many pixels.
    overwrite
        Replace an existing folder at ``path``.

    Returns
    -------
    list of zarr.Array
        The written levels, finest first, each ``(C, H_i, W_i)`` float32.

    Raises
    ------
    OutputError
        If ``path`` exists and ``overwrite`` is False, or cannot be written.
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise OutputError(f"{path} already exists: remove it or pass overwrite=True")
        shutil.rmtree(path)
    cs = int(heatmaps.chunk_size)
    p = float(heatmaps.pixel_size_um)
    try:
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        levels: list[zarr.Array] = []
        src = da.from_zarr(heatmaps.heatmap)
        level_idx = 0
        with dask.config.set(scheduler="threads"):
            while True:
                arr = root.create_array(
                    str(level_idx),
                    shape=tuple(int(s) for s in src.shape),
                    chunks=(1, cs, cs),
                    dtype="float32",
                    fill_value=float("nan"),
                    compressor=Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE),
                    chunk_key_encoding={"name": "v2", "separator": "/"},
                )
                src = src.rechunk((1, cs, cs)).astype(np.float32)
                da.store(src, cast(Any, arr), lock=False, compute=True)
                levels.append(arr)
                if max(arr.shape[1:]) <= min_size:
                    break
                src = downsample2(da.from_zarr(arr), cs)
                level_idx += 1
            # channel ranges from the coarsest level (cheap, memory bounded)
            coarse = da.from_zarr(levels[-1])
            lo = da.nanmin(coarse, axis=(1, 2))
            hi = da.nanmax(coarse, axis=(1, 2))
            with np.errstate(invalid="ignore"):
                lo_v, hi_v = (np.asarray(v, dtype=np.float64) for v in dask.compute(lo, hi))
        ranges = [
            (float(a) if np.isfinite(a) else 0.0, float(b) if np.isfinite(b) else 1.0)
            for a, b in zip(lo_v, hi_v, strict=True)
        ]
        sx, sy = heatmaps.downsample
        mx, my = float(heatmaps.grid.mpp.x), float(heatmaps.grid.mpp.y)
        multiscale: dict[str, Any] = {
            "version": "0.4",
            "name": name or "heatmaps",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": str(i),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, p * 2**i, p * 2**i]},
                        {
                            "type": "translation",
                            "translation": [
                                0.0,
                                (p * 2**i - my) / 2.0,
                                (p * 2**i - mx) / 2.0,
                            ],
                        },
                    ],
                }
                for i in range(len(levels))
            ],
            "type": "mean",
            "metadata": {
                "description": "2x2 NaN-mean of the level before (wsi_saliency.writers)",
                "pixel_convention": (
                    "pixel (y, x) covers [x*s, (x+1)*s) um from the slide corner, s = scale; "
                    "translation = (s - slide mpp) / 2 puts pixel centres on the centres of "
                    "the slide pixels they cover (slide pixel k centred at k * mpp)"
                ),
            },
        }
        root.attrs.update(
            {
                "multiscales": [multiscale],
                "omero": {
                    "name": name or "heatmaps",
                    "version": "0.4",
                    "channels": _channel_meta(heatmaps, ranges),
                    "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "color"},
                },
                "wsi_saliency": {
                    "pixel_size_um": p,
                    "level0_downsample": [sx, sy],
                    "mpp": [float(heatmaps.grid.mpp.x), float(heatmaps.grid.mpp.y)],
                    "slide_dimensions": [int(v) for v in heatmaps.grid.slide_dimensions],
                    "channel_names": list(heatmaps.channel_names),
                    "blend": heatmaps.blend,
                    "coverage": float(heatmaps.coverage),
                    "uncovered": "NaN",
                },
            }
        )
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    return levels
