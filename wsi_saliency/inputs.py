"""What a slide's outputs depend on, besides the run configuration.

* :func:`slide_stem`: the one stem of a slide, used for its output folder and for its
  per-slide companion files (``x.ome.tif`` -> ``x``, a DICOM file -> its folder name);
* :func:`companion_path`: a per-slide file (MPP sidecar, ROI) from a name pattern with
  ``{stem}`` / ``{name}``, relative to the slide's folder;
* :func:`model_fingerprint`: everything of a model that changes outputs (weights hash,
  normalisation, classes, tumour class, input size, architecture and, for in-house code,
  the code file's bytes);
* :func:`slide_fingerprint`: the slide file's size and the contents of its MPP sidecar
  and ROI file.

The batch compares them with what ``run.json`` records before skipping a finished slide,
so editing a model's ``config.json``, fixing a sidecar or redrawing an ROI redoes the slide.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["companion_path", "model_fingerprint", "slide_fingerprint", "slide_stem"]

#: Double extensions counted as one when taking a slide's stem.
DOUBLE_SUFFIXES: tuple[str, ...] = (".ome.tiff", ".ome.tif")

#: ModelSpec fields that do not change outputs (where the model lies, its display name).
_SPEC_IGNORED: frozenset[str] = frozenset({"source", "name", "weights_file"})


def slide_stem(path: str | os.PathLike[str]) -> str:
    """Stem of a slide: the file name without its extension.

    ``.ome.tif(f)`` counts as one extension; for a DICOM file the stem is the name of its
    folder. A leading dot is replaced by ``_``.

    Parameters
    ----------
    path
        Slide path.

    Returns
    -------
    str
    """
    p = Path(path)
    if p.suffix.lower() == ".dcm":
        stem = p.parent.name or p.stem
    else:
        lower = p.name.lower()
        suffix = next((s for s in DOUBLE_SUFFIXES if lower.endswith(s)), p.suffix)
        stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    if not stem or stem.startswith("."):
        stem = "_" + stem.lstrip(".")
    return stem


def companion_path(pattern: str, slide: str | os.PathLike[str]) -> Path:
    """A per-slide file: ``pattern`` with ``{stem}`` / ``{name}`` filled in.

    Parameters
    ----------
    pattern
        E.g. ``"{stem}.mpp.json"`` or ``"/data/roi/{stem}.geojson"``.
    slide
        Slide path.

    Returns
    -------
    pathlib.Path
        Absolute patterns as they are; relative ones beside the slide.
    """
    s = Path(slide)
    p = Path(pattern.replace("{stem}", slide_stem(s)).replace("{name}", s.name)).expanduser()
    return p if p.is_absolute() else s.parent / p


def _sha256_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _spec_dict(spec: Any) -> dict[str, Any]:
    if hasattr(spec, "__dataclass_fields__"):
        fields = spec.__dataclass_fields__
        data = {k: getattr(spec, k) for k in fields if k not in _SPEC_IGNORED}
    else:
        data = {k: v for k, v in vars(spec).items() if k not in _SPEC_IGNORED}
    if not data.get("surrogate_sha256"):  # only surrogate folders: other hashes unchanged
        data.pop("surrogate_sha256", None)
    return data


def model_fingerprint(spec: Any) -> str:
    """SHA-256 of everything of a model that changes a slide's outputs.

    Parameters
    ----------
    spec
        A :class:`wsi_saliency.models.ModelSpec` (any dataclass-like object works).

    Returns
    -------
    str
        64 hex digits. Includes the weights hash, normalisation, classes, tumour class,
        sizes, architecture and its keyword arguments and, for an in-house
        ``file.py:callable`` architecture, the code file's SHA-256.
    """
    data = _spec_dict(spec)
    arch = str(data.get("architecture", ""))
    source = getattr(spec, "source", "")
    if ":" in arch and arch.split(":", 1)[0].endswith(".py") and source:
        data["architecture_code_sha256"] = _sha256_file(Path(source) / arch.split(":", 1)[0])
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def slide_fingerprint(
    path: str | os.PathLike[str], *, mpp_sidecar: str | None, roi: str | None
) -> dict[str, Any]:
    """What a slide's outputs depend on besides the configuration and the model.

    Parameters
    ----------
    path
        The slide.
    mpp_sidecar
        The sidecar name pattern (``slide.mpp_sidecar``) or None.
    roi
        The ROI name pattern (``tissue.roi``) or None.

    Returns
    -------
    dict
        ``{"size": bytes of the slide file, "mpp_sidecar_sha256": ..., "roi_sha256": ...}``
        (None where a file does not exist).
    """
    p = Path(path)
    try:
        size: int | None = p.stat().st_size
    except OSError:
        size = None
    return {
        "size": size,
        "mpp_sidecar_sha256": _sha256_file(companion_path(mpp_sidecar, p)) if mpp_sidecar else None,
        "roi_sha256": _sha256_file(companion_path(roi, p)) if roi else None,
    }


def same_inputs(recorded: Any, current: Mapping[str, Any]) -> bool:
    """Whether a ``run.json``'s recorded ``inputs`` equal the current ones."""
    return isinstance(recorded, Mapping) and dict(recorded) == dict(current)
