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
from typing import Any

import click

from wsi_saliency.batch import assign_output_names, discover_slides
from wsi_saliency.cli.options import config_options, option_overrides
from wsi_saliency.config import build_config, option_flags, resolve_model_defaults
from wsi_saliency.errors import InputError, WsiSaliencyError
from wsi_saliency.preview import OBJECT_TYPES, ObjectType, tile_slide

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
@config_options("tiles")
@click.option(
    "--object-type",
    type=click.Choice(OBJECT_TYPES),
    default="tile",
    show_default=True,
    help="QuPath objectType of the tile features.",
)
def tiles(inputs: tuple[str, ...], out: Path, object_type: ObjectType, **options: Any) -> None:
    """Preview tissue detection and the tile grid: writes tissue.png and tiles.geojson.

    INPUT is a slide file, a folder (searched recursively), a quoted glob pattern or a
    .txt file listing paths, as for `run`. Tile size and spacing default to the model's
    (--model), so the preview matches what `run` will cut.
    """
    # tifffile logs parse warnings for broken files; the one-line errors below say it all
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    try:
        slides = discover_slides(inputs, exclude=[Path(os.path.abspath(out))])
        config = build_config(None, option_overrides(options), flags=option_flags("tiles"))
        if config.tiling.tile_size is None or config.tiling.spacing is None:
            from wsi_saliency.models import demo_model_dir, read_config

            model_dir = config.model.path or demo_model_dir()
            config = resolve_model_defaults(config, read_config(Path(model_dir) / "config.json"))
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
