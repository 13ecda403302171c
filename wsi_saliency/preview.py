"""The tile preview of one slide: ``tissue.png`` and ``tiles.geojson`` in an atomic folder.

:func:`tile_slide` is what ``wsi-saliency tiles`` runs per slide. It plans the slide
with :func:`wsi_saliency.plan.plan_slide` (the same tissue detection and grid as
``run``, from the same :class:`~wsi_saliency.config.RunConfig`) and writes through
:func:`wsi_saliency.batch.outdir.staged_folder`, so a failure leaves no folder behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from wsi_saliency.batch.outdir import staged_folder
from wsi_saliency.config import RunConfig
from wsi_saliency.errors import ConfigError, OutputError
from wsi_saliency.inputs import slide_stem
from wsi_saliency.plan import plan_slide
from wsi_saliency.readers import open_slide
from wsi_saliency.tiling import grid_geojson
from wsi_saliency.tissue import save_tissue_png

__all__ = ["OBJECT_TYPES", "ObjectType", "tile_slide"]

ObjectType = Literal["tile", "detection"]
#: QuPath object types of the tile features (``tiles --object-type``).
OBJECT_TYPES: tuple[ObjectType, ...] = ("tile", "detection")


def tile_slide(
    slide: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: RunConfig,
    *,
    object_type: ObjectType = "tile",
    name: str | None = None,
) -> tuple[int, Path]:
    """Write the tile preview of one slide into ``out_dir/<name>``.

    Parameters
    ----------
    slide
        The slide file.
    out_dir
        Output folder (created when missing).
    config
        Run configuration with ``tiling.tile_size`` and ``tiling.spacing`` set (the
        model's, via :func:`~wsi_saliency.config.resolve_model_defaults`); its
        ``slide``, ``tissue`` and ``tiling`` sections are used.
    object_type
        QuPath ``objectType`` of the tile features.
    name
        Output-folder name (default: the slide's stem).

    Returns
    -------
    (int, Path)
        Number of tiles and the finished folder.

    Raises
    ------
    WsiSaliencyError
        Any of the slide, spacing, tissue or output errors.
    """
    if object_type not in OBJECT_TYPES:
        raise ConfigError(f"object type {object_type!r}: use one of {', '.join(OBJECT_TYPES)}")
    slide = Path(slide)
    out = Path(out_dir)
    name = name or slide_stem(slide)
    with open_slide(
        slide,
        backend=config.slide.backend,
        mpp=config.slide.mpp,
        mpp_sidecar=config.slide.mpp_sidecar,
    ) as reader:
        plan = plan_slide(reader, config)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder ({exc.strerror})") from exc
    final = out / name
    try:
        with staged_folder(out, name) as work:
            save_tissue_png(plan.thumbnail, plan.mask, work / "tissue.png")
            with open(work / "tiles.geojson", "w", encoding="utf-8") as fh:
                json.dump(grid_geojson(plan.grid, object_type=object_type), fh)
    except OSError as exc:
        raise OutputError(
            f"{final}: cannot write outputs ({exc}); check the disk and permissions"
        ) from exc
    return len(plan.grid), final
