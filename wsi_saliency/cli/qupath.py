"""``wsi-saliency qupath-script [OUTPUT_DIR]``: the heatmaps over the slide in QuPath."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_saliency.errors import WsiSaliencyError

__all__ = ["qupath_script"]


@click.command(name="qupath-script")
@click.argument(
    "output_dir", required=False, type=click.Path(file_okay=False, path_type=Path)
)
@click.option(
    "--opacity",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.6,
    show_default=True,
    help="Opacity of the heatmap over the slide (uncovered pixels are transparent).",
)
@click.option(
    "--max-px",
    type=click.IntRange(min=64),
    default=4096,
    show_default=True,
    help="Largest side of the overlay image (a coarser heatmap level is drawn above it).",
)
def qupath_script(output_dir: Path | None, opacity: float, max_px: int) -> None:
    """Show the heatmaps over the slide in QuPath 0.5+ and import tiles and regions.

    Without OUTPUT_DIR, prints the Groovy script. With the folder a run wrote (or one
    slide's folder in it), renders <slide>/qupath/probability.png, saliency.png and
    overlay.json for every slide and writes OUTPUT_DIR/wsi_saliency_overlay.groovy with
    the folder filled in: open the slide in QuPath, then run that script from
    Automate > Script editor (toggle the overlay with View > Show pixel classification).
    """
    from wsi_saliency.qupath import SCRIPT_NAME, find_slide_outputs, render_overlays, script_text

    if output_dir is None:
        click.echo(script_text(), nl=False)
        return
    slides = find_slide_outputs(output_dir)
    if not slides:
        raise click.UsageError(
            f"{output_dir}: no slide outputs (folders with heatmaps.ome.zarr); give the "
            "folder that `wsi-saliency run -o` wrote"
        )
    try:
        for d in slides:
            r = render_overlays(d, opacity=opacity, max_px=max_px)
            click.echo(
                f"{d.name}: {r.folder} (heatmap level {r.level}, {r.pixel_size_um:g} um/px, "
                f"level-0 region {list(r.region_level0)})"
            )
        script = output_dir / SCRIPT_NAME
        script.write_text(script_text(output_dir), encoding="utf-8")
    except (WsiSaliencyError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"QuPath script: {script}")
