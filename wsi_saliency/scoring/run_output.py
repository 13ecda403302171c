"""Read a finished run's per-slide outputs for scoring, without recomputing anything.

A slide folder of a run (``OUT/<name>/``) is scored from three files:

* ``run.json``: the slide's level-0 size and MPP, the heatmap pixel size and shape,
  the tumour class, the tiling (stride, tile size) and the saliency map shape;
* ``heatmaps.ome.zarr``: the full-resolution level (``datasets[0]``) of the tumour
  probability and saliency channels, found by their ``omero.channels[].label``; its
  NGFF ``scale`` must equal the pixel size of ``run.json``;
* ``tiles.csv``: one row per tile (level-0 box, grid position, class probabilities,
  predicted class).

Geometry (the README's "Geometry contract"): heatmap pixel ``(i, j)`` covers level-0
``[j*sx, (j+1)*sx) x [i*sy, (i+1)*sy)`` with ``sx = pixel_size_um / mpp_x``; tile
``(r, c)`` lands at heatmap pixel ``(r*step, c*step)``, ``step = stride * m / tile_size``
for an ``m x m`` saliency map, and covers ``m x m`` heatmap pixels.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from wsi_saliency.errors import InputError

__all__ = [
    "RunSlide",
    "failed_slides",
    "TileTable",
    "find_run_slides",
    "read_heatmaps",
    "read_run_slide",
    "read_tile_table",
]

RUN_JSON = "run.json"
BATCH_SUMMARY = "batch-summary.json"
HEATMAPS = "heatmaps.ome.zarr"
TILES_CSV = "tiles.csv"


@dataclass(frozen=True)
class RunSlide:
    """What scoring needs to know about one slide of a finished run.

    Parameters
    ----------
    name
        Output folder name (the slide stem, or ``stem__parent``).
    folder
        The slide's output folder.
    slide_file
        File name of the slide (``run.json`` ``slide.file``).
    dimensions
        Level-0 ``(width, height)`` in pixels.
    mpp
        Level-0 ``(x, y)`` spacing in um/px.
    pixel_size_um
        Heatmap pixel size in um.
    shape
        Heatmap ``(height, width)`` at full resolution.
    tumour_class
        Name of the tumour class (``prob_<name>`` column, ``probability_<name>`` channel).
    tile_size, stride
        Tile size and stride in tile pixels.
    map_size
        Side ``m`` of each tile's saliency map (heatmap pixels per tile).
    """

    name: str
    folder: Path
    slide_file: str
    dimensions: tuple[int, int]
    mpp: tuple[float, float]
    pixel_size_um: float
    shape: tuple[int, int]
    tumour_class: str
    tile_size: int
    stride: int
    map_size: int

    @property
    def downsample(self) -> tuple[float, float]:
        """Level-0 pixels per heatmap pixel ``(sx, sy)``."""
        return self.pixel_size_um / self.mpp[0], self.pixel_size_um / self.mpp[1]

    @property
    def step(self) -> int:
        """Heatmap pixels between neighbouring tiles."""
        return self.stride * self.map_size // self.tile_size


def _get(d: Any, keys: str, where: Path) -> Any:
    cur = d
    for k in keys.split("."):
        if not isinstance(cur, dict) or k not in cur:
            raise InputError(
                f"{where}: no '{keys}' entry; the folder is not the output of a finished "
                "`wsi-saliency run` (re-run the slide)"
            )
        cur = cur[k]
    return cur


def read_run_slide(folder: Path) -> RunSlide:
    """Read ``folder/run.json`` into a :class:`RunSlide`.

    Raises
    ------
    InputError
        Missing or unreadable ``run.json``, or one that lacks a needed entry.
    """
    path = Path(folder) / RUN_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the run record ({exc})") from None
    classes = list(_get(data, "model.class_names", path))
    tumour = _get(data, "model.tumor_class", path)
    tumour_name = classes[tumour] if isinstance(tumour, int) else str(tumour)
    dims = _get(data, "slide.dimensions", path)
    map_shape = _get(data, "saliency.map_shape", path)
    return RunSlide(
        name=Path(folder).name,
        folder=Path(folder),
        slide_file=str(_get(data, "slide.file", path)),
        dimensions=(int(dims[0]), int(dims[1])),
        mpp=(float(_get(data, "slide.mpp.x", path)), float(_get(data, "slide.mpp.y", path))),
        pixel_size_um=float(_get(data, "heatmap.pixel_size_um", path)),
        shape=tuple(int(v) for v in _get(data, "heatmap.shape", path)),  # type: ignore[arg-type]
        tumour_class=tumour_name,
        tile_size=int(_get(data, "tiling.tile_size", path)),
        stride=int(_get(data, "tiling.stride", path)),
        map_size=int(map_shape[0]),
    )


def find_run_slides(run_out: Path) -> list[RunSlide]:
    """Every finished slide folder (one holding ``run.json``) directly under ``run_out``.

    Temporary folders of an unfinished run (names starting with ``.``) are ignored.
    Sorted by folder name.

    Raises
    ------
    InputError
        ``run_out`` is not a folder or holds no finished slide.
    """
    run_out = Path(run_out)
    if not run_out.is_dir():
        raise InputError(f"{run_out}: not a folder; give the --out folder of `wsi-saliency run`")
    folders = sorted(
        p for p in run_out.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / RUN_JSON).is_file()
    )
    if not folders:
        raise InputError(
            f"{run_out}: no slide folder with a {RUN_JSON}; give the --out folder of a "
            "finished `wsi-saliency run`"
        )
    return [read_run_slide(f) for f in folders]


def failed_slides(run_out: Path) -> list[str]:
    """Names of the slides ``batch-summary.json`` records as failed (none without it).

    Such slides have no outputs, so they cannot be scored; the caller says so.
    """
    path = Path(run_out) / BATCH_SUMMARY
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        recs = data.get("slides", []) if isinstance(data, dict) else []
        return sorted(
            str(r.get("name") or r.get("input"))
            for r in recs
            if isinstance(r, dict) and r.get("status") == "failed"
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []


def read_heatmaps(
    slide: RunSlide,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The full-resolution tumour probability and saliency of a slide (NaN = no tile).

    Raises
    ------
    InputError
        Missing zarr, missing channel, or a scale or shape that disagrees with
        ``run.json``.
    """
    import zarr

    path = slide.folder / HEATMAPS
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs: dict[str, Any] = dict(root.attrs)
        ms: dict[str, Any] = attrs["multiscales"][0]
        ds0 = ms["datasets"][0]
        scale = next(t["scale"] for t in ds0["coordinateTransformations"] if t["type"] == "scale")
        labels: list[str] = [str(c["label"]) for c in attrs["omero"]["channels"]]
        arr: Any = root[str(ds0["path"])]
    except (OSError, KeyError, IndexError, StopIteration, ValueError, TypeError) as exc:
        raise InputError(f"{path}: cannot read the heatmaps ({type(exc).__name__}: {exc})") from None
    if not math.isclose(float(scale[-1]), slide.pixel_size_um, rel_tol=1e-6):
        raise InputError(
            f"{path}: NGFF scale {scale[-1]} um/px differs from run.json's heatmap pixel size "
            f"{slide.pixel_size_um}; the folder mixes two runs (re-run the slide)"
        )
    want = f"probability_{slide.tumour_class}"
    for lab in (want, "saliency"):
        if lab not in labels:
            raise InputError(f"{path}: no channel {lab!r} (channels: {', '.join(labels)})")
    if tuple(arr.shape[1:]) != slide.shape:
        raise InputError(
            f"{path}: heatmap shape {tuple(arr.shape[1:])} differs from run.json's {slide.shape}"
        )
    prob = np.asarray(arr[labels.index(want)], dtype=np.float32)
    sal = np.asarray(arr[labels.index("saliency")], dtype=np.float32)
    return prob, sal


@dataclass(frozen=True)
class TileTable:
    """The columns of ``tiles.csv`` that scoring uses.

    Parameters
    ----------
    rows, cols
        Grid position of each tile.
    probability
        Tumour probability of each tile.
    tumour_predicted
        Whether the tile's predicted class is the tumour class.
    """

    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    probability: npt.NDArray[np.float64]
    tumour_predicted: npt.NDArray[np.bool_]


def read_tile_table(slide: RunSlide) -> TileTable:
    """Read ``tiles.csv`` of a slide.

    Raises
    ------
    InputError
        Missing file or missing columns.
    """
    path = slide.folder / TILES_CSV
    col = f"prob_{slide.tumour_class}"
    rows: list[int] = []
    cols: list[int] = []
    probs: list[float] = []
    pred: list[bool] = []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            need = {"grid_row", "grid_col", col, "predicted_class"}
            missing = need - set(reader.fieldnames or [])
            if missing:
                raise InputError(f"{path}: missing columns {', '.join(sorted(missing))}")
            for rec in reader:
                rows.append(int(rec["grid_row"]))
                cols.append(int(rec["grid_col"]))
                probs.append(float(rec[col]) if rec[col] else math.nan)
                pred.append(rec["predicted_class"] == slide.tumour_class)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the tile table ({exc.strerror})") from None
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: malformed row ({exc})") from None
    return TileTable(
        rows=np.asarray(rows, dtype=np.int64),
        cols=np.asarray(cols, dtype=np.int64),
        probability=np.asarray(probs, dtype=np.float64),
        tumour_predicted=np.asarray(pred, dtype=bool),
    )
