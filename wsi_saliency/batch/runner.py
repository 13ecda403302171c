"""Choose a batch runner from the configuration and run it.

Both runners take the same arguments (:data:`BatchRunner`) and give the same outputs,
resume, failure isolation and summary: :func:`~wsi_saliency.batch.local.run_local_batch`
runs the slides one after another in this process, and
:func:`~wsi_saliency.batch.dask.run_batch_on_cluster` runs each slide as a task on a Dask
cluster. ``config.inference.scheduler`` decides (:func:`select_runner`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from wsi_saliency.batch.local import run_local_batch
from wsi_saliency.batch.slide import RunSlideFn
from wsi_saliency.batch.summary import BatchReporter, BatchSummary
from wsi_saliency.config import RunConfig

if TYPE_CHECKING:
    from wsi_saliency.models import LoadedModel

__all__ = ["BatchRunner", "run_batch", "select_runner"]


BatchRunner = Callable[..., BatchSummary]
"""A runner: called as :func:`~wsi_saliency.batch.local.run_local_batch` is (both have
its signature)."""


def select_runner(config: RunConfig) -> BatchRunner:
    """The runner ``config.inference.scheduler`` asks for.

    Parameters
    ----------
    config
        Run configuration.

    Returns
    -------
    BatchRunner
        :func:`~wsi_saliency.batch.local.run_local_batch` when no scheduler is set,
        else :func:`~wsi_saliency.batch.dask.run_batch_on_cluster` (imported only then,
        so a local batch never imports Dask's ``distributed``).
    """
    if config.inference.scheduler is None:
        return run_local_batch
    from wsi_saliency.batch.dask import run_batch_on_cluster

    return run_batch_on_cluster


def run_batch(
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
    """Run a batch with the runner the configuration chooses (:func:`select_runner`).

    Parameters
    ----------
    slides, out_dir, config, model, run_slide, overwrite, names, reporter
        As for :func:`~wsi_saliency.batch.local.run_local_batch`.

    Returns
    -------
    BatchSummary
        Also written to ``out_dir/batch-summary.json``.
    """
    runner = select_runner(config)
    return runner(
        slides,
        out_dir,
        config,
        model,
        run_slide=run_slide,
        overwrite=overwrite,
        names=names,
        reporter=reporter,
    )
