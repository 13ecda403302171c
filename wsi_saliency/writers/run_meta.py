"""``run.json``: what produced a slide's outputs (configuration, model, versions, hardware).

The caller (the per-slide worker) assembles the payload; this module turns it into
deterministic JSON (sorted keys, 2-space indent, non-finite floats as ``null``) and
provides the pieces every run records: :func:`collect_versions`,
:func:`collect_hardware` (the configuration hash is :func:`wsi_saliency.config.config_hash`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from collections.abc import Mapping
from enum import Enum
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from wsi_saliency.errors import OutputError

__all__ = [
    "FILENAME",
    "canonical_json",
    "collect_hardware",
    "collect_versions",
    "to_jsonable",
    "write_run_json",
]

#: File name downstream pipelines rely on.
FILENAME = "run.json"

# distribution name -> key in run.json
_DISTRIBUTIONS = (
    ("wsi-saliency", "wsi_saliency"),
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("numpy", "numpy"),
    ("openslide-python", "openslide_python"),
    ("openslide-bin", "openslide_bin"),
    ("tiffslide", "tiffslide"),
    ("tifffile", "tifffile"),
    ("zarr", "zarr"),
    ("dask", "dask"),
    ("shapely", "shapely"),
    ("captum", "captum"),
)


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, paths, tuples, enums and numpy values to plain JSON types.

    Non-finite floats become ``None``; mapping keys become strings; sets are sorted.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    raise TypeError(f"cannot write {type(obj).__name__} value {obj!r} to JSON")


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys (deterministic ``run.json`` content)."""
    return json.dumps(
        to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect_versions() -> dict[str, str | None]:
    """Versions of Python and the libraries that shape the outputs (None if absent).

    Includes the OpenSlide C library version when openslide-python can load it.
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist, key in _DISTRIBUTIONS:
        out[key] = _dist_version(dist)
    if out["wsi_saliency"] is None:
        from wsi_saliency import __version__

        out["wsi_saliency"] = __version__
    try:
        import openslide

        out["openslide_library"] = str(openslide.__library_version__)
    except Exception:  # noqa: BLE001 - the C library may be missing; record that as None
        out["openslide_library"] = None
    return out


def collect_hardware() -> dict[str, Any]:
    """CPU count, platform and CUDA devices (names only; no host identifiers)."""
    affinity = getattr(os, "sched_getaffinity", None)
    usable = len(affinity(0)) if affinity is not None else os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python_implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cuda_devices": [],
        "cuda_version": None,
    }
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return info
    try:
        if torch.cuda.is_available():
            info["cuda_devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
            info["cuda_version"] = torch.version.cuda
    except Exception:  # noqa: BLE001 - a broken driver must not stop the run record
        pass
    return info


def write_run_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as deterministic JSON (sorted keys, indent 2, newline at end).

    The file is written to a temporary name beside ``path`` and renamed, so a reader never
    sees half a file.

    Parameters
    ----------
    path
        Target file, normally ``<out>/run.json``.
    payload
        Anything :func:`to_jsonable` accepts (dataclasses such as ``RunConfig`` and
        ``SlideInfo`` included).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    path = Path(path)
    text = json.dumps(to_jsonable(payload), sort_keys=True, indent=2, allow_nan=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    return path
