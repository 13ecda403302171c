"""The run record: a typed, versioned ``run.json``, written by a slide and read back by resume.

:class:`RunRecord` is what :func:`wsi_saliency.worker.run_slide` writes into a slide's
output folder and what the batch reads back (:func:`read_run_record`) to decide whether
a slide is complete for a configuration and to fill the batch summary. The sections
that resume and the summary use are typed (:class:`ModelRecord`, :class:`TilingRecord`,
the hashes, the inputs fingerprint, the configuration and the output names); the
descriptive sections (slide facts, saliency, heatmap, versions, hardware, ...) are
plain JSON mappings.

``run_record_version`` is :data:`RUN_RECORD_VERSION`; a file without it has the layout
of version 1 (written before the field existed); a file of a newer version, or one
that does not parse, is not a record (the slide is redone).
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "RUN_JSON",
    "RUN_RECORD_VERSION",
    "ModelRecord",
    "RunRecord",
    "RunRecordError",
    "TilingRecord",
    "read_run_record",
]

#: File name of the record in a slide's output folder (as
#: :data:`wsi_saliency.writers.run_meta.FILENAME`, which is not imported here: the writers
#: package pulls in zarr, dask and matplotlib, which reading a record does not need).
RUN_JSON = "run.json"
#: Version of the ``run.json`` layout written by this code.
RUN_RECORD_VERSION = 1
_VERSION_KEY = "run_record_version"


class RunRecordError(ValueError):
    """A ``run.json`` that is not a run record this code can read."""


@dataclass(frozen=True)
class ModelRecord:
    """The model a slide was run with (``run.json`` ``model``)."""

    name: str
    architecture: str
    weights_file: str
    weights_sha256: str
    fingerprint: str
    class_names: tuple[str, ...]
    tumor_class: int
    patch_size: int
    spacing_um_px: float


@dataclass(frozen=True)
class TilingRecord:
    """The tile grid a slide was cut into (``run.json`` ``tiling``)."""

    tile_size: int
    spacing_um_px: float
    overlap: float
    stride: int
    min_tissue: float
    read_level: int
    read_downsample: float
    grid_shape: tuple[int, int]
    n_tiles: int


@dataclass(frozen=True)
class RunRecord:
    """Everything ``run.json`` records about one slide's run.

    Parameters
    ----------
    wsi_saliency_version
        Package version that wrote it.
    config_hash
        :func:`~wsi_saliency.config.config_hash` of the effective configuration.
    inputs
        :func:`~wsi_saliency.inputs.slide_fingerprint` of the slide and its companions.
    config
        The effective configuration (:func:`~wsi_saliency.config.config_to_dict` form).
    model, tiling
        Typed sections.
    outputs
        Names of the files written beside ``run.json``.
    saliency, slide, tissue, heatmap, inference, timings_s, versions, hardware, device
        Descriptive sections.
    seams
        Seam ratio of the stitched saliency (:class:`~wsi_saliency.saliency.seams.SeamRatio`
        as a mapping; empty for a prediction-only run).
    nonfinite
        ``tiles_left_out`` (tiles whose model output was NaN or infinite) and
        ``geojson_measurements_omitted``.
    status
        ``"done"``.
    run_record_version
        :data:`RUN_RECORD_VERSION`.
    """

    wsi_saliency_version: str
    config_hash: str
    inputs: Mapping[str, Any]
    config: Mapping[str, Any]
    model: ModelRecord
    tiling: TilingRecord
    outputs: tuple[str, ...]
    saliency: Mapping[str, Any] = field(default_factory=dict)
    slide: Mapping[str, Any] = field(default_factory=dict)
    tissue: Mapping[str, Any] = field(default_factory=dict)
    heatmap: Mapping[str, Any] = field(default_factory=dict)
    seams: Mapping[str, Any] = field(default_factory=dict)
    nonfinite: Mapping[str, Any] = field(default_factory=dict)
    device: str = ""
    inference: Mapping[str, Any] = field(default_factory=dict)
    timings_s: Mapping[str, float] = field(default_factory=dict)
    versions: Mapping[str, Any] = field(default_factory=dict)
    hardware: Mapping[str, Any] = field(default_factory=dict)
    status: str = "done"
    run_record_version: int = RUN_RECORD_VERSION

    @property
    def n_tiles(self) -> int:
        """Tiles that went through the model."""
        return self.tiling.n_tiles

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form written to ``run.json``."""
        from wsi_saliency.writers.run_meta import to_jsonable

        out: dict[str, Any] = to_jsonable(self)
        return out

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/run.json`` atomically; return its path."""
        from wsi_saliency.writers.run_meta import FILENAME, write_run_json

        return write_run_json(Path(folder) / FILENAME, self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """Parse a ``run.json`` mapping.

        Raises
        ------
        RunRecordError
            Not a mapping, a newer version, a missing key or a value of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise RunRecordError("run.json is not a JSON object")
        version = data.get(_VERSION_KEY, 1)
        if not isinstance(version, int) or not 1 <= version <= RUN_RECORD_VERSION:
            raise RunRecordError(f"run.json version {version!r} is not one this code reads")
        return _build(cls, data, "run.json")


def _build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise RunRecordError(f"{where} is not a JSON object")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue  # has a default: optional in the file
            raise RunRecordError(f"{where} has no {f.name!r}")
        kwargs[f.name] = _value(hints[f.name], data[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def _value(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and hint in (ModelRecord, TilingRecord):
        return _build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise RunRecordError(f"{where} is not a list")
        args = typing.get_args(hint)
        item = args[0]
        return tuple(_value(item, v, where) for v in value)
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, Mapping):
            raise RunRecordError(f"{where} is not a JSON object")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RunRecordError(f"{where} is not a number")
        return float(value)
    if hint in (int, str):
        if isinstance(value, bool) or not isinstance(value, hint):
            raise RunRecordError(f"{where} is not {'an integer' if hint is int else 'a string'}")
        return value
    raise RunRecordError(f"{where}: unsupported field type {hint!r}")  # pragma: no cover


def read_run_record(folder: str | os.PathLike[str]) -> RunRecord | None:
    """The run record of a finished slide folder, or None.

    Parameters
    ----------
    folder
        A slide's output folder.

    Returns
    -------
    RunRecord or None
        None when ``run.json`` is missing, unreadable or not a record this code reads,
        or when a file it lists under ``outputs`` is missing.
    """
    path = Path(folder) / RUN_JSON
    try:
        record = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
    if any(not (Path(folder) / Path(name).name).exists() for name in record.outputs):
        return None
    return record
