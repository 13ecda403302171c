"""`wsi-saliency demo` (placeholder until its issue lands)."""

from __future__ import annotations

import click


@click.command(name="demo")
def demo() -> None:
    """Not implemented yet."""
    raise click.ClickException("'demo' is not implemented yet")
