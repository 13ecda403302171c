"""``overlay.png``: slide thumbnail, tumour probability panel and saliency panel.

Three panels share level-0 pixel coordinates (every image is placed with its exact
level-0 extent, so thumbnail and heatmaps line up whatever their resolutions): the
thumbnail; the thumbnail under the tumour probability (0..1, ``viridis``); the thumbnail
under the raw saliency with a diverging colormap (``RdBu_r``) centred at 0. Each heatmap
panel has a colour bar; every panel has a scale bar in um / mm. Uncovered (NaN) pixels
are transparent.

Saliency display scaling is either fixed for a cohort (``saliency_range=(vmin, vmax)``)
or per slide: ``[-v, v]`` with ``v`` the ``percentile``-th percentile of ``|saliency|``
over the displayed heatmap. :func:`write_overlay` returns the scaling used so it can be
recorded in ``run.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import matplotlib
import matplotlib.colors as mcolors
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from wsi_saliency.errors import ConfigError, OutputError
from wsi_saliency.stitch import StitchedHeatmaps
from wsi_saliency.writers._common import downsample2

__all__ = ["FILENAME", "SaliencyScaling", "display_heatmaps", "scale_bar_length", "write_overlay"]

#: File name downstream pipelines rely on.
FILENAME = "overlay.png"


@dataclass(frozen=True)
class SaliencyScaling:
    """How saliency was mapped to colours in ``overlay.png``.

    Parameters
    ----------
    mode
        ``"percentile"`` (per slide) or ``"fixed"`` (from the configuration).
    vmin, vmax
        Saliency values drawn at the ends of the colormap (0 is always the centre).
    percentile
        Percentile of ``|saliency|`` used in ``"percentile"`` mode, else None.
    display_pixel_size_um
        Pixel size of the heatmap level drawn (and, in percentile mode, measured).
    """

    mode: str
    vmin: float
    vmax: float
    percentile: float | None
    display_pixel_size_um: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for ``run.json``."""
        return asdict(self)


def display_heatmaps(
    heatmaps: StitchedHeatmaps, max_px: int = 2048
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None, float]:
    """Probability and saliency at the finest 2x level whose larger side <= ``max_px``.

    Returns
    -------
    tuple
        ``(probability (h, w), saliency (h, w), pixel size in um)``, NaN where uncovered;
        saliency is None when the heatmaps have none (``--method none``).
    """
    chans = [0, heatmaps.channel_index("saliency")] if heatmaps.has_saliency else [0]
    x = da.from_zarr(heatmaps.heatmap)[chans]
    p = float(heatmaps.pixel_size_um)
    while max(x.shape[1:]) > max_px:
        x = downsample2(x, int(heatmaps.chunk_size))
        p *= 2.0
    with dask.config.set(scheduler="threads"):
        arr = np.asarray(x.compute(), dtype=np.float32)
    return arr[0], (arr[1] if len(chans) > 1 else None), p


def scale_bar_length(extent_um: float) -> tuple[float, str]:
    """A round scale bar length (1, 2 or 5 x 10^k um) near a fifth of ``extent_um``.

    Returns
    -------
    tuple
        ``(length in um, label)`` such as ``(500.0, "500 µm")`` or ``(2000.0, "2 mm")``.
    """
    target = max(float(extent_um) / 5.0, 1e-3)
    base = 10.0 ** math.floor(math.log10(target))
    length = max(m * base for m in (1.0, 2.0, 5.0) if m * base <= target)
    label = f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} \u00b5m"
    return length, label


def _saliency_scaling(
    sal: npt.NDArray[np.float32],
    saliency_range: tuple[float, float] | None,
    percentile: float,
    pixel_um: float,
) -> SaliencyScaling:
    if saliency_range is not None:
        vmin, vmax = (float(v) for v in saliency_range)
        if not (math.isfinite(vmin) and math.isfinite(vmax) and vmin < 0.0 < vmax):
            raise ConfigError(
                f"output.saliency_range {saliency_range} must be (vmin, vmax) with vmin < 0 < "
                "vmax (saliency is signed and the colormap is centred at 0)"
            )
        return SaliencyScaling("fixed", vmin, vmax, None, pixel_um)
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"saliency percentile {percentile} must be in (0, 100]")
    mag = np.abs(sal[np.isfinite(sal)])
    v = float(np.percentile(mag, percentile)) if mag.size else 0.0
    if not math.isfinite(v) or v <= 0.0:
        v = float(mag.max()) if mag.size and mag.max() > 0 else 1.0
    return SaliencyScaling("percentile", -v, v, float(percentile), pixel_um)


def write_overlay(
    path: Path,
    heatmaps: StitchedHeatmaps,
    thumbnail: npt.NDArray[np.uint8],
    thumbnail_downsample: float,
    *,
    saliency_range: tuple[float, float] | None = None,
    percentile: float = 99.0,
    max_display_px: int = 2048,
    title: str | None = None,
    dpi: int = 100,
) -> SaliencyScaling | None:
    """Draw ``overlay.png``: slide, probability and saliency panels (no saliency panel
    for heatmaps without saliency, ``--method none``).

    Parameters
    ----------
    path
        Target file, normally ``<out>/overlay.png``.
    heatmaps
        Output of :meth:`wsi_saliency.stitch.Stitcher.finalize`.
    thumbnail
        ``(h, w, 3)`` uint8 RGB slide thumbnail whose pixel ``(r, c)`` covers level-0
        ``[c * d, (c + 1) * d) x [r * d, (r + 1) * d)``, ``d = thumbnail_downsample``.
    thumbnail_downsample
        Level-0 pixels per thumbnail pixel.
    saliency_range
        Fixed ``(vmin, vmax)`` (``vmin < 0 < vmax``) for a cohort; None scales this slide
        to ``[-v, v]``, ``v`` = ``percentile``-th percentile of ``|saliency|``.
    percentile
        Percentile used when ``saliency_range`` is None.
    max_display_px
        Heatmaps are drawn at the finest 2x pyramid level not larger than this.
    title
        Figure title (e.g. the slide stem).
    dpi
        Resolution of the PNG.

    Returns
    -------
    SaliencyScaling or None
        The saliency scaling used (record it in ``run.json``); None without saliency.

    Raises
    ------
    ConfigError
        Bad ``saliency_range`` or ``percentile``.
    OutputError
        If the PNG cannot be written.
    """
    thumb = np.asarray(thumbnail)
    if thumb.ndim != 3 or thumb.shape[2] < 3:
        raise ValueError(f"thumbnail must be (h, w, 3) RGB, got shape {thumb.shape}")
    prob, sal, pix_um = display_heatmaps(heatmaps, max_display_px)
    scaling = (
        _saliency_scaling(sal, saliency_range, percentile, pix_um) if sal is not None else None
    )

    slide_w, slide_h = (float(v) for v in heatmaps.grid.slide_dimensions)
    mpp_x, mpp_y = float(heatmaps.grid.mpp.x), float(heatmaps.grid.mpp.y)
    d = float(thumbnail_downsample)
    thumb_extent = (0.0, thumb.shape[1] * d, thumb.shape[0] * d, 0.0)
    hx, hy = pix_um / mpp_x, pix_um / mpp_y
    heat_extent = (0.0, prob.shape[1] * hx, prob.shape[0] * hy, 0.0)

    aspect = slide_h / max(slide_w, 1.0)
    panel_w = 5.0
    fig_h = min(max(panel_w * aspect, 2.5), 12.0) + 1.0
    # an explicit Agg canvas: no pyplot, no global backend switch
    n_panels = 3 if scaling is not None else 2
    fig = Figure(figsize=(n_panels * panel_w + 1.5, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=True)
    prob_cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))

    for ax in axes:
        ax.imshow(thumb[..., :3], extent=thumb_extent, interpolation="bilinear")
    im_p = axes[1].imshow(
        np.ma.masked_invalid(prob),
        extent=heat_extent,
        cmap=prob_cmap,
        vmin=0.0,
        vmax=1.0,
        alpha=0.6,
        interpolation="nearest",
    )
    fig.colorbar(im_p, ax=axes[1], fraction=0.046, pad=0.02, label="tumour probability")
    titles = ["slide", "tumour probability"]
    if scaling is not None:
        assert sal is not None
        sal_cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
        sal_norm = mcolors.TwoSlopeNorm(vcenter=0.0, vmin=scaling.vmin, vmax=scaling.vmax)
        im_s = axes[2].imshow(
            np.ma.masked_invalid(sal),
            extent=heat_extent,
            cmap=sal_cmap,
            norm=sal_norm,
            alpha=0.75,
            interpolation="nearest",
        )
        what = (
            f"fixed [{scaling.vmin:.3g}, {scaling.vmax:.3g}]"
            if scaling.mode == "fixed"
            else f"\u00b1 p{scaling.percentile:g} |s| = {scaling.vmax:.3g}"
        )
        fig.colorbar(im_s, ax=axes[2], fraction=0.046, pad=0.02, label=f"saliency ({what})")
        titles.append("saliency (signed, 0 = white)")
    length_um, label = scale_bar_length(slide_w * mpp_x)
    for ax, name in zip(axes, titles, strict=True):
        ax.set_xlim(0.0, slide_w)
        ax.set_ylim(slide_h, 0.0)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.add_artist(
            AnchoredSizeBar(
                ax.transData,
                length_um / mpp_x,
                label,
                "lower left",
                pad=0.4,
                color="black",
                frameon=True,
                size_vertical=max(slide_h / 150.0, 1.0),
            )
        )
    if title:
        fig.suptitle(title)
    try:
        fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    return scaling
