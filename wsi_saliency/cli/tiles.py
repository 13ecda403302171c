"""``wsi-saliency tiles``: preview tissue detection and the tile grid of slides.

For every slide it writes ``DIR/<slide-stem>/tissue.png`` (thumbnail with the tissue
contour) and ``DIR/<slide-stem>/tiles.geojson`` (tile outlines in level-0 pixels,
importable into QuPath) and prints the tile count. A slide that fails prints one line
naming the file and the fix, leaves no folder behind, and the other slides go on; the
exit status is 1 when any slide failed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import click

from wsi_saliency.batch import assign_output_names, discover_slides
from wsi_saliency.errors import InputError, OutputError, WsiSaliencyError
from wsi_saliency.inputs import companion_path, slide_stem
from wsi_saliency.readers import BACKENDS, open_slide
from wsi_saliency.tiling import check_slide_fits, grid_geojson, make_grid
from wsi_saliency.tissue import mask_from_thumbnail, save_tissue_png, thumbnail_at_spacing

__all__ = ["tile_slide", "tiles"]


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished temp folder into place, replacing an older result atomically."""
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def tile_slide(
    slide: Path,
    out_dir: Path,
    *,
    mpp: float | None = None,
    tile_size: int = 224,
    spacing: float = 0.5,
    overlap: float = 0.0,
    min_tissue: float = 0.25,
    backend: str = "auto",
    roi: str | None = None,
    tissue_method: str = "otsu",
    tissue_threshold: float | None = None,
    tissue_spacing: float = 8.0,
    min_object_um2: float = 20000.0,
    object_type: str = "tile",
    name: str | None = None,
) -> tuple[int, Path]:
    """Tile one slide into ``out_dir/<stem>``; return the tile count and the folder.

    All outputs are written into a temporary sibling folder that is renamed into
    place only when complete, so a failure leaves nothing behind.

    Raises
    ------
    WsiSaliencyError
        Any of the slide, spacing, tissue or output errors.
    """
    name = name or slide_stem(slide)
    final = out_dir / name
    with open_slide(slide, backend=backend, mpp=mpp) as reader:
        # a slide smaller than one tile is that, not "no tissue": check it first
        check_slide_fits(reader.info, tile_size=tile_size, spacing=spacing)
        assert reader.info.mpp is not None
        thumb, ds = thumbnail_at_spacing(reader, tissue_spacing)
        mask = mask_from_thumbnail(
            thumb,
            downsample=ds,
            spacing=tissue_spacing,
            mpp=reader.info.mpp.x,
            method=tissue_method,
            threshold=tissue_threshold,
            min_object_um2=min_object_um2,
            roi=companion_path(roi, slide) if roi else None,
            slide_dimensions=reader.info.dimensions,
            name=str(slide),
        )
        grid = make_grid(
            reader.info,
            mask,
            tile_size=tile_size,
            spacing=spacing,
            overlap=overlap,
            min_tissue=min_tissue,
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from exc
    tmp = out_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp
    except OSError as exc:
        raise OutputError(
            f"{out_dir}: cannot write into the output folder ({exc.strerror})"
        ) from exc
    try:
        save_tissue_png(thumb, mask, tmp / "tissue.png")
        with open(tmp / "tiles.geojson", "w", encoding="utf-8") as fh:
            json.dump(grid_geojson(grid, object_type=object_type), fh)
        _publish(tmp, final)
    except OSError as exc:
        raise OutputError(
            f"{final}: cannot write outputs ({exc}); check the disk and permissions"
        ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return len(grid), final


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
    help="Slide reader: auto (per file, the fastest that reads the slide identically) or one.",
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
    type=click.Choice(["tile", "detection"]),
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
    object_type: str,
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
        if tile_size is None or spacing is None:
            from wsi_saliency.models import demo_model_dir, read_config

            spec = read_config(Path(model_dir or demo_model_dir()) / "config.json")
            tile_size = tile_size or spec.patch_size
            spacing = spacing or spec.spacing
    except (InputError, WsiSaliencyError, OSError) as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        click.get_current_context().exit(2)
        return
    failed = 0
    for slide, name in zip(slides, assign_output_names(slides), strict=True):
        try:
            n, folder = tile_slide(
                slide,
                out,
                mpp=mpp,
                tile_size=tile_size,
                spacing=spacing,
                overlap=overlap,
                min_tissue=min_tissue,
                backend=backend,
                roi=roi,
                tissue_method=tissue_method,
                tissue_threshold=tissue_threshold,
                tissue_spacing=tissue_spacing,
                object_type=object_type,
                name=name,
            )
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
        click.echo(f"{slide}: {n} tiles ({tile_size} px at {spacing:g} um/px) -> {folder}")
    if failed:
        click.get_current_context().exit(1)
