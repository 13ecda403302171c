"""Many slides: input discovery, resume, atomic output folders, summary, exit status.

A batch runs the per-slide function (:func:`wsi_saliency.worker.run_slide` unless
another is injected) over a list of slides with one loaded model:

* Every slide's outputs are written into ``OUT/.tmp-<name>-<pid>/<name>/`` and the
  finished folder is renamed to ``OUT/<name>`` only once the per-slide function has
  returned, so a killed run never leaves a half-written folder that looks finished.
* A slide whose ``OUT/<name>/run.json`` records the same configuration hash
  (:func:`wsi_saliency.config.config_hash`) and model weights hash is skipped; one
  whose configuration or model changed is redone; ``overwrite=True`` redoes all.
* Temporary folders left by a killed run are removed when the next batch starts.
* Any exception of one slide (unreadable file, missing MPP, no tissue, out of memory,
  model error) is recorded with a one-line reason and the batch goes on.
* ``OUT/batch-summary.json`` is rewritten atomically after every slide, so it is
  valid JSON whenever the process dies.

The local loop (:func:`run_batch`) and the Dask runner
(:func:`wsi_saliency.cluster.run_batch_on_cluster`) share everything but the loop:
:func:`start_batch` (output folder, names, first summary), :func:`skip_if_complete`
(resume), :func:`execute_slide` (temporary folder, per-slide function, commit; this is
what runs on a Dask worker), :func:`record_outcome` and :func:`finish_batch` /
:func:`interrupt_batch` (summary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gc
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from wsi_saliency.config import (
    RunConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    resolve_model_defaults,
)
from wsi_saliency.errors import InputError, OutputError
from wsi_saliency.inputs import model_fingerprint, same_inputs, slide_fingerprint, slide_stem

if TYPE_CHECKING:
    from wsi_saliency.models import LoadedModel

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LIST_EXTENSIONS",
    "SLIDE_EXTENSIONS",
    "SUMMARY_NAME",
    "BatchReporter",
    "BatchState",
    "BatchSummary",
    "SlideJob",
    "SlideOutcome",
    "SlideRecord",
    "assign_output_names",
    "clean_stale_temp",
    "completed_run",
    "discover_slides",
    "execute_slide",
    "failed_outcome",
    "finish_batch",
    "interrupt_batch",
    "prepare_output_dir",
    "record_outcome",
    "run_batch",
    "run_matches",
    "skip_if_complete",
    "slide_stem",
    "start_batch",
]

logger = logging.getLogger(__name__)

#: File extensions (lower case) recognised as slides when folders or globs are expanded.
SLIDE_EXTENSIONS: tuple[str, ...] = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
    ".dcm",
)
#: Extensions of text files that list inputs, one per line (``#`` starts a comment).
LIST_EXTENSIONS: tuple[str, ...] = (".txt", ".lst", ".list")
#: Name of the batch summary inside the output folder.
SUMMARY_NAME = "batch-summary.json"
#: Exit statuses of a batch.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
#: Owner tag ending temporary names: ``-<pid>@<host>`` (``-<pid>`` alone: this host).
_OWNER_RE = re.compile(r"-(\d+)(?:@([A-Za-z0-9_-]+))?$")
#: Temporary entries of other hosts (Dask workers on a shared filesystem) younger than
#: this are left alone: their process may still be writing.
FOREIGN_TEMP_MAX_AGE_S = 24 * 3600.0
_GLOB_CHARS = frozenset("*?[")
_MAX_ERROR_CHARS = 500

RunSlideFn = Callable[..., Any]
"""``run_slide(path, model, config, out_dir, *, progress=None) -> SlideResult``."""


# --------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------


def _is_slide_name(path: Path) -> bool:
    return path.suffix.lower() in SLIDE_EXTENSIONS


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _inside(path: Path, parents: Iterable[Path]) -> bool:
    return any(path == p or p in path.parents for p in parents)


def _is_output_folder(path: Path) -> bool:
    """A slide output folder of an earlier run (its OME-TIFF heatmaps are no slides)."""
    return path.name.lower().endswith(".ome.zarr") or (path / "run.json").is_file()


def _walk_folder(folder: Path, exclude: Sequence[Path]) -> list[Path]:
    """Slides under ``folder``: recursive, sorted, hidden entries and excluded trees skipped.

    An ``X.mrxs`` file's data folder ``X/`` is not searched (its files belong to the
    slide), nor are output folders of earlier runs (holding ``run.json``). A folder holding ``.dcm`` files is one DICOM slide, represented by its
    first ``.dcm`` file in name order.
    """
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()  # (device, inode): symlink cycles end here
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        try:
            st = os.stat(here)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in visited:
            dirnames[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        mrxs_stems = {Path(f).stem for f in filenames if f.lower().endswith(".mrxs")}
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not _is_hidden(d)
            and d not in mrxs_stems
            and not _is_output_folder(here / d)
            and not _inside(Path(os.path.abspath(here / d)), exclude)
        )
        files = sorted(f for f in filenames if not _is_hidden(f))
        dicom = [f for f in files if f.lower().endswith(".dcm")]
        if dicom:
            found.append(here / dicom[0])
        found.extend(
            here / f for f in files if _is_slide_name(Path(f)) and not f.lower().endswith(".dcm")
        )
    return found


def _read_list_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"list file {path} cannot be read ({exc}); check the path") from exc
    entries = []
    for line in lines:
        text = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if text:
            entries.append(text if os.path.isabs(text) else str(path.parent / text))
    if not entries:
        raise InputError(f"list file {path} names no slides (one path per line, # comments)")
    return entries


def _expand(item: str, exclude: Sequence[Path], *, from_list: bool) -> list[Path]:
    path = Path(item).expanduser()
    if path.is_dir():
        slides = _walk_folder(Path(os.path.abspath(path)), exclude)
        if not slides:
            raise InputError(
                f"folder {item} contains no slide files "
                f"({', '.join(SLIDE_EXTENSIONS)}); check the path"
            )
        return slides
    if path.is_file():
        if path.suffix.lower() in LIST_EXTENSIONS:
            if from_list:
                raise InputError(f"list file {item} is named inside another list file; not allowed")
            out: list[Path] = []
            for entry in _read_list_file(path):
                out.extend(_expand(entry, exclude, from_list=True))
            return out
        # A file named explicitly is a slide whatever its extension; the reader decides.
        return [Path(os.path.abspath(path))]
    if _GLOB_CHARS & set(item):
        matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
        out = []
        for match in matches:
            m = Path(match)
            if m.is_dir():
                out.extend(_walk_folder(Path(os.path.abspath(m)), exclude))
            elif _is_slide_name(m) and not _is_hidden(m.name):
                out.append(Path(os.path.abspath(m)))
        if not out:
            raise InputError(f"pattern {item!r} matches no slide files; check the pattern")
        return out
    raise InputError(f"input {item} does not exist; check the path")


def discover_slides(
    inputs: Sequence[str | os.PathLike[str]], *, exclude: Sequence[str | os.PathLike[str]] = ()
) -> list[Path]:
    """Expand batch inputs into a list of slide paths.

    Parameters
    ----------
    inputs
        Slide files (any extension), folders (searched recursively for
        :data:`SLIDE_EXTENSIONS`; an ``.mrxs`` file's data folder is skipped, a folder of
        ``.dcm`` files is one slide), glob patterns (``**`` recursive), or text files
        (:data:`LIST_EXTENSIONS`) listing any of these, one per line, ``#`` comments,
        relative paths relative to the list file.
    exclude
        Folders never searched (the batch's output folder).

    Returns
    -------
    list of Path
        Absolute paths (symlinks kept), in input order, sorted within each folder or
        pattern; a file reached twice (through a symlink or a second input) is kept once,
        under the first path it was found at. Symlink cycles are not followed.

    Raises
    ------
    InputError
        An input does not exist, a folder holds no slide, a pattern matches nothing,
        a list file names nothing, or no input was given.
    """
    if not inputs:
        raise InputError("no input given; name slide files, folders, patterns or a list file")
    excl = [Path(os.path.abspath(e)) for e in exclude]
    seen: set[str] = set()
    slides: list[Path] = []
    for item in inputs:
        for path in _expand(os.fspath(item), excl, from_list=False):
            key = os.path.normcase(os.path.realpath(path))
            if key not in seen:
                seen.add(key)
                slides.append(path)
    return slides


def assign_output_names(slides: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Distinct output-folder names for slides, deterministic and order-independent.

    A slide's name is its :func:`slide_stem`. Slides whose stems collide (compared
    case-insensitively) are all named ``<stem>__<parent folder>``; where that still
    collides, ``<stem>__<8 hex digits of the path's SHA-1>``.

    Parameters
    ----------
    slides
        Slide paths.

    Returns
    -------
    list of str
        One name per slide, in the same order.
    """
    paths = [Path(os.path.abspath(s)) for s in slides]
    stems = [slide_stem(p) for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.casefold()] = counts.get(s.casefold(), 0) + 1
    names = [
        s if counts[s.casefold()] == 1 else f"{s}__{p.parent.name or 'root'}"
        for s, p in zip(stems, paths, strict=True)
    ]
    counts2: dict[str, int] = {}
    for n in names + [s for s in stems if counts[s.casefold()] == 1]:
        counts2[n.casefold()] = counts2.get(n.casefold(), 0) + 1
    out = []
    for name, stem, p in zip(names, stems, paths, strict=True):
        if counts[stem.casefold()] > 1 and counts2[name.casefold()] > 1:
            digest = hashlib.sha1(str(p).encode("utf-8")).hexdigest()[:8]
            name = f"{stem}__{digest}"
        out.append(name)
    return out


# --------------------------------------------------------------------------------------
# Output folder
# --------------------------------------------------------------------------------------


def prepare_output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create the output folder and check that it can be written.

    Parameters
    ----------
    out_dir
        Output folder (created with its parents when missing).

    Returns
    -------
    Path
        The absolute output folder.

    Raises
    ------
    OutputError
        It exists as a file, cannot be created or cannot be written.
    """
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} is a file; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"output folder {out} cannot be created ({exc.strerror or exc}); "
            "choose another --out or fix permissions"
        ) from exc
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=f"{_TMP_PREFIX}probe-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"output folder {out} is not writable ({exc.strerror or exc}); "
            "choose another --out or fix permissions"
        ) from exc
    return out


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def owner_tag() -> str:
    """``<pid>@<host>``: ends the names of this process's temporary entries."""
    return f"{os.getpid()}@{_host()}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale_temp(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary folders and files that killed batches left in ``out_dir``.

    Entries named ``.tmp-*`` or ``.trash-*`` end in their owner ``-<pid>@<host>``. They
    are removed unless their process is still running on this host (another batch
    writing into the same folder), or they belong to another host (a Dask worker on a
    shared filesystem) and are younger than :data:`FOREIGN_TEMP_MAX_AGE_S`.

    Parameters
    ----------
    out_dir
        Batch output folder.

    Returns
    -------
    list of Path
        What was removed.
    """
    out = Path(out_dir)
    removed: list[Path] = []
    if not out.is_dir():
        return removed
    for entry in sorted(out.iterdir()):
        if not entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            continue
        name = entry.name.removesuffix(".json")
        match = _OWNER_RE.search(name)
        if match and match.group(2) not in (None, _host()):
            try:
                age = time.time() - entry.lstat().st_mtime
            except OSError:
                continue
            if age < FOREIGN_TEMP_MAX_AGE_S:
                logger.warning(
                    "leaving %s: it belongs to host %s, whose process may still be writing it",
                    entry,
                    match.group(2),
                )
                continue
        elif match and _pid_alive(int(match.group(1))):
            logger.warning(
                "leaving %s: process %s that owns it is still running", entry, match.group(1)
            )
            continue
        _remove(entry)
        removed.append(entry)
    if removed:
        logger.info("removed %d stale temporary item(s) from %s", len(removed), out)
    return removed


def completed_run(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``run.json`` of a finished slide folder, or None.

    Parameters
    ----------
    folder
        A slide's output folder.

    Returns
    -------
    dict or None
        None when the folder or its ``run.json`` is missing or unreadable, or when a
        file that ``run.json`` lists under ``outputs`` (a list of names or a mapping
        to paths) is missing.
    """
    run_json = Path(folder) / "run.json"
    try:
        data = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    outputs = data.get("outputs")
    if isinstance(outputs, dict):
        listed = list(outputs.values())
    elif isinstance(outputs, list):
        listed = outputs
    else:
        listed = []
    for rel in listed:
        if isinstance(rel, str) and not (Path(folder) / Path(rel).name).exists():
            return None
    return data


def _recorded_n_tiles(run: dict[str, Any]) -> int | None:
    for holder in (run, run.get("tiling")):
        if isinstance(holder, dict) and isinstance(holder.get("n_tiles"), int):
            return int(holder["n_tiles"])
    return None


def _recorded_hashes(run: dict[str, Any]) -> tuple[Any, Any]:
    model = run.get("model")
    weights = model.get("weights_sha256") if isinstance(model, dict) else None
    return run.get("config_hash"), weights or run.get("weights_sha256")


# --------------------------------------------------------------------------------------
# Records and summary
# --------------------------------------------------------------------------------------


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
        tmp = self.out_dir / f"{_TMP_PREFIX}{SUMMARY_NAME}-{owner_tag()}"
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or repr(exc)
    if isinstance(exc, MemoryError) and not str(exc):
        text = "out of memory"
    msg = f"{type(exc).__name__}: {text}"
    return msg if len(msg) <= _MAX_ERROR_CHARS else msg[: _MAX_ERROR_CHARS - 3] + "..."


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def _default_run_slide() -> RunSlideFn:
    from wsi_saliency.worker import run_slide

    return run_slide


def _notify(reporter: BatchReporter | None, method: str, *args: Any) -> None:
    if reporter is None:
        return
    try:
        getattr(reporter, method)(*args)
    except Exception:  # a broken progress bar must not stop the batch
        logger.debug("reporter %s failed", method, exc_info=True)


def _commit(work: Path, final: Path, name: str) -> None:
    """Move a finished slide folder into place; replace an older one.

    The older folder is moved aside first and put back if the new one cannot be moved
    in (or an interrupt lands in between), so a complete older result is never lost.
    """
    trash = final.parent / f"{_TRASH_PREFIX}{name}-{owner_tag()}"
    if not (final.exists() or final.is_symlink()):
        os.rename(work, final)
        return
    _remove(trash)
    os.rename(final, trash)
    try:
        os.rename(work, final)
    except BaseException:
        if not (final.exists() or final.is_symlink()):
            os.rename(trash, final)
        raise
    _remove(trash)


def run_matches(
    run: dict[str, Any], expected_hash: str, weights_sha256: str, fingerprint: str | None = None
) -> bool:
    """Whether a parsed ``run.json`` was made with this configuration and model weights.

    True when its model weights hash equals ``weights_sha256`` and either its
    ``config_hash`` equals ``expected_hash`` or the effective configuration it records
    under ``config`` hashes (:func:`~wsi_saliency.config.config_hash`) to it.

    Parameters
    ----------
    run
        Parsed ``run.json``.
    expected_hash
        :func:`~wsi_saliency.config.config_hash` of the batch's effective configuration.
    weights_sha256
        The batch model's weights hash.
    fingerprint
        The batch model's :func:`~wsi_saliency.inputs.model_fingerprint` (what
        ``expected_hash`` was computed with); defaults to ``weights_sha256``.

    Returns
    -------
    bool
    """
    recorded_hash, recorded_weights = _recorded_hashes(run)
    if recorded_weights != weights_sha256:
        return False
    if recorded_hash == expected_hash:
        return True
    # a differently computed hash: recompute it from the recorded configuration, but only
    # when the recorded model is this model (its fingerprint is part of the hash)
    model = run.get("model")
    recorded_fp = model.get("fingerprint") if isinstance(model, dict) else None
    if (fingerprint or weights_sha256) != (recorded_fp or recorded_weights):
        return False
    recorded_config = run.get("config")
    if not isinstance(recorded_config, dict):
        return False
    try:
        cfg = config_from_dict(recorded_config)
    except (ValueError, TypeError):
        return False
    return config_hash(cfg, fingerprint or weights_sha256) == expected_hash


def _skip_reason(
    final: Path, state: BatchState, job: SlideJob
) -> tuple[bool, dict[str, Any] | None]:
    """``(skip, run)``: whether ``final`` holds a finished run of this configuration,
    model and slide inputs (slide size, MPP sidecar and ROI contents)."""
    run = completed_run(final)
    if run is None:
        return False, None
    if not run_matches(run, state.expected_hash, state.weights_sha256, state.fingerprint):
        return False, run
    current = slide_fingerprint(
        job.path, mpp_sidecar=state.config.slide.mpp_sidecar, roi=state.config.tissue.roi
    )
    return same_inputs(run.get("inputs"), current), run


# --------------------------------------------------------------------------------------
# One slide: shared by the local loop and the Dask runner (wsi_saliency.cluster)
# --------------------------------------------------------------------------------------


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
    return SlideOutcome(status="failed", error=_one_line(exc), timings={"total": round(seconds, 3)})


def execute_slide(
    job: SlideJob,
    run_slide: RunSlideFn,
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
        with ``n_tiles`` and ``timings`` attributes.
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
    tmp_parent = job.out_dir / f"{_TMP_PREFIX}{job.name}-{owner_tag()}"
    _remove(tmp_parent)
    work = tmp_parent / job.name
    t0 = time.perf_counter()
    try:
        work.mkdir(parents=True)
        result = run_slide(job.path, model, config, work, progress=progress)
        if not (work / "run.json").is_file():
            raise OutputError(f"the per-slide function wrote no run.json into {work}")
        _commit(work, job.final, job.name)
    except KeyboardInterrupt:
        _remove(tmp_parent)
        raise
    except Exception as exc:  # noqa: BLE001 - isolate every failure of one slide
        _remove(tmp_parent)
        outcome = failed_outcome(exc, time.perf_counter() - t0)
        logger.debug("%s: traceback", job.name, exc_info=True)
        del exc
        gc.collect()
        return outcome
    _remove(tmp_parent)
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


# --------------------------------------------------------------------------------------
# The batch: shared bookkeeping of the local loop and the Dask runner
# --------------------------------------------------------------------------------------


@dataclass
class BatchState:
    """A started batch: its jobs, summary and what every slide is checked against.

    Made by :func:`start_batch`; the local loop (:func:`run_batch`) and the Dask
    runner (:func:`wsi_saliency.cluster.run_batch_on_cluster`) drive it with
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
        As for :func:`run_batch`.

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
    from wsi_saliency.saliency.precision import precision_record  # noqa: PLC0415 - torch

    summary = BatchSummary(
        out_dir=out,
        records=[
            SlideRecord(input=str(p), name=n) for p, n in zip(paths, slide_names, strict=True)
        ],
        config_hash=expected,
        model={"name": getattr(model.spec, "name", None), "weights_sha256": weights},
        config=config_to_dict(cfg),
        started=_now(),
        precision=precision_record(cfg.inference.precision, cfg.inference.device),
    )
    summary.write()
    _notify(reporter, "batch_started", summary)
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
    skip, run = _skip_reason(final, state, state.jobs[i])
    if skip and run is not None:
        record.status, record.output = "skipped", str(final)
        record.n_tiles = _recorded_n_tiles(run)
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
        _notify(state.reporter, "slide_finished", i, record)
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
    _notify(state.reporter, "slide_finished", i, record)


def interrupt_batch(state: BatchState) -> None:
    """Mark the batch interrupted, write the summary and tell the reporter.

    Parameters
    ----------
    state
        The batch.
    """
    summary = state.summary
    summary.status = "interrupted"
    summary.finished = _now()
    summary.write()
    logger.warning("interrupted; summary written to %s", summary.path)
    _notify(state.reporter, "batch_finished", summary)


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
    summary.finished = _now()
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
    _notify(state.reporter, "batch_finished", summary)
    return summary


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


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
    """Run the per-slide function over slides, with resume and failure isolation.

    With ``config.inference.scheduler`` set, the slides run as tasks on a Dask
    cluster instead (:func:`wsi_saliency.cluster.run_batch_on_cluster`; same
    outputs, resume, failure isolation and summary).

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
    if config.inference.scheduler is not None:
        from wsi_saliency.cluster import run_batch_on_cluster

        return run_batch_on_cluster(
            slides,
            out_dir,
            config,
            model,
            run_slide=run_slide,
            overwrite=overwrite,
            names=names,
            reporter=reporter,
        )
    state = start_batch(slides, out_dir, config, model, names=names, reporter=reporter)
    fn = run_slide if run_slide is not None else _default_run_slide()
    try:
        for i, job in enumerate(state.jobs):
            _run_local(state, i, job, fn, model, overwrite)
            state.summary.write()
    except KeyboardInterrupt:
        interrupt_batch(state)
        raise
    return finish_batch(state)


def _run_local(
    state: BatchState, i: int, job: SlideJob, fn: RunSlideFn, model: Any, overwrite: bool
) -> None:
    record = state.summary.records[i]
    _notify(state.reporter, "slide_started", i, record)
    if skip_if_complete(state, i, overwrite=overwrite):
        _notify(state.reporter, "slide_finished", i, record)
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
            progress=lambda d, t: _notify(state.reporter, "slide_progress", d, t),
        )
    except KeyboardInterrupt:
        record.status, record.error = "interrupted", "interrupted by the user"
        raise
    record_outcome(state, i, outcome)
