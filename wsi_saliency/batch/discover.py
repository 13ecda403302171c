"""Batch inputs: expand files, folders, globs and list files into slides; name their outputs."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from wsi_saliency.errors import InputError
from wsi_saliency.inputs import slide_stem

__all__ = [
    "LIST_EXTENSIONS",
    "SLIDE_EXTENSIONS",
    "assign_output_names",
    "discover_slides",
    "slide_stem",
]

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
_GLOB_CHARS = frozenset("*?[")


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

