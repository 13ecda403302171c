"""Command-line interface: ``wsi-saliency COMMAND``.

The CLI is the only place that prints or configures logging. Each command lives in
its own module of this package and is registered on the group here.
"""

from __future__ import annotations

import click

from wsi_saliency import __version__
from wsi_saliency.cli.demo import demo
from wsi_saliency.cli.layers import layers
from wsi_saliency.cli.run import run
from wsi_saliency.cli.tiles import tiles

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsi-saliency")
def cli() -> None:
    """Whole-slide tumour inference with smoothed hidden-layer saliency heatmaps."""


cli.add_command(tiles)
cli.add_command(layers)
cli.add_command(run)
cli.add_command(demo)


def main() -> None:
    """Console-script entry point."""
    cli()
