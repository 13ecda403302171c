"""Output folders: create and probe them, stage a folder and commit it atomically, clean up.

Every multi-file output (a slide's folder of ``run``, a slide's preview of ``tiles``) is
written into a temporary folder ``OUT/.tmp-<name>-<pid>@<host>/<name>/`` and moved to
``OUT/<name>`` by :func:`commit_folder` only when complete (:func:`staged_folder` does
both), so a killed process never leaves a half-written folder that looks finished. An
older folder is moved aside to ``OUT/.trash-<name>-<pid>@<host>`` first and put back if
the new one cannot be moved in. :func:`clean_stale_temp` removes what killed processes
left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from wsi_saliency.errors import OutputError

__all__ = [
    "FOREIGN_TEMP_MAX_AGE_S",
    "TMP_PREFIX",
    "TRASH_PREFIX",
    "clean_stale_temp",
    "commit_folder",
    "host_name",
    "owner_tag",
    "prepare_output_dir",
    "remove_path",
    "staged_folder",
]

logger = logging.getLogger(__name__)

#: Start of the names of temporary entries (removed by :func:`clean_stale_temp`).
TMP_PREFIX = ".tmp-"
#: Start of the names of older folders moved aside while a new one is committed.
TRASH_PREFIX = ".trash-"
#: Owner tag ending temporary names: ``-<pid>@<host>`` (``-<pid>`` alone: this host).
_OWNER_RE = re.compile(r"-(\d+)(?:@([A-Za-z0-9_-]+))?$")
#: Temporary entries of other hosts (Dask workers on a shared filesystem) younger than
#: this are left alone: their process may still be writing.
FOREIGN_TEMP_MAX_AGE_S = 24 * 3600.0


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
        with tempfile.NamedTemporaryFile(dir=out, prefix=f"{TMP_PREFIX}probe-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"output folder {out} is not writable ({exc.strerror or exc}); "
            "choose another --out or fix permissions"
        ) from exc
    return out


def host_name() -> str:
    """This host's name as it appears in temporary names (``[A-Za-z0-9_-]`` only)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def owner_tag() -> str:
    """``<pid>@<host>``: ends the names of this process's temporary entries."""
    return f"{os.getpid()}@{host_name()}"


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


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree; a missing one is fine."""
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
        if not entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            continue
        name = entry.name.removesuffix(".json")
        match = _OWNER_RE.search(name)
        if match and match.group(2) not in (None, host_name()):
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
        remove_path(entry)
        removed.append(entry)
    if removed:
        logger.info("removed %d stale temporary item(s) from %s", len(removed), out)
    return removed



def commit_folder(work: Path, final: Path) -> None:
    """Move a finished folder into place atomically; replace an older one.

    The older folder is moved aside to ``<parent>/.trash-<name>-<owner>`` first and put
    back if the new one cannot be moved in (or an interrupt lands in between), so a
    complete older result is never lost.

    Parameters
    ----------
    work
        The finished folder (on the same filesystem as ``final``).
    final
        Where it belongs.
    """
    trash = final.parent / f"{TRASH_PREFIX}{final.name}-{owner_tag()}"
    if not (final.exists() or final.is_symlink()):
        os.rename(work, final)
        return
    remove_path(trash)
    os.rename(final, trash)
    try:
        os.rename(work, final)
    except BaseException:
        if not (final.exists() or final.is_symlink()):
            os.rename(trash, final)
        raise
    remove_path(trash)


@contextlib.contextmanager
def staged_folder(out_dir: Path, name: str) -> Iterator[Path]:
    """An empty folder named ``name`` to write into, committed to ``out_dir/name`` on success.

    The folder is ``out_dir/.tmp-<name>-<owner>/<name>/``; when the ``with`` block ends
    without an exception it is moved into place with :func:`commit_folder`. Whatever
    happens, the temporary parent is removed afterwards, so a failure leaves nothing.

    Parameters
    ----------
    out_dir
        Existing output folder.
    name
        Name of the finished folder inside it.

    Yields
    ------
    Path
        The folder to write into.

    Raises
    ------
    OSError
        The temporary folder cannot be created or the commit fails.
    """
    tmp_parent = out_dir / f"{TMP_PREFIX}{name}-{owner_tag()}"
    remove_path(tmp_parent)
    work = tmp_parent / name
    try:
        work.mkdir(parents=True)
        yield work
        commit_folder(work, out_dir / name)
    finally:
        remove_path(tmp_parent)
