"""``wsi-saliency run INPUT... --out DIR``: the batch job."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import click
import yaml

from wsi_saliency.batch import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    BatchSummary,
    prepare_batch,
    run_batch,
)
from wsi_saliency.cli._logging import (
    ProgressReporter,
    logging_options,
    progress_enabled,
    setup_logging,
)
from wsi_saliency.cli.options import config_options, option_overrides
from wsi_saliency.config import RunConfig, build_config, load_config
from wsi_saliency.errors import ClusterError, MissingDependencyError, WsiSaliencyError

__all__ = ["UsageFailure", "execute_batch", "parse_set_options", "run"]


class UsageFailure(click.ClickException):
    """A problem found before any work started (exit status 2)."""

    exit_code = EXIT_USAGE


def parse_set_options(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``--set section.key=value`` options; values are read as YAML scalars.

    Parameters
    ----------
    items
        Strings ``"section.key=value"``.

    Returns
    -------
    dict
        Dotted key to value.

    Raises
    ------
    UsageFailure
        An item has no ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageFailure(
                f"--set {item!r}: expected section.key=value (e.g. tiling.overlap=0.5)"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``docker stop``) like Ctrl-C so the batch cleans up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_summary(summary: BatchSummary) -> None:
    counts = summary.counts()
    n = len(summary.records)
    click.echo(
        f"{n} slide{'s' if n != 1 else ''}: {counts['done']} done, "
        f"{counts['skipped']} skipped, {counts['failed']} failed"
    )
    for r in summary.records:
        if r.status == "failed":
            click.echo(f"  failed   {r.input}: {r.error}")
        elif r.output is not None:
            click.echo(f"  {r.status:<8} {r.output}")
    click.echo(f"summary: {summary.path}")


def execute_batch(
    inputs: Sequence[str],
    out: Path,
    *,
    yaml_path: Path | None,
    overrides: Mapping[str, Any],
    overwrite: bool,
    quiet: bool,
    log_format: str,
    yaml_dict: Mapping[str, Any] | None = None,
    demo: bool = False,
) -> tuple[BatchSummary, RunConfig]:
    """Read the configuration, prepare the batch, run it; errors before work exit 2.

    The command-line shell around :func:`wsi_saliency.batch.prepare_batch` and
    :func:`wsi_saliency.batch.run_batch`: progress bars, SIGTERM as an interrupt, and
    usage errors as :class:`UsageFailure`.

    Parameters
    ----------
    inputs
        Slide files, folders, glob patterns or list files.
    out
        Output folder.
    yaml_path
        YAML config file, if any.
    overrides
        Dotted keys from the command line (``None`` = not given).
    overwrite
        Redo complete slides.
    quiet, log_format
        Control the progress bars.
    yaml_dict
        A configuration mapping used instead of reading ``yaml_path``.
    demo
        The demo runs the demo model on its own slide: no warning about it.

    Returns
    -------
    (BatchSummary, RunConfig)

    Raises
    ------
    UsageFailure
        Bad configuration, inputs, output folder or model (nothing was run).
    KeyboardInterrupt
        After the batch cleaned up and wrote its summary.
    """
    try:
        if yaml_dict is None:
            yaml_dict = load_config(yaml_path) if yaml_path is not None else {}
        config = build_config(yaml_dict, overrides, source=yaml_path)
        prepared = prepare_batch(inputs, out, config, demo=demo)
    except (WsiSaliencyError, OSError) as exc:
        raise UsageFailure(str(exc)) from exc
    reporter = ProgressReporter(enabled=progress_enabled(quiet=quiet, log_format=log_format))
    with _sigterm_as_interrupt():
        try:
            summary = run_batch(
                prepared.slides,
                prepared.out_dir,
                config,
                prepared.model,
                overwrite=overwrite,
                reporter=reporter,
            )
        except (ClusterError, MissingDependencyError) as exc:  # raised before any slide ran
            raise UsageFailure(str(exc)) from exc
    return summary, config


@click.command(name="run")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder; each slide's outputs go to OUT/<slide-stem>/.",
)
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML run configuration; command-line options override it.",
)
@config_options("run")
@click.option(
    "--set",
    "-s",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any config key, e.g. --set output.blend=hann (repeatable).",
)
@click.option("--overwrite", is_flag=True, help="Redo slides whose outputs are complete.")
@logging_options
def run(
    inputs: tuple[str, ...],
    out: Path,
    config_path: Path | None,
    sets: tuple[str, ...],
    overwrite: bool,
    quiet: bool,
    log_level: str | None,
    log_format: str,
    **options: Any,
) -> None:
    """Run tumour inference and saliency on slides and write heatmaps.

    INPUT is a slide file, a folder (searched recursively), a quoted glob pattern or a
    .txt file listing paths. Precedence: options > --config YAML > defaults. Slides
    whose outputs are complete for the same configuration and model are skipped.

    Exit status: 0 all done or skipped, 1 any slide failed, 2 usage error,
    130 interrupted.
    """
    setup_logging(log_level, log_format, quiet=quiet)
    overrides: dict[str, Any] = parse_set_options(sets)
    overrides.update(option_overrides(options))
    try:
        summary, _ = execute_batch(
            inputs,
            out,
            yaml_path=config_path,
            overrides=overrides,
            overwrite=overwrite,
            quiet=quiet,
            log_format=log_format,
        )
    except KeyboardInterrupt:
        click.echo("interrupted; temporary files removed, batch-summary.json updated", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    if not quiet:
        _print_summary(summary)
    raise SystemExit(summary.exit_code)
