"""The heatmaps over the slide in QuPath: a Groovy script and the images it shows.

QuPath (0.5 and later) draws a ``BufferedImage`` over a level-0 pixel rectangle with a
``BufferedImageOverlay``. :func:`render_overlays` turns a slide's ``heatmaps.ome.zarr``
into the two images the script shows, coloured and semi-transparent (NaN fully
transparent), plus ``overlay.json`` naming the rectangle they cover::

    <slide>/qupath/probability.png   tumour probability, viridis, 0..1
    <slide>/qupath/saliency.png      signed saliency, RdBu_r centred on 0, [-v, v]
    <slide>/qupath/overlay.json      {"region_level0": [0, 0, w, h], ...}

Heatmap pixel ``(i, j)`` of pyramid level ``k`` covers level-0 pixels
``[j * 2**k * sx, (j + 1) * 2**k * sx)`` (likewise in y; ``sx`` = heatmap pixel size / slide
MPP), so the image covers ``[0, W_k * 2**k * sx) x [0, H_k * 2**k * sy)``: that is
``region_level0`` (rounded to whole pixels, as QuPath's ``ImageRegion`` needs).

:func:`script_text` is the Groovy script (``heatmap_overlay.groovy`` in this package),
with the output folder filled in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import matplotlib
import numpy as np
import numpy.typing as npt
import zarr
from PIL import Image

from wsi_saliency.errors import OutputError

__all__ = [
    "OVERLAY_DIR",
    "SCRIPT_NAME",
    "OverlayImages",
    "find_slide_outputs",
    "render_overlays",
    "script_text",
]

#: Folder of the rendered images inside a slide's output folder.
OVERLAY_DIR = "qupath"
#: File name of the script written beside the outputs.
SCRIPT_NAME = "wsi_saliency_overlay.groovy"
_PLACEHOLDER = "@OUTPUT_DIR@"
_HEATMAPS = "heatmaps.ome.zarr"


@dataclass(frozen=True)
class OverlayImages:
    """What :func:`render_overlays` wrote for one slide.

    Parameters
    ----------
    folder
        ``<slide>/qupath``.
    region_level0
        ``(x, y, width, height)`` in level-0 pixels that the images cover.
    level
        Heatmap pyramid level drawn.
    pixel_size_um
        Its pixel size.
    saliency_range
        ``(-v, v)`` drawn at the ends of the saliency colour map.
    """

    folder: Path
    region_level0: tuple[int, int, int, int]
    level: int
    pixel_size_um: float
    saliency_range: tuple[float, float]


def script_text(output_dir: Path | str | None = None) -> str:
    """The QuPath Groovy script, with ``output_dir`` filled in (or left to the user).

    Parameters
    ----------
    output_dir
        The pipeline's output folder (or one slide's folder); None leaves the placeholder,
        which the script reports when run.

    Returns
    -------
    str
    """
    text = resources.files("wsi_saliency.qupath").joinpath("heatmap_overlay.groovy").read_text(
        encoding="utf-8"
    )
    if output_dir is None:
        return text
    # a Groovy single-quoted string: no interpolation; escape backslashes and quotes
    literal = str(Path(output_dir).resolve()).replace("\\", "\\\\").replace("'", "\\'")
    return text.replace(_PLACEHOLDER, literal, 1)


def find_slide_outputs(output_dir: Path) -> list[Path]:
    """Slide output folders (holding ``heatmaps.ome.zarr``) in ``output_dir`` or it itself."""
    output_dir = Path(output_dir)
    if (output_dir / _HEATMAPS).is_dir():
        return [output_dir]
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if (p / _HEATMAPS).is_dir())


def _rgba(
    values: npt.NDArray[np.float32], cmap: str, vmin: float, vmax: float, opacity: float
) -> npt.NDArray[np.uint8]:
    finite = np.isfinite(values)
    norm = np.clip((np.where(finite, values, vmin) - vmin) / (vmax - vmin), 0.0, 1.0)
    rgba = np.asarray(matplotlib.colormaps[cmap](norm, bytes=True), dtype=np.uint8)
    rgba[..., 3] = np.where(finite, round(255 * opacity), 0).astype(np.uint8)
    return rgba


def _saliency_bound(slide_dir: Path, sal: npt.NDArray[np.float32]) -> float:
    """The saliency display range of ``overlay.png`` (run.json), else the 99th |s| percentile."""
    try:
        run = json.loads((slide_dir / "run.json").read_text(encoding="utf-8"))
        ds = run["saliency"]["display_scaling"]
        v = max(abs(float(ds["vmin"])), abs(float(ds["vmax"])))
        if math.isfinite(v) and v > 0:
            return v
    except (OSError, KeyError, TypeError, ValueError):
        pass
    mag = np.abs(sal[np.isfinite(sal)])
    v = float(np.percentile(mag, 99.0)) if mag.size else 0.0
    return v if math.isfinite(v) and v > 0 else 1.0


def render_overlays(
    slide_dir: Path, *, opacity: float = 0.6, max_px: int = 4096
) -> OverlayImages:
    """Render ``<slide_dir>/qupath/{probability,saliency}.png`` and ``overlay.json``.

    Parameters
    ----------
    slide_dir
        A slide's output folder (with ``heatmaps.ome.zarr``).
    opacity
        Alpha of covered pixels, ``0 < opacity <= 1`` (uncovered NaN pixels get 0).
    max_px
        Draw the finest pyramid level whose larger side is at most this.

    Returns
    -------
    OverlayImages

    Raises
    ------
    OutputError
        No readable ``heatmaps.ome.zarr``, or the images cannot be written.
    ValueError
        ``opacity`` or ``max_px`` out of range.
    """
    if not 0.0 < opacity <= 1.0:
        raise ValueError(f"opacity {opacity} must be in (0, 1]")
    if max_px < 1:
        raise ValueError(f"max_px {max_px} must be >= 1")
    slide_dir = Path(slide_dir)
    zpath = slide_dir / _HEATMAPS
    try:
        root = zarr.open_group(str(zpath), mode="r")
        attrs: dict[str, Any] = dict(root.attrs)
        meta = attrs["wsi_saliency"]
        datasets = attrs["multiscales"][0]["datasets"]
        p = float(meta["pixel_size_um"])
        mpp_x, mpp_y = (float(v) for v in meta["mpp"])
        level = 0
        for i, d in enumerate(datasets):
            level = i
            if max(int(s) for s in cast(zarr.Array, root[d["path"]]).shape[1:]) <= max_px:
                break
        arr = cast(zarr.Array, root[datasets[level]["path"]])
        prob = np.asarray(arr[0], dtype=np.float32)  # tumour probability
        sal = np.asarray(arr[1], dtype=np.float32)  # signed saliency
    except (OSError, KeyError, ValueError, IndexError, TypeError) as exc:
        raise OutputError(
            f"{zpath}: not a wsi_saliency heatmaps.ome.zarr ({exc}); run the pipeline first"
        ) from exc
    h, w = prob.shape
    f = 2.0**level
    region = (0, 0, round(w * f * p / mpp_x), round(h * f * p / mpp_y))
    v = _saliency_bound(slide_dir, sal)
    out = slide_dir / OVERLAY_DIR
    try:
        out.mkdir(exist_ok=True)
        Image.fromarray(_rgba(prob, "viridis", 0.0, 1.0, opacity), "RGBA").save(
            out / "probability.png", optimize=True
        )
        Image.fromarray(_rgba(sal, "RdBu_r", -v, v, opacity), "RGBA").save(
            out / "saliency.png", optimize=True
        )
        info = {
            "region_level0": list(region),
            "level": level,
            "pixel_size_um": p * f,
            "image_size": [w, h],
            "mpp": [mpp_x, mpp_y],
            "probability_legend": "tumour probability 0..1, viridis; NaN transparent",
            "saliency_legend": f"saliency {-v:.4g}..{v:.4g}, RdBu_r centred on 0; NaN transparent",
            "saliency_range": [-v, v],
            "opacity": opacity,
        }
        (out / "overlay.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc}") from exc
    return OverlayImages(out, region, level, p * f, (-v, v))
