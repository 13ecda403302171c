"""A started batch: its jobs, summary and the bookkeeping both runners share.

:func:`start_batch` (output folder, names, first summary), :func:`skip_if_complete`
(resume), :func:`record_outcome`, :func:`finish_batch` and :func:`interrupt_batch`
(summary). The runners (:mod:`wsi_saliency.batch.local`, :mod:`wsi_saliency.batch.dask`)
only add their loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_saliency.batch.discover import assign_output_names
from wsi_saliency.batch.outdir import clean_stale_temp, prepare_output_dir
from wsi_saliency.batch.resume import up_to_date
from wsi_saliency.batch.slide import SlideJob, SlideOutcome
from wsi_saliency.batch.summary import (
    BatchReporter,
    BatchSummary,
    SlideRecord,
    notify,
    utc_now,
)
from wsi_saliency.config import RunConfig, config_hash, config_to_dict, resolve_model_defaults
from wsi_saliency.inputs import model_fingerprint

__all__ = [
    "BatchState",
    "finish_batch",
    "interrupt_batch",
    "record_outcome",
    "skip_if_complete",
    "start_batch",
]

logger = logging.getLogger(__name__)


@dataclass
class BatchState:
    """A started batch: its jobs, summary and what every slide is checked against.

    Made by :func:`start_batch`; the local runner
    (:func:`~wsi_saliency.batch.local.run_local_batch`) and the Dask runner
    (:func:`~wsi_saliency.batch.dask.run_batch_on_cluster`) drive it with
    :func:`skip_if_complete`, :func:`record_outcome`, :func:`finish_batch` and
    :func:`interrupt_batch`.

    Parameters
    ----------
    config
        Effective configuration (model defaults resolved).
    expected_hash
        Its :func:`~wsi_saliency.config.config_hash` with the model fingerprint.
    weights_sha256
        The model's weights hash.
    jobs
        One job per slide, in batch order.
    summary
        The batch summary (``summary.records[i]`` belongs to ``jobs[i]``).
    reporter
        Receives progress events, or None.
    fingerprint
        :func:`~wsi_saliency.inputs.model_fingerprint` of the model.
    """

    config: RunConfig
    expected_hash: str
    weights_sha256: str
    jobs: list[SlideJob]
    summary: BatchSummary
    reporter: BatchReporter | None = None
    fingerprint: str = ""

    def tag(self, i: int) -> str:
        """Log prefix of slide ``i``: ``[i/n] name``."""
        return f"[{i + 1}/{len(self.jobs)}] {self.jobs[i].name}"

    def log_extra(self, i: int) -> dict[str, Any]:
        """Structured log fields of slide ``i``."""
        return {"slide": self.jobs[i].name, "input": str(self.jobs[i].path)}


def start_batch(
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: RunConfig,
    model: Any,
    *,
    names: Sequence[str] | None = None,
    reporter: BatchReporter | None = None,
) -> BatchState:
    """Prepare the output folder, name the slides and write the first summary.

    Parameters
    ----------
    slides, out_dir, config, model, names, reporter
        As for :func:`~wsi_saliency.batch.local.run_local_batch`.

    Returns
    -------
    BatchState

    Raises
    ------
    OutputError
        The output folder cannot be written.
    ValueError
        ``names`` are not distinct, one per slide.
    """
    out = prepare_output_dir(out_dir)
    clean_stale_temp(out)
    cfg = resolve_model_defaults(config, model.spec)
    weights = str(model.spec.weights_sha256)
    fingerprint = model_fingerprint(model.spec)
    expected = config_hash(cfg, fingerprint)
    paths = [Path(os.path.abspath(s)) for s in slides]
    slide_names = list(names) if names is not None else assign_output_names(paths)
    if len(slide_names) != len(paths) or len({n.casefold() for n in slide_names}) != len(paths):
        raise ValueError("names must be distinct, one per slide")
    from wsi_saliency.saliency.precision import precision_record  # torch: imported on use

    summary = BatchSummary(
        out_dir=out,
        records=[
            SlideRecord(input=str(p), name=n) for p, n in zip(paths, slide_names, strict=True)
        ],
        config_hash=expected,
        model={"name": getattr(model.spec, "name", None), "weights_sha256": weights},
        config=config_to_dict(cfg),
        started=utc_now(),
        precision=precision_record(cfg.inference.precision, cfg.inference.device),
    )
    summary.write()
    notify(reporter, "batch_started", summary)
    jobs = [SlideJob(path=p, name=n, out_dir=out) for p, n in zip(paths, slide_names, strict=True)]
    return BatchState(cfg, expected, weights, jobs, summary, reporter, fingerprint)


def skip_if_complete(state: BatchState, i: int, *, overwrite: bool) -> bool:
    """Skip slide ``i`` when its output folder is complete for this configuration.

    Parameters
    ----------
    state
        The batch.
    i
        Slide index.
    overwrite
        Never skip.

    Returns
    -------
    bool
        True when the slide was recorded as ``skipped`` (the caller tells the
        reporter).
    """
    if overwrite:
        return False
    record = state.summary.records[i]
    final = state.jobs[i].final
    skip, run = up_to_date(
        final,
        state.jobs[i].path,
        state.config,
        state.expected_hash,
        state.weights_sha256,
        state.fingerprint,
    )
    if skip and run is not None:
        record.status, record.output = "skipped", str(final)
        record.n_tiles = run.n_tiles
        logger.info(
            "%s: skipped (complete for this configuration)",
            state.tag(i),
            extra={**state.log_extra(i), "event": "slide_skipped"},
        )
        return True
    if run is not None:
        logger.info(
            "%s: configuration, model or slide inputs changed; redoing",
            state.tag(i),
            extra=state.log_extra(i),
        )
    return False


def record_outcome(state: BatchState, i: int, outcome: SlideOutcome) -> None:
    """Write what happened to slide ``i`` into its record, log it and tell the reporter.

    Parameters
    ----------
    state
        The batch.
    i
        Slide index.
    outcome
        From :func:`execute_slide` (or :func:`failed_outcome`).
    """
    record = state.summary.records[i]
    tag, extra = state.tag(i), state.log_extra(i)
    record.timings = dict(outcome.timings)
    if outcome.status != "done":
        record.status, record.error = "failed", outcome.error
        logger.error("%s: failed: %s", tag, record.error, extra={**extra, "event": "slide_failed"})
        notify(state.reporter, "slide_finished", i, record)
        return
    record.n_tiles = outcome.n_tiles
    record.status, record.output = "done", str(state.jobs[i].final)
    if not outcome.recorded:
        logger.warning(
            "%s: run.json does not record this configuration (config_hash %s, weights %s); "
            "a re-run will redo this slide",
            tag,
            state.expected_hash,
            state.weights_sha256,
            extra=extra,
        )
    total = record.timings.get("total", 0.0)
    logger.info(
        "%s: done in %.1f s (%s tiles)",
        tag,
        total,
        record.n_tiles,
        extra={**extra, "event": "slide_done", "seconds": total, "n_tiles": record.n_tiles},
    )
    notify(state.reporter, "slide_finished", i, record)


def interrupt_batch(state: BatchState) -> None:
    """Mark the batch interrupted, write the summary and tell the reporter.

    Parameters
    ----------
    state
        The batch.
    """
    summary = state.summary
    summary.status = "interrupted"
    summary.finished = utc_now()
    summary.write()
    logger.warning("interrupted; summary written to %s", summary.path)
    notify(state.reporter, "batch_finished", summary)


def finish_batch(state: BatchState) -> BatchSummary:
    """Mark the batch complete, write the summary, log the counts, tell the reporter.

    Parameters
    ----------
    state
        The batch.

    Returns
    -------
    BatchSummary
    """
    summary = state.summary
    summary.status = "complete"
    summary.finished = utc_now()
    summary.write()
    counts = summary.counts()
    logger.info(
        "batch finished: %d done, %d skipped, %d failed; summary %s",
        counts["done"],
        counts["skipped"],
        counts["failed"],
        summary.path,
        extra={"event": "batch_finished", "counts": counts},
    )
    notify(state.reporter, "batch_finished", summary)
    return summary

