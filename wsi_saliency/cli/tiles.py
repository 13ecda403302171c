"""``wsi-saliency tiles``: preview tissue detection and the tile grid of slides.

For every slide it writes ``DIR/<slide-stem>/tissue.png`` (thumbnail with the tissue
contour) and ``DIR/<slide-stem>/tiles.geojson`` (tile outlines in level-0 pixels,
importable into QuPath) and prints the tile count. A slide that fails prints one line
naming the file and the fix, leaves no folder behind, and the other slides go on; the
exit status is 1 when any slide failed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from wsi_saliency.batch import assign_output_names, discover_slides
from wsi_saliency.config import build_config, resolve_model_defaults
from wsi_saliency.errors import InputError, WsiSaliencyError
from wsi_saliency.preview import OBJECT_TYPES, ObjectType, tile_slide
from wsi_saliency.readers import BACKENDS

__all__ = ["tile_slide", "tiles"]


@click.command(name="tiles")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder; each slide gets OUT/<slide-stem>/.",
)
@click.option(
    "--mpp",
    type=float,
    default=None,
    help="Level-0 spacing in um/px for every slide (overrides slide metadata).",
)
@click.option(
    "--model",
    "-m",
    "model_dir",
    default=None,
    help="Model directory whose config.json gives the tile size and spacing "
    "[default: the bundled demo model: 224 px at 0.5 um/px].",
)
@click.option(
    "--tile-size",
    type=click.IntRange(min=1),
    default=None,
    help="Tile width = height in pixels at --spacing [default: the model's].",
)
@click.option(
    "--spacing",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Tile spacing in um/px [default: the model's].",
)
@click.option(
    "--overlap",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Fraction of a tile shared with its neighbour.",
)
@click.option(
    "--min-tissue",
    type=click.FloatRange(0, 1),
    default=0.25,
    show_default=True,
    help="Smallest tissue fraction of a kept tile.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="Slide reader: OpenSlide with tiffslide fallback, or one of them.",
)
@click.option(
    "--roi",
    type=str,
    default=None,
    help="Region of interest restricting tiling: mask image (any scale) or GeoJSON "
    "(level-0 px); {stem}/{name} are replaced per slide.",
)
@click.option(
    "--tissue-method",
    type=click.Choice(["otsu", "fixed"]),
    default="otsu",
    show_default=True,
    help="Tissue detection method.",
)
@click.option(
    "--tissue-threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Saturation threshold (0..1) for --tissue-method fixed.",
)
@click.option(
    "--tissue-spacing",
    type=click.FloatRange(min=0, min_open=True),
    default=8.0,
    show_default=True,
    help="Thumbnail spacing (um/px) for tissue detection.",
)
@click.option(
    "--object-type",
    type=click.Choice(OBJECT_TYPES),
    default="tile",
    show_default=True,
    help="QuPath objectType of the tile features.",
)
def tiles(
    inputs: tuple[str, ...],
    out: Path,
    mpp: float | None,
    model_dir: str | None,
    tile_size: int | None,
    spacing: float | None,
    overlap: float,
    min_tissue: float,
    backend: str,
    roi: str | None,
    tissue_method: str,
    tissue_threshold: float | None,
    tissue_spacing: float,
    object_type: ObjectType,
) -> None:
    """Preview tissue detection and the tile grid: writes tissue.png and tiles.geojson.

    INPUT is a slide file, a folder (searched recursively), a quoted glob pattern or a
    .txt file listing paths, as for `run`. Tile size and spacing default to the model's
    (--model), so the preview matches what `run` will cut.
    """
    # tifffile logs parse warnings for broken files; the one-line errors below say it all
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    try:
        slides = discover_slides(inputs, exclude=[Path(os.path.abspath(out))])
        options = {
            "slide.mpp": mpp,
            "slide.backend": backend,
            "tissue.roi": roi,
            "tissue.method": tissue_method,
            "tissue.threshold": tissue_threshold,
            "tissue.spacing": tissue_spacing,
            "tiling.tile_size": tile_size,
            "tiling.spacing": spacing,
            "tiling.overlap": overlap,
            "tiling.min_tissue": min_tissue,
        }
        config = build_config(None, options)
        if tile_size is None or spacing is None:
            from wsi_saliency.models import demo_model_dir, read_config

            spec = read_config(Path(model_dir or demo_model_dir()) / "config.json")
            config = resolve_model_defaults(config, spec)
    except (InputError, WsiSaliencyError, OSError) as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        click.get_current_context().exit(2)
        return
    failed = 0
    for slide, name in zip(slides, assign_output_names(slides), strict=True):
        try:
            n, folder = tile_slide(slide, out, config, object_type=object_type, name=name)
        except WsiSaliencyError as exc:
            msg = " ".join(str(exc).split())
            if str(slide) not in msg and slide.name not in msg:
                msg = f"{slide}: {msg}"
            click.echo(f"error: {msg}", err=True)
            failed += 1
            continue
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the others
            msg = " ".join(str(exc).split())
            click.echo(f"error: {slide}: unexpected {type(exc).__name__}: {msg}", err=True)
            failed += 1
            continue
        click.echo(
            f"{slide}: {n} tiles ({config.tiling.tile_size} px at "
            f"{config.tiling.spacing:g} um/px) -> {folder}"
        )
    if failed:
        click.get_current_context().exit(1)
