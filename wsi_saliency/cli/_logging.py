"""Logging setup and progress bars for the command line.

* ``--log-format text`` (default): ``HH:MM:SS LEVEL message`` lines on stderr.
* ``--log-format json``: one JSON object per line on stderr (``time``, ``level``,
  ``logger``, ``message`` and any structured fields such as ``slide``, ``event``),
  for pipeline log collectors.
* Progress bars (tqdm, one per batch and one per slide with tiles/s and ETA) are drawn
  only on a terminal, with the text log format and without ``--quiet``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click
from tqdm import tqdm

from wsi_saliency.batch import BatchSummary, SlideRecord

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "ProgressReporter",
    "logging_options",
    "progress_enabled",
    "setup_logging",
]

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[str, ...] = ("text", "json")
_HANDLER_TAG = "_wsi_saliency_cli"
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

F = TypeVar("F", bound=Callable[..., Any])


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line.

    Fields: ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, every
    ``extra=`` field of the call, and ``exception`` when there is one.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line for ``record``."""
        data: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _TqdmAwareHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so that log lines do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(
    level: str | None = None,
    log_format: str = "text",
    *,
    quiet: bool = False,
    stream: IO[str] | None = None,
) -> logging.Logger:
    """Configure logging for one command.

    One handler on the root logger writes every record (the package's at ``level``,
    other libraries' and Python warnings at ``warning`` and above) in the chosen
    format, so that with ``json`` every line of stderr is one JSON object.

    Parameters
    ----------
    level
        ``debug``, ``info``, ``warning`` or ``error``; default ``info``, or ``warning``
        with ``quiet``.
    log_format
        ``text`` or ``json``.
    quiet
        Less output: level ``warning`` unless ``level`` is given.
    stream
        Where to write (default ``sys.stderr``).

    Returns
    -------
    logging.Logger
        The package logger.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_TAG, False):
            root.removeHandler(h)
    handler = _TqdmAwareHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_TAG, True)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        )
    root.addHandler(handler)
    name = level or ("warning" if quiet else "info")
    pkg_level = getattr(logging, name.upper())
    root.setLevel(max(pkg_level, logging.WARNING))
    pkg = logging.getLogger("wsi_saliency")
    pkg.setLevel(pkg_level)
    pkg.propagate = True
    if pkg_level > logging.INFO:
        # Dask's ``distributed`` logs INFO lines (cluster start, worker joins) through
        # its own handler: quieten it here and, through Dask's configuration in the
        # environment, in the worker processes a local cluster starts.
        logging.getLogger("distributed").setLevel(pkg_level)
        os.environ["DASK_LOGGING__DISTRIBUTED"] = name.lower()
    logging.captureWarnings(True)
    return pkg


def progress_enabled(*, quiet: bool, log_format: str, stream: IO[str] | None = None) -> bool:
    """Whether progress bars are drawn: on a terminal, text logs, not quiet."""
    s = stream if stream is not None else sys.stderr
    try:
        tty = bool(s.isatty())
    except (AttributeError, ValueError):
        tty = False
    return tty and not quiet and log_format == "text"


class ProgressReporter:
    """Progress bars for a batch: one for slides, one for the tiles of the current slide.

    Parameters
    ----------
    enabled
        Draw nothing when False.
    stream
        Where bars are drawn (default ``sys.stderr``).
    """

    def __init__(self, *, enabled: bool, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stderr
        self._batch: tqdm[Any] | None = None
        self._slide: tqdm[Any] | None = None

    def batch_started(self, summary: BatchSummary) -> None:
        """Open the batch bar."""
        if self.enabled:
            self._batch = tqdm(
                total=len(summary.records),
                desc="slides",
                unit="slide",
                position=0,
                file=self._stream,
                dynamic_ncols=True,
            )

    def slide_started(self, index: int, record: SlideRecord) -> None:
        """Open the bar of one slide (its total is known at the first progress call)."""
        if self.enabled:
            self._close_slide()
            self._slide = tqdm(
                total=None,
                desc=record.name[:30],
                unit="tile",
                position=1,
                leave=False,
                file=self._stream,
                dynamic_ncols=True,
            )

    def slide_progress(self, done: int, total: int) -> None:
        """Advance the slide bar to ``done`` of ``total`` tiles."""
        bar = self._slide
        if bar is None:
            return
        if bar.total != total:
            bar.total = total
        if done > bar.n:
            bar.update(done - bar.n)

    def slide_finished(self, index: int, record: SlideRecord) -> None:
        """Close the slide bar and advance the batch bar."""
        self._close_slide()
        if self._batch is not None:
            self._batch.update(1)

    def batch_finished(self, summary: BatchSummary) -> None:
        """Close every bar."""
        self._close_slide()
        if self._batch is not None:
            self._batch.close()
            self._batch = None

    def _close_slide(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None


def logging_options(func: F) -> F:
    """Add ``--quiet``, ``--log-level`` and ``--log-format`` to a click command."""
    func = click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        help="Log lines as text, or one JSON object per line for log collectors.",
    )(func)
    func = click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default=None,
        help="Log level [default: info, warning with --quiet].",
    )(func)
    func = click.option(
        "--quiet",
        "-q",
        is_flag=True,
        help="No progress bars and no summary on stdout; warnings and errors only.",
    )(func)
    return func
