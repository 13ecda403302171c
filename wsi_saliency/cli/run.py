"""`wsi-saliency run` (placeholder until its issue lands)."""

from __future__ import annotations

import click


@click.command(name="run")
def run() -> None:
    """Not implemented yet."""
    raise click.ClickException("'run' is not implemented yet")
