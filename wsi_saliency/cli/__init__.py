"""Command-line interface: ``wsi-saliency COMMAND``.

The CLI is the only place that prints or configures logging. Each command lives in
its own module of this package and is registered on the group here.
"""

from __future__ import annotations

import os

import click

from wsi_saliency import __version__

# Commands are imported under other names so that ``wsi_saliency.cli.run`` (etc.) stays
# the submodule, not the click command (monkeypatching and ``import ... as`` rely on it).
from wsi_saliency.cli.demo import demo as demo_command
from wsi_saliency.cli.evaluate import evaluate as evaluate_command
from wsi_saliency.cli.layers import layers as layers_command
from wsi_saliency.cli.qupath import qupath_script as qupath_script_command
from wsi_saliency.cli.run import run as run_command
from wsi_saliency.cli.score import score as score_command
from wsi_saliency.cli.surrogate import surrogate as surrogate_command
from wsi_saliency.cli.tiles import tiles as tiles_command

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsi-saliency")
def cli() -> None:
    """Whole-slide tumour inference with smoothed hidden-layer saliency heatmaps."""


cli.add_command(tiles_command)
cli.add_command(layers_command)
cli.add_command(run_command)
cli.add_command(demo_command)
cli.add_command(score_command)
cli.add_command(surrogate_command)
cli.add_command(qupath_script_command)
cli.add_command(evaluate_command)


def main() -> None:
    """Console-script entry point.

    Reader threads decode tiles while PyTorch computes. OpenMP's default busy-waiting
    makes the two fight over the cores (a 5-10x slowdown measured on 2 cores), so the
    command line asks for passive waiting unless the user chose otherwise. It is set
    here, before any command imports torch, and not when the package is imported: a
    program importing ``wsi_saliency`` keeps its own environment.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cli()
