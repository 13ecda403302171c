"""One slide of a batch: run the per-slide function in a staged folder, then commit it.

:func:`execute_slide` is what both runners call for a slide: the local loop
(:mod:`wsi_saliency.batch.local`) in the batch's process and the Dask runner
(:mod:`wsi_saliency.batch.dask`) inside a worker.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_saliency.batch.outdir import staged_folder
from wsi_saliency.batch.resume import completed_run, run_matches
from wsi_saliency.config import RunConfig
from wsi_saliency.errors import OutputError

__all__ = [
    "RunSlideFn",
    "SlideJob",
    "SlideOutcome",
    "default_run_slide",
    "execute_slide",
    "failed_outcome",
    "one_line",
]

logger = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 500

RunSlideFn = Callable[..., Any]
"""``run_slide(path, model, config, out_dir, *, progress=None) -> SlideResult``."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line, at most 500 characters."""
    text = " ".join(str(exc).split()) or repr(exc)
    if isinstance(exc, MemoryError) and not str(exc):
        text = "out of memory"
    msg = f"{type(exc).__name__}: {text}"
    return msg if len(msg) <= _MAX_ERROR_CHARS else msg[: _MAX_ERROR_CHARS - 3] + "..."


def default_run_slide() -> RunSlideFn:
    """The per-slide function used when none is given: :func:`wsi_saliency.worker.run_slide`."""
    from wsi_saliency.worker import run_slide

    return run_slide


@dataclass(frozen=True)
class SlideJob:
    """One slide of a batch as handed to :func:`execute_slide` (picklable).

    Parameters
    ----------
    path
        Absolute slide path.
    name
        Output-folder name (:func:`assign_output_names`).
    out_dir
        Batch output folder; the slide's outputs end up in ``out_dir / name``.
    """

    path: Path
    name: str
    out_dir: Path

    @property
    def final(self) -> Path:
        """The slide's finished output folder."""
        return self.out_dir / self.name


@dataclass(frozen=True)
class SlideOutcome:
    """What :func:`execute_slide` did with one slide (picklable; sent back by Dask workers).

    Parameters
    ----------
    status
        ``"done"`` or ``"failed"``.
    error
        One-line reason when failed.
    n_tiles
        Tiles processed, when known.
    timings
        Seconds: ``total`` plus the per-stage timings of the per-slide function.
    recorded
        Whether the committed ``run.json`` records the batch's configuration and model
        weights (a re-run skips the slide only then).
    """

    status: str
    error: str | None = None
    n_tiles: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    recorded: bool = True


def failed_outcome(exc: BaseException, seconds: float) -> SlideOutcome:
    """The outcome of a slide that raised ``exc`` after ``seconds``.

    Parameters
    ----------
    exc
        What the slide raised.
    seconds
        Time spent on it.

    Returns
    -------
    SlideOutcome
        Status ``failed`` with a one-line reason (type name and message).
    """
    return SlideOutcome(status="failed", error=one_line(exc), timings={"total": round(seconds, 3)})


def execute_slide(
    job: SlideJob,
    run_slide: RunSlideFn | None,
    model: Any,
    config: RunConfig,
    expected_hash: str,
    weights_sha256: str,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SlideOutcome:
    """Run the per-slide function on one slide in a temporary folder, then commit it.

    The outputs are written into ``OUT/.tmp-<name>-<pid>/<name>/`` and renamed to
    ``OUT/<name>`` (replacing an older folder) only when the per-slide function has
    returned and written ``run.json``. On any failure the temporary folder is removed
    and nothing else is touched. The same function runs in the batch's own process
    and inside Dask workers.

    Parameters
    ----------
    job
        The slide, its output-folder name and the batch output folder.
    run_slide
        Per-slide function ``(path, model, config, out_dir, *, progress) -> result``
        with ``n_tiles`` and ``timings`` attributes; None: :func:`default_run_slide`.
    model
        The loaded model.
    config
        Effective configuration (model defaults resolved).
    expected_hash, weights_sha256
        The batch's configuration hash and model weights hash, to check that the
        written ``run.json`` records them.
    progress
        Passed on to ``run_slide``.

    Returns
    -------
    SlideOutcome
        ``done`` or ``failed`` (every ``Exception`` of the slide is caught).

    Raises
    ------
    KeyboardInterrupt
        Re-raised after the temporary folder is removed.
    """
    fn = run_slide if run_slide is not None else default_run_slide()
    t0 = time.perf_counter()
    try:
        with staged_folder(job.out_dir, job.name) as work:
            result = fn(job.path, model, config, work, progress=progress)
            if not (work / "run.json").is_file():
                raise OutputError(f"the per-slide function wrote no run.json into {work}")
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - isolate every failure of one slide
        outcome = failed_outcome(exc, time.perf_counter() - t0)
        logger.debug("%s: traceback", job.name, exc_info=True)
        del exc
        gc.collect()
        return outcome
    total = round(time.perf_counter() - t0, 3)
    timings = getattr(result, "timings", None) or {}
    n_tiles = getattr(result, "n_tiles", None)
    run = completed_run(job.final)
    return SlideOutcome(
        status="done",
        n_tiles=int(n_tiles) if n_tiles is not None else None,
        timings={"total": total, **{str(k): float(v) for k, v in timings.items()}},
        recorded=run is not None and run_matches(run, expected_hash, weights_sha256),
    )

