"""The batch summary (``batch-summary.json``), its slide records, exit statuses and reporter."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wsi_saliency.batch.outdir import TMP_PREFIX, owner_tag

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SUMMARY_NAME",
    "BatchReporter",
    "BatchSummary",
    "SlideRecord",
    "notify",
    "utc_now",
]

logger = logging.getLogger(__name__)

#: Name of the batch summary inside the output folder.
SUMMARY_NAME = "batch-summary.json"
#: Exit statuses of a batch.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass
class SlideRecord:
    """What happened to one slide of a batch (one entry of ``batch-summary.json``).

    Parameters
    ----------
    input
        Slide path as discovered.
    name
        Output-folder name.
    output
        Output folder when the slide is done or skipped, else None.
    status
        ``pending``, ``done``, ``skipped``, ``failed`` or ``interrupted``.
    error
        One-line reason when failed.
    n_tiles
        Number of tiles processed (from ``run.json`` when skipped), when known.
    timings
        Seconds: ``total`` plus the per-stage timings of the per-slide function.
    """

    input: str
    name: str
    output: str | None = None
    status: str = "pending"
    error: str | None = None
    n_tiles: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able form written to the summary."""
        return dataclasses.asdict(self)


@dataclass
class BatchSummary:
    """The state of a batch (``batch-summary.json``).

    Parameters
    ----------
    out_dir
        Batch output folder.
    records
        One record per slide, in batch order.
    config_hash
        Hash of the effective configuration and model weights.
    model
        Model name and weights hash.
    config
        Effective configuration as :func:`~wsi_saliency.config.config_to_dict`.
    status
        ``running``, ``complete`` or ``interrupted``.
    started, finished
        ISO 8601 UTC timestamps.
    precision
        ``{"requested": ..., "used": ...}`` network precision of the batch (see
        :func:`~wsi_saliency.saliency.precision.precision_record`).
    """

    out_dir: Path
    records: list[SlideRecord]
    config_hash: str
    model: dict[str, Any]
    config: dict[str, Any]
    status: str = "running"
    started: str = ""
    finished: str | None = None
    precision: dict[str, str | None] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of slides per status."""
        out = {"done": 0, "skipped": 0, "failed": 0}
        for r in self.records:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    @property
    def exit_code(self) -> int:
        """0 when every slide is done or skipped, 1 when any failed, 130 when interrupted."""
        if self.status == "interrupted":
            return EXIT_INTERRUPTED
        return EXIT_FAILED if any(r.status == "failed" for r in self.records) else EXIT_OK

    @property
    def path(self) -> Path:
        """Where the summary is written."""
        return self.out_dir / SUMMARY_NAME

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able form of the summary."""
        return {
            "status": self.status,
            "exit_code": None if self.status == "running" else self.exit_code,
            "started": self.started,
            "finished": self.finished,
            "out_dir": str(self.out_dir),
            "counts": self.counts(),
            "config_hash": self.config_hash,
            "model": self.model,
            "config": self.config,
            "precision": self.precision,
            "slides": [r.to_dict() for r in self.records],
        }

    def write(self) -> None:
        """Write the summary atomically (temporary file, then rename)."""
        tmp = self.out_dir / f"{TMP_PREFIX}{SUMMARY_NAME}-{owner_tag()}"
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)


class BatchReporter(Protocol):
    """Receives batch events (the CLI draws progress bars with them)."""

    def batch_started(self, summary: BatchSummary) -> None:
        """Called once before the first slide."""

    def slide_started(self, index: int, record: SlideRecord) -> None:
        """Called before a slide is processed (also for slides then skipped)."""

    def slide_progress(self, done: int, total: int) -> None:
        """Tiles done out of the current slide's total."""

    def slide_finished(self, index: int, record: SlideRecord) -> None:
        """Called when a slide is done, skipped or failed."""

    def batch_finished(self, summary: BatchSummary) -> None:
        """Called once at the end (also when interrupted)."""


def utc_now() -> str:
    """Now as an ISO 8601 UTC timestamp (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")



def notify(reporter: BatchReporter | None, method: str, *args: Any) -> None:
    """Call ``reporter.<method>(*args)``; a failing reporter is logged, never raised."""
    if reporter is None:
        return
    try:
        getattr(reporter, method)(*args)
    except Exception:  # a broken progress bar must not stop the batch
        logger.debug("reporter %s failed", method, exc_info=True)

