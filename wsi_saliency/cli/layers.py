"""`wsi-saliency layers` (placeholder until its issue lands)."""

from __future__ import annotations

import click


@click.command(name="layers")
def layers() -> None:
    """Not implemented yet."""
    raise click.ClickException("'layers' is not implemented yet")
