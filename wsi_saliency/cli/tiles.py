"""`wsi-saliency tiles` (placeholder until its issue lands)."""

from __future__ import annotations

import click


@click.command(name="tiles")
def tiles() -> None:
    """Not implemented yet."""
    raise click.ClickException("'tiles' is not implemented yet")
