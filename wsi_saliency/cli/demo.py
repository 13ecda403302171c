"""``wsi-saliency demo --out DIR``: the whole pipeline on a generated slide, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from wsi_saliency.batch import EXIT_INTERRUPTED, SUMMARY_NAME
from wsi_saliency.cli._logging import logging_options, setup_logging
from wsi_saliency.cli.run import UsageFailure, execute_batch

__all__ = ["DEMO_SLIDE", "demo", "demo_config"]

#: Where the demo slide is written, relative to ``--out``.
DEMO_SLIDE = "slides/demo.svs"

_OUTPUT_HELP = (
    ("overlay.png", "thumbnail with probability and saliency panels (open in any viewer)"),
    (
        "heatmaps.ome.zarr",
        "probability + saliency pyramid (napari: napari --plugin napari-ome-zarr)",
    ),
    ("probability.ome.tif", "pyramidal OME-TIFF (QuPath: drag in as an image)"),
    ("saliency.ome.tif", "pyramidal OME-TIFF of the saliency map"),
    ("tiles.geojson", "one detection per tile (QuPath: File > Import objects)"),
    ("regions.geojson", "tumour regions as annotations (QuPath: File > Import objects)"),
    ("tiles.csv", "one row per tile: position, probabilities, saliency statistics"),
    ("tissue.png", "thumbnail with the detected tissue outlined"),
    ("run.json", "configuration, model, slide facts, timings, versions"),
)


def demo_config() -> dict[str, Any]:
    """The demo's run configuration (``configs/demo.yaml`` holds the same values).

    Returns
    -------
    dict
        A YAML-style nested mapping for :func:`wsi_saliency.config.build_config`.
    """
    return {
        "model": {"path": None, "method": "gradient-x-activation", "smoothing": "backward-hook"},
        "tiling": {"overlap": None, "min_tissue": 0.25},
        "tissue": {"method": "otsu", "spacing": 8.0},
        "inference": {"device": "auto", "batch_size": 32, "workers": 2},
        "output": {"threshold": 0.5, "blend": "reliability"},
    }


@click.command(name="demo")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: the slide goes to OUT/slides/demo.svs, outputs to OUT/demo/.",
)
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps [default: auto].")
@click.option("--workers", type=int, default=None, help="Tile-reading workers [default: 2].")
@click.option("--overwrite", is_flag=True, help="Redo the outputs even when they are complete.")
@logging_options
def demo(
    out: Path,
    device: str | None,
    workers: int | None,
    overwrite: bool,
    quiet: bool,
    log_level: str | None,
    log_format: str,
) -> None:
    """Generate the planted-tumour demo slide and run the whole pipeline on it.

    The slide (6144 x 4096 px at 0.5 um/px, three tissue pieces, three planted
    tumours) is generated deterministically; the bundled demo model runs on it and
    every output is written to OUT/demo/.
    """
    from wsi_saliency.synthetic import write_demo_slide

    setup_logging(log_level, log_format, quiet=quiet)
    slide = out / DEMO_SLIDE
    if overwrite or not slide.is_file():
        try:
            slide.parent.mkdir(parents=True, exist_ok=True)
            tmp = slide.with_name(f".tmp-{slide.name}")
            write_demo_slide(tmp)
            tmp.replace(slide)
        except OSError as exc:
            raise UsageFailure(
                f"cannot write the demo slide {slide} ({exc}); choose another --out"
            ) from exc
    overrides = {"inference.device": device, "inference.workers": workers}
    try:
        summary, _ = execute_batch(
            [str(slide)],
            out,
            yaml_path=None,
            overrides=overrides,
            overwrite=overwrite,
            quiet=quiet,
            log_format=log_format,
            yaml_dict=demo_config(),
            demo=True,
        )
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    record = summary.records[0]
    if record.status == "failed":
        click.echo(f"demo failed: {record.error}", err=True)
        raise SystemExit(summary.exit_code)
    if not quiet:
        folder = Path(record.output or out / "demo")
        click.echo(f"demo slide: {slide}")
        click.echo(f"outputs ({record.status}): {folder}")
        for name, what in _OUTPUT_HELP:
            mark = " " if (folder / name).exists() else "!"
            click.echo(f" {mark} {folder / name}  -  {what}")
        click.echo(f"summary: {out / SUMMARY_NAME}")
    raise SystemExit(summary.exit_code)
