"""One slide's plan: spacing, tissue mask and tile grid, from an open reader and a config.

:func:`plan_slide` is the single open -> tissue -> grid path of the pipeline: ``run``
(:func:`wsi_saliency.worker.run_slide`) and ``tiles``
(:func:`wsi_saliency.preview.tile_slide`) both call it with a :class:`RunConfig`, so
the preview cuts exactly the grid a run will, with the same defaults.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from wsi_saliency.config import RunConfig
from wsi_saliency.errors import ConfigError
from wsi_saliency.inputs import companion_path
from wsi_saliency.readers import SlideReader
from wsi_saliency.saliency.seams import seam_free_overlap
from wsi_saliency.tiling import check_slide_fits, make_grid
from wsi_saliency.tissue import mask_from_thumbnail, thumbnail_at_spacing
from wsi_saliency.types import Mpp, SlideInfo, TileGrid, TissueMask

__all__ = ["SlidePlan", "StageTimer", "plan_slide"]

StageTimer = Callable[[str], contextlib.AbstractContextManager[object]]
"""``timer(stage_name)``: a context manager timing one stage (``tissue``, ``grid``)."""


@dataclass(frozen=True)
class SlidePlan:
    """What will be read from a slide: its spacing, tissue and tiles.

    Parameters
    ----------
    info
        The slide's facts as the reader reports them.
    mpp
        Level-0 spacing in um/px (always known here: a slide without one fails in
        :func:`plan_slide`).
    thumbnail
        RGB thumbnail tissue was detected on (``tissue.png`` is drawn on it).
    thumbnail_downsample
        Level-0 pixels per thumbnail pixel.
    mask
        Tissue mask (ROI applied).
    grid
        Kept tiles in row-major order.
    """

    info: SlideInfo
    mpp: Mpp
    thumbnail: npt.NDArray[np.uint8]
    thumbnail_downsample: float
    mask: TissueMask
    grid: TileGrid


def plan_slide(
    reader: SlideReader,
    config: RunConfig,
    *,
    map_shape: tuple[int, int] | None = None,
    timer: StageTimer | None = None,
) -> SlidePlan:
    """Check the slide fits one tile, detect tissue and lay out the tile grid.

    Parameters
    ----------
    reader
        An open slide.
    config
        Run configuration with ``tiling.tile_size`` and ``tiling.spacing`` resolved
        (:func:`~wsi_saliency.config.resolve_model_defaults`); ``slide``, ``tissue``
        and ``tiling`` sections are used.
    map_shape
        ``(h, w)`` of one tile's heatmap (the explained layer's map). With
        ``tiling.overlap: null`` (the default) the overlap is the seam-free one for this
        map (:func:`~wsi_saliency.saliency.seams.seam_free_overlap`); without a map
        (the ``tiles`` preview has no network) a stride-16 map is assumed (ResNet's
        ``layer3``, the demo model's map: 14 x 14 for 224 px tiles).
    timer
        Times the ``tissue`` and ``grid`` stages when given.

    Returns
    -------
    SlidePlan

    Raises
    ------
    ConfigError
        Tile size or spacing not resolved.
    WsiSaliencyError
        Missing MPP, slide smaller than a tile, bad ROI, no tissue, ...
    """
    tile_size, spacing = config.tiling.tile_size, config.tiling.spacing
    if tile_size is None or spacing is None:
        raise ConfigError(
            "tiling.tile_size and tiling.spacing must be set (resolve_model_defaults) "
            "before a slide is planned"
        )
    time_stage = timer if timer is not None else (lambda _name: contextlib.nullcontext())
    info = reader.info
    # a slide smaller than one tile is that, not "no tissue": check it first
    mpp = check_slide_fits(info, tile_size=tile_size, spacing=spacing)
    tcfg = config.tissue
    with time_stage("tissue"):
        thumb, thumb_ds = thumbnail_at_spacing(reader, tcfg.spacing)
        mask = mask_from_thumbnail(
            thumb,
            downsample=thumb_ds,
            spacing=tcfg.spacing,
            mpp=mpp.x,
            method=tcfg.method,
            threshold=tcfg.threshold,
            min_object_um2=tcfg.min_object_um2,
            roi=companion_path(tcfg.roi, info.path) if tcfg.roi else None,
            slide_dimensions=info.dimensions,
            name=info.path,
        )
    overlap = config.tiling.overlap
    if overlap is None:
        shape = map_shape if map_shape is not None else (max(1, tile_size // 16),) * 2
        overlap = seam_free_overlap(tile_size, shape)
    with time_stage("grid"):
        grid = make_grid(
            info,
            mask,
            tile_size=tile_size,
            spacing=spacing,
            overlap=overlap,
            min_tissue=config.tiling.min_tissue,
        )
    return SlidePlan(
        info=info,
        mpp=mpp,
        thumbnail=thumb,
        thumbnail_downsample=thumb_ds,
        mask=mask,
        grid=grid,
    )
