"""Many slides: input discovery, resume, atomic output folders, summary, exit status.

A batch runs the per-slide function (:func:`wsi_saliency.worker.run_slide` unless
another is injected) over a list of slides with one loaded model:

* Every slide's outputs are written into ``OUT/.tmp-<name>-<pid>@<host>/<name>/`` and
  the finished folder is renamed to ``OUT/<name>`` only once the per-slide function has
  returned, so a killed run never leaves a half-written folder that looks finished.
* A slide whose ``OUT/<name>/run.json`` records the same configuration hash
  (:func:`wsi_saliency.config.config_hash`) and model weights hash is skipped; one
  whose configuration or model changed is redone; ``overwrite=True`` redoes all.
* Temporary folders left by a killed run are removed when the next batch starts.
* Any exception of one slide (unreadable file, missing MPP, no tissue, out of memory,
  model error) is recorded with a one-line reason and the batch goes on.
* ``OUT/batch-summary.json`` is rewritten atomically after every slide, so it is
  valid JSON whenever the process dies.

Modules, each importing only those above it (no cycles, no private names across
modules; ``tests/test_imports.py`` checks it):

========================  ==============================================================
``discover``              inputs -> slide paths; distinct output-folder names
``outdir``                output folder, staged folder + atomic commit, stale-temp clean-up
``resume``                is ``OUT/<name>`` complete for this configuration and inputs?
``summary``               ``batch-summary.json``, slide records, exit statuses, reporter
``slide``                 one slide: per-slide function in a staged folder, then commit
``state``                 a started batch: bookkeeping shared by both runners
``local``                 runner: slides one after another in this process
``dask``                  runner: each slide a task on a Dask cluster
``runner``                :func:`run_batch`: picks the runner from the configuration
``prepare``               usage checks before any work (inputs, model, output folder)
========================  ==============================================================
"""

from __future__ import annotations

from wsi_saliency.batch.discover import (
    LIST_EXTENSIONS,
    SLIDE_EXTENSIONS,
    assign_output_names,
    discover_slides,
    slide_stem,
)
from wsi_saliency.batch.outdir import (
    FOREIGN_TEMP_MAX_AGE_S,
    clean_stale_temp,
    commit_folder,
    owner_tag,
    prepare_output_dir,
    staged_folder,
)
from wsi_saliency.batch.prepare import PreparedBatch, prepare_batch
from wsi_saliency.batch.resume import completed_run, run_matches
from wsi_saliency.batch.runner import BatchRunner, run_batch, select_runner
from wsi_saliency.batch.slide import (
    RunSlideFn,
    SlideJob,
    SlideOutcome,
    execute_slide,
    failed_outcome,
)
from wsi_saliency.batch.state import (
    BatchState,
    finish_batch,
    interrupt_batch,
    record_outcome,
    skip_if_complete,
    start_batch,
)
from wsi_saliency.batch.summary import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    SUMMARY_NAME,
    BatchReporter,
    BatchSummary,
    SlideRecord,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FOREIGN_TEMP_MAX_AGE_S",
    "LIST_EXTENSIONS",
    "SLIDE_EXTENSIONS",
    "SUMMARY_NAME",
    "BatchReporter",
    "BatchRunner",
    "BatchState",
    "BatchSummary",
    "PreparedBatch",
    "RunSlideFn",
    "SlideJob",
    "SlideOutcome",
    "SlideRecord",
    "assign_output_names",
    "clean_stale_temp",
    "commit_folder",
    "completed_run",
    "discover_slides",
    "execute_slide",
    "failed_outcome",
    "finish_batch",
    "interrupt_batch",
    "owner_tag",
    "prepare_batch",
    "prepare_output_dir",
    "record_outcome",
    "run_batch",
    "run_matches",
    "select_runner",
    "skip_if_complete",
    "slide_stem",
    "staged_folder",
    "start_batch",
]
