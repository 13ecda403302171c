"""The local runner: a batch's slides one after another in this process."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wsi_saliency.batch.slide import RunSlideFn, SlideJob, execute_slide
from wsi_saliency.batch.state import (
    BatchState,
    finish_batch,
    interrupt_batch,
    record_outcome,
    skip_if_complete,
    start_batch,
)
from wsi_saliency.batch.summary import BatchReporter, BatchSummary, notify
from wsi_saliency.config import RunConfig

if TYPE_CHECKING:
    from wsi_saliency.models import LoadedModel

__all__ = ["run_local_batch"]

logger = logging.getLogger(__name__)


def run_local_batch(
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: RunConfig,
    model: LoadedModel,
    *,
    run_slide: RunSlideFn | None = None,
    overwrite: bool = False,
    names: Sequence[str] | None = None,
    reporter: BatchReporter | None = None,
) -> BatchSummary:
    """Run the per-slide function over slides, with resume and failure isolation.

    ``config.inference.scheduler`` is ignored here: :func:`wsi_saliency.batch.run_batch`
    chooses between this runner and the Dask runner.

    Parameters
    ----------
    slides
        Slide paths (see :func:`discover_slides`).
    out_dir
        Output folder; created if missing. Each slide's outputs go to
        ``out_dir/<name>`` (names from :func:`assign_output_names`).
    config
        Run configuration; values left to the model are filled first
        (:func:`~wsi_saliency.config.resolve_model_defaults`).
    model
        The model, loaded once for the whole batch.
    run_slide
        Per-slide function ``(path, model, config, out_dir, *, progress) -> result``
        with ``n_tiles`` and ``timings`` attributes; default
        :func:`wsi_saliency.worker.run_slide`.
    overwrite
        Redo slides even when their outputs are complete for this configuration.
    names
        Output-folder names (default :func:`assign_output_names`).
    reporter
        Receives progress events.

    Returns
    -------
    BatchSummary
        Also written to ``out_dir/batch-summary.json``; ``exit_code`` is 0 when every
        slide is done or skipped, 1 when any failed.

    Raises
    ------
    OutputError
        The output folder cannot be written.
    KeyboardInterrupt
        Re-raised after the current slide's temporary folder is removed and the summary
        is written with status ``interrupted``.
    """
    state = start_batch(slides, out_dir, config, model, names=names, reporter=reporter)
    try:
        for i, job in enumerate(state.jobs):
            _run_one(state, i, job, run_slide, model, overwrite)
            state.summary.write()
    except KeyboardInterrupt:
        interrupt_batch(state)
        raise
    return finish_batch(state)


def _run_one(
    state: BatchState, i: int, job: SlideJob, fn: RunSlideFn | None, model: Any, overwrite: bool
) -> None:
    record = state.summary.records[i]
    notify(state.reporter, "slide_started", i, record)
    if skip_if_complete(state, i, overwrite=overwrite):
        notify(state.reporter, "slide_finished", i, record)
        return
    logger.info(
        "%s: started %s",
        state.tag(i),
        job.path,
        extra={**state.log_extra(i), "event": "slide_started"},
    )
    try:
        outcome = execute_slide(
            job,
            fn,
            model,
            state.config,
            state.expected_hash,
            state.weights_sha256,
            progress=lambda d, t: notify(state.reporter, "slide_progress", d, t),
        )
    except KeyboardInterrupt:
        record.status, record.error = "interrupted", "interrupted by the user"
        raise
    record_outcome(state, i, outcome)
