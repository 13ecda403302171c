"""Run configuration: frozen, self-validating dataclasses; YAML + command-line merge.

Precedence: command line > YAML config (``--config``) > model config.json (tile size
and spacing) > the defaults written here.

Every choice is defined once, in the module that owns it, as a ``Literal`` type
(:data:`~wsi_saliency.readers.Backend`, :data:`~wsi_saliency.tissue.TissueMethod`,
:data:`~wsi_saliency.saliency.choices.Method`,
:data:`~wsi_saliency.saliency.choices.Smoothing`, :data:`~wsi_saliency.stitch.Blend`);
the fields below are annotated with it, and validation, error messages and the
command line's ``click.Choice`` all read the allowed values from that annotation.

Every section validates itself in ``__post_init__``, so a configuration built in
Python is checked exactly like one read from YAML:
``RunConfig(tiling=TilingConfig(overlap=5))`` raises :class:`ConfigError`.

How to add a configuration key (and, optionally, a command-line option)
----------------------------------------------------------------------
1. Add the field, with its type and default, to its section dataclass below, and
   describe it in the class docstring. A choice is a ``Literal`` defined in the
   module that uses it (``Name = Literal["a", "b"]``; ``NAMES = get_args(Name)``),
   imported here and used as the field's annotation: nothing else is needed for it.
2. If the value has a range or form, add one rule to :data:`_RULES` (key -> function
   returning what is wrong, or None).
3. If it must not change ``config_hash`` (speed or location only), add the key to
   :data:`HASH_EXCLUDED_KEYS`.
4. For a command-line option, add one :class:`Option` row to :data:`OPTIONS` (key,
   flag, help, the commands that get it). The option's type, choices, parsing and the
   name used in error messages all follow from the field; ``wsi_saliency.cli.options``
   generates the ``click`` options from this table. Every key is also settable with
   ``--set section.key=value`` and in the YAML file without an option.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, get_args

import yaml

from wsi_saliency.errors import ConfigError, WsiSaliencyWarning
from wsi_saliency.prefetch import DECODES, Decode, Workers
from wsi_saliency.readers import BACKENDS, Backend
from wsi_saliency.saliency.choices import (
    PRECISIONS,
    RUN_METHODS,
    SMOOTHING_MODES,
    Precision,
    RunMethod,
    Smoothing,
)
from wsi_saliency.stitch import BLENDS, Blend
from wsi_saliency.tissue import TISSUE_METHODS, TissueMethod

__all__ = [
    "BACKENDS",
    "BLENDS",
    "DECODES",
    "HASH_EXCLUDED_KEYS",
    "GEOJSON_COMPRESSIONS",
    "METHODS",
    "OPTIONS",
    "PRECISIONS",
    "SMOOTHINGS",
    "TISSUE_METHODS",
    "ConfigError",
    "ModelDefaults",
    "Option",
    "option_flags",
    "resolve_model_defaults",
    "InferenceConfig",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "SlideConfig",
    "TilingConfig",
    "TissueConfig",
    "build_config",
    "config_from_dict",
    "config_hash",
    "config_keys",
    "config_to_dict",
    "load_config",
    "parse_scheduler",
    "validate_device",
]

#: ``model.method`` values: the saliency methods and ``"none"`` (prediction only); the
#: same tuple as :data:`wsi_saliency.saliency.choices.RUN_METHODS`.
METHODS = RUN_METHODS
#: GeoJSON compression (``output.geojson_compression``): QuPath reads ``.geojson.gz``.
#: Defined here because the writers take their settings from :class:`OutputConfig`.
GeojsonCompression = Literal["none", "gzip"]
GEOJSON_COMPRESSIONS: tuple[GeojsonCompression, ...] = get_args(GeojsonCompression)
#: Smoothing of the strided convolutions (``model.smoothing``); the same tuple as
#: :data:`wsi_saliency.saliency.choices.SMOOTHING_MODES`.
SMOOTHINGS = SMOOTHING_MODES
#: Keys that do not change a slide's outputs and are left out of :func:`config_hash`:
#: the model directory's location (its weights are hashed instead) and how fast
#: tiles are fed (batch size, reader workers) and where slides run (the Dask scheduler).
HASH_EXCLUDED_KEYS: tuple[str, ...] = (
    "model.path",
    "model.trust_code",
    "inference.batch_size",
    "inference.workers",
    "inference.decode",
    "inference.scheduler",
)


class _Section:
    """A configuration section: checks every value when it is made (``__post_init__``)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        """Coerce and check every field (raises :class:`ConfigError` naming the key)."""
        _validate_section(self, self.SECTION)


@dataclass(frozen=True)
class SlideConfig(_Section):
    """How slides are opened.

    Parameters
    ----------
    backend
        ``"auto"`` (per file: the fastest of pyvips, tiffslide, OpenSlide that reads the
        slide identically to OpenSlide), ``"openslide"``, ``"tiffslide"`` or ``"pyvips"``.
    mpp
        Level-0 spacing override in um/px for every slide (``--mpp``); wins over metadata.
    mpp_sidecar
        Name pattern of a per-slide sidecar file giving the spacing, resolved beside each
        slide; ``{stem}`` and ``{name}`` are replaced (default ``"{stem}.mpp.json"``).
    """

    SECTION: ClassVar[str] = "slide"
    backend: Backend = "auto"
    mpp: float | None = None
    mpp_sidecar: str = "{stem}.mpp.json"


@dataclass(frozen=True)
class TissueConfig(_Section):
    """Tissue detection.

    Parameters
    ----------
    method
        ``"otsu"`` (Otsu on HSV saturation) or ``"fixed"`` (``threshold``).
    threshold
        Saturation threshold in 0..1 for ``"fixed"``.
    spacing
        Micrometres per pixel of the thumbnail tissue is detected on (8-16 is sensible).
    min_object_um2
        Tissue objects and holes smaller than this area (um^2) are removed / filled.
    roi
        Optional region-of-interest mask restricting tiling: a PNG (any scale) or GeoJSON
        (level-0 polygons). ``{stem}`` / ``{name}`` are replaced per slide.
    """

    SECTION: ClassVar[str] = "tissue"
    method: TissueMethod = "otsu"
    threshold: float | None = None
    spacing: float = 8.0
    min_object_um2: float = 20000.0
    roi: str | None = None


@dataclass(frozen=True)
class TilingConfig(_Section):
    """Tile grid. ``None`` means: take it from the model's config.json.

    ``overlap`` ``None`` (the default) is the seam-free overlap of the explained layer's
    map (:func:`wsi_saliency.saliency.seams.seam_free_overlap`: 1/7 of a 224 px tile with
    a 14 x 14 map), resolved per run; ``run.json`` records it under ``tiling.overlap``.
    """

    SECTION: ClassVar[str] = "tiling"
    tile_size: int | None = None
    spacing: float | None = None
    overlap: float | None = None
    min_tissue: float = 0.25


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Model and saliency method.

    Parameters
    ----------
    path
        Model directory; ``None`` is the bundled demo model.
    layer
        Module path of the explained layer; ``None`` is the model's ``saliency_layer``.
    method
        ``gradient-x-activation`` (default: signed evidence for the target class where
        the tissue is), ``gradient`` (what would raise the target logit; with a
        near-linear head it hardly depends on the tile), ``integrated-gradients``,
        ``deeplift``, ``grad-cam``, or ``none``: prediction only (probabilities, tiles,
        GeoJSON and probability heatmaps, no saliency outputs, no backward pass).
    smoothing
        ``none``, ``backward-hook`` (default; border-aware), ``forward-hook`` or
        ``bilinear`` (the model folder's trained surrogates; ``wsi-saliency surrogate``).
    target
        Class explained (name or index); ``None`` is the model's tumour class.
    trust_code
        Allow a model directory to run its own Python code (``"architecture":
        "file.py:callable"`` or ``"package.module:callable"``). Off by default: a model
        folder from elsewhere must not be able to run code just by being loaded.
    """

    SECTION: ClassVar[str] = "model"
    path: str | None = None
    layer: str | None = None
    method: RunMethod = "gradient-x-activation"
    smoothing: Smoothing = "backward-hook"
    target: str | int | None = None
    trust_code: bool = False


@dataclass(frozen=True)
class InferenceConfig(_Section):
    """Where and how fast the model runs.

    Parameters
    ----------
    device
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    batch_size
        Tiles per model batch.
    workers
        Tile-reading threads per slide; 0 reads in the calling thread; ``auto`` (the
        default): 1 on a CPU with fewer than 8 cores, 2 from 8 cores on, cores - 1 (at
        most 8) for a GPU (:func:`wsi_saliency.prefetch.resolve_workers`). The number
        used is recorded in ``run.json`` (``inference.workers``).
    decode
        Where the slide's JPEG tiles are decoded: ``cpu`` (the slide reader), ``gpu``
        (nvJPEG, :mod:`wsi_saliency.jpeg_tiles`) or ``auto`` (the default: ``gpu`` when
        the device is CUDA, torchvision is importable, the level is a tiled YCbCr JPEG
        level and the tiles need no resampling; see
        :func:`wsi_saliency.prefetch.choose_decode`). ``gpu`` falls back to ``cpu`` per
        slide where it cannot be used; ``run.json`` records what was used and why. Not
        part of :func:`config_hash` (the decoders agree within JPEG rounding).
    precision
        ``auto`` (bf16 on CUDA and on CPUs with native bfloat16, else fp32), ``fp32``,
        ``bf16`` or ``fp16`` (CUDA only). Replaces the former ``autocast`` key, which is
        still read (``true`` -> ``auto``, ``false`` -> ``fp32``) with a warning.
    scheduler
        ``None`` runs the slides one after another in this process. A Dask scheduler
        address (``tcp://host:8786``) runs each slide as a task on that cluster;
        ``local:N`` starts a local cluster of N worker processes (see
        :mod:`wsi_saliency.batch.dask`). Not part of :func:`config_hash`.
    """

    SECTION: ClassVar[str] = "inference"
    device: str = "auto"
    batch_size: int = 32
    workers: int | Workers = "auto"
    precision: Precision = "auto"
    decode: Decode = "auto"
    scheduler: str | None = None


@dataclass(frozen=True)
class OutputConfig(_Section):
    """What is written and how it is displayed.

    Parameters
    ----------
    threshold
        Tumour probability at or above which ``regions.geojson`` draws a region.
    saliency_range
        Fixed ``(vmin, vmax)`` display range of saliency in ``overlay.png`` for a cohort;
        ``None`` scales each slide by robust percentiles (recorded in ``run.json``).
    blend
        How overlapping tiles are merged: ``"reliability"`` (the default: a cross-fade
        weighted by the border profile measured on the slide's own tiles, and the dim
        border rows of every saliency map rescaled to the interior level, see
        :mod:`wsi_saliency.border`; with the seam-free overlap it hides the tiles'
        borders), ``"hann"`` or ``"uniform"`` (plain average).
    class_names
        ``{model class: QuPath class}`` for the GeoJSON classifications; ``None`` maps the
        tumour class to QuPath's built-in ``Tumor`` and others to built-ins by name.
    geojson_compression
        ``"none"`` or ``"gzip"`` (``tiles.geojson.gz``; QuPath reads it).
    min_region_um2
        Smallest tumour region (um^2) written to ``regions.geojson``.
    """

    SECTION: ClassVar[str] = "output"
    threshold: float = 0.5
    saliency_range: tuple[float, float] | None = None
    blend: Blend = "reliability"
    class_names: dict[str, str] | None = None
    geojson_compression: GeojsonCompression = "none"
    min_region_um2: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a slide's outputs."""

    slide: SlideConfig = field(default_factory=SlideConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# --------------------------------------------------------------------------------------
# YAML + command-line merge and validation
# --------------------------------------------------------------------------------------

_SECTIONS: tuple[tuple[str, type], ...] = (
    ("slide", SlideConfig),
    ("tissue", TissueConfig),
    ("tiling", TilingConfig),
    ("model", ModelConfig),
    ("inference", InferenceConfig),
    ("output", OutputConfig),
)
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_LOCAL_SCHEDULER_RE = re.compile(r"^local:(\d+)$")
_SCHEDULER_RE = re.compile(
    r"^((tcp|tls|ucx|ws|wss)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?/?$"
)


@dataclass(frozen=True)
class Option:
    """A command-line option that sets one configuration key.

    Parameters
    ----------
    key
        Dotted configuration key (``"tiling.overlap"``).
    flag
        Long option (``"--overlap"``).
    help
        Help text (say the default when it is not the field's).
    short
        Short option (``"-m"``), if any.
    commands
        The commands that have the option (``"run"``, ``"tiles"``).
    metavar
        Placeholder shown in the help.
    """

    key: str
    flag: str
    help: str
    short: str | None = None
    commands: tuple[str, ...] = ("run",)
    metavar: str | None = None


#: The one table of configuration keys with an option of their own (any other key is
#: set with ``--set key=value``, which is also how its errors name it). The option's
#: type and choices come from the field's annotation; ``wsi_saliency.cli.options``
#: turns the rows into ``click`` options.
OPTIONS: tuple[Option, ...] = (
    Option(
        "model.path",
        "--model",
        "Model directory [default: bundled demo model]; for tiles, the model whose "
        "config.json gives the tile size and spacing.",
        short="-m",
        commands=("run", "tiles"),
    ),
    Option(
        "model.trust_code",
        "--trust-model-code",
        "Let the model folder run its own Python code ('file.py:callable' or "
        "'package.module:callable' architectures). Only for model folders you trust.",
    ),
    Option("model.layer", "--layer", "Layer explained [default: the model's]."),
    Option("model.method", "--method", "Saliency method; 'none' predicts only (no saliency "
           "outputs)."),
    Option("model.smoothing", "--smoothing", "Smoothing of the strided convolutions "
           "('bilinear' needs a folder written by 'wsi-saliency surrogate')."),
    Option("model.target", "--target", "Class explained, name or index [default: tumour]."),
    Option(
        "slide.mpp",
        "--mpp",
        "Level-0 um/px for every slide (overrides slide metadata).",
        commands=("run", "tiles"),
    ),
    Option(
        "slide.mpp_sidecar",
        "--mpp-sidecar",
        "Per-slide spacing file beside each slide [default: {stem}.mpp.json].",
    ),
    Option(
        "slide.backend",
        "--backend",
        "Slide reader: auto (per file, the fastest that reads the slide identically) or "
        "one [default: auto].",
        commands=("run", "tiles"),
    ),
    Option("inference.device", "--device", "auto, cpu, cuda, cuda:N or mps [default: auto]."),
    Option(
        "inference.precision",
        "--precision",
        "Network precision: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), "
        "fp32, bf16, fp16 (CUDA only) [default: auto].",
    ),
    Option("inference.batch_size", "--batch-size", "Tiles per model batch [default: 32]."),
    Option(
        "inference.workers",
        "--workers",
        "Tile-reading threads, or auto (1 on a CPU under 8 cores, cores - 1 up to 8 for a "
        "GPU) [default: auto].",
    ),
    Option(
        "inference.decode",
        "--decode",
        "Decode JPEG tiles on the cpu, the gpu (nvJPEG), or auto (gpu on CUDA for YCbCr "
        "JPEG levels read without resampling) [default: auto].",
    ),
    Option(
        "inference.scheduler",
        "--scheduler",
        "Run slides on a Dask cluster: tcp://host:8786, or local:N worker processes "
        "(one per GPU) [default: in this process].",
        metavar="ADDRESS",
    ),
    Option(
        "tiling.tile_size",
        "--tile-size",
        "Tile px [default: the model's].",
        commands=("run", "tiles"),
    ),
    Option(
        "tiling.spacing",
        "--spacing",
        "Tile um/px [default: the model's].",
        commands=("run", "tiles"),
    ),
    Option(
        "tiling.overlap",
        "--overlap",
        "Fraction of a tile shared with its neighbour, in [0, 1) [default: seam-free, 1/7 of "
        "a 224 px tile with a 14 x 14 map].",
        commands=("run", "tiles"),
    ),
    Option(
        "tiling.min_tissue",
        "--min-tissue",
        "Smallest tissue fraction of a kept tile [default: 0.25].",
        commands=("run", "tiles"),
    ),
    Option(
        "tissue.roi",
        "--roi",
        "Region of interest restricting tiling: mask image (any scale) or GeoJSON "
        "(level-0 px); {stem}/{name} are replaced per slide.",
        commands=("tiles",),
    ),
    Option(
        "tissue.method",
        "--tissue-method",
        "Tissue detection method [default: otsu].",
        commands=("tiles",),
    ),
    Option(
        "tissue.threshold",
        "--tissue-threshold",
        "Saturation threshold (0..1) for --tissue-method fixed.",
        commands=("tiles",),
    ),
    Option(
        "tissue.spacing",
        "--tissue-spacing",
        "Thumbnail spacing (um/px) for tissue detection [default: 8].",
        commands=("tiles",),
    ),
)


def option_flags(command: str = "run") -> dict[str, str]:
    """The options of one command by configuration key (how errors name them).

    Parameters
    ----------
    command
        ``"run"`` or ``"tiles"``.

    Returns
    -------
    dict
        ``{key: flag}`` for the rows of :data:`OPTIONS` the command has.
    """
    return {o.key: o.flag for o in OPTIONS if command in o.commands}


def config_keys() -> dict[str, tuple[str, ...]]:
    """Return the valid keys of every config section.

    Returns
    -------
    dict
        ``{section: (field, ...)}`` in declaration order.
    """
    return {name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in _SECTIONS}


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML run configuration.

    Parameters
    ----------
    path
        YAML file with the sections of :class:`RunConfig` (``slide``, ``tissue``,
        ``tiling``, ``model``, ``inference``, ``output``). An empty file is an empty
        configuration.

    Returns
    -------
    dict
        The parsed mapping (not yet validated; see :func:`build_config`).

    Raises
    ------
    ConfigError
        The file is missing or unreadable, is not valid YAML, or is not a mapping.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"config file {p}: cannot be read ({exc.strerror or exc}); check the --config path"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {p}: {problem}{where}; fix the YAML syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {p}: top level must be a mapping of sections "
            f"({', '.join(config_keys())}), not {type(data).__name__}"
        )
    return data


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _label(key: str, origin: str, flags: Mapping[str, str]) -> str:
    """How a key is named in a message: the config file key or the command-line option."""
    if origin == "cli":
        return f"command line: {flags.get(key, f'--set {key}')}"
    return f"{origin}: {key}"


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """Coerce ``value`` to the type ``hint``; return ``(ok, value)``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:  # the value is checked against the choices by _check_value
        return isinstance(value, str), value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return (type(None) in args), None
        # Try the most specific member first (int before float before str).
        order: dict[Any, int] = {int: 0, float: 1, tuple: 2, str: 3}
        members = sorted(
            (a for a in args if a is not type(None)),
            key=lambda a: order.get(typing.get_origin(a) or a, 9),
        )
        for member in members:
            ok, coerced = _coerce(value, member)
            if ok:
                return True, coerced
        return False, value
    if value is None:
        return False, value
    if origin is dict:  # {str: str}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return False, value
        return True, dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, value
        out = []
        for item, item_hint in zip(value, args, strict=True):
            ok, coerced = _coerce(item, item_hint)
            if not ok:
                return False, value
            out.append(coerced)
        return True, tuple(out)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # PyYAML reads ``1e-3`` as a string (YAML 1.1)
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if hint is str:
        return isinstance(value, str), value
    return False, value  # pragma: no cover - every field type is handled above


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        if type(None) in args:
            names.append("null")
        return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    if origin is tuple:
        return f"a list of {len(args)} numbers"
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is dict:
        return "a mapping of names to names"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, str(hint)
    )


def _in_range(
    x: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> bool:
    if not math.isfinite(x):
        return False
    ok_lo = x > lo if lo_open else x >= lo
    ok_hi = x < hi if hi_open else x <= hi
    return ok_lo and ok_hi


def validate_device(device: str) -> bool:
    """Whether ``device`` names a device the pipeline accepts.

    Parameters
    ----------
    device
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns
    -------
    bool
        True when the name is valid (not whether the device is present).
    """
    return bool(_DEVICE_RE.match(device))


def parse_scheduler(address: str) -> int | None:
    """Check an ``inference.scheduler`` value and return its local worker count.

    Parameters
    ----------
    address
        ``local:N`` (N >= 1 worker processes on this machine) or a Dask scheduler
        address: ``[tcp|tls|ucx|ws|wss://]host[:port]``.

    Returns
    -------
    int or None
        N for ``local:N``; None for a scheduler address.

    Raises
    ------
    ConfigError
        Neither form.
    """
    local = _LOCAL_SCHEDULER_RE.match(address)
    if local is not None:
        n = int(local.group(1))
        if n < 1:
            raise ConfigError(f"scheduler '{address}': local:N needs N >= 1 worker processes")
        return n
    if address.startswith("local") or not _SCHEDULER_RE.match(address):
        raise ConfigError(
            f"scheduler '{address}' is not a Dask scheduler address; use tcp://host:8786 "
            "or local:N (N worker processes on this machine)"
        )
    return None


def _choice(value: str, choices: tuple[str, ...]) -> str | None:
    if value in choices:
        return None
    return f"unknown value '{value}' (choose from {', '.join(choices)}){_suggest(value, choices)}"


def _positive_um(value: float) -> str | None:
    return None if _in_range(value, 0, 1e6, lo_open=True) else f"{value} must be > 0 (um/px)"


def _fraction(value: float) -> str | None:
    return None if _in_range(value, 0, 1) else f"{value} must be in [0, 1]"


def _sidecar(value: str) -> str | None:
    if value == "" or "{" in value:
        return None
    return f"'{value}' must contain {{stem}} or {{name}} (e.g. '{{stem}}.mpp.json'), or be empty"


def _target(value: str | int) -> str | None:
    if isinstance(value, int):
        return None if value >= 0 else f"{value} must be a class index >= 0 or a class name"
    return None if value.strip() else "must be a class name or index"


def _device(value: str) -> str | None:
    if validate_device(value):
        return None
    return f"unknown device '{value}' (use auto, cpu, cuda, cuda:N or mps)"


def _scheduler(value: str) -> str | None:
    try:
        parse_scheduler(value)
    except ConfigError as exc:
        return str(exc)
    return None


def _saliency_range(value: tuple[float, float]) -> str | None:
    lo, hi = value
    if math.isfinite(lo) and math.isfinite(hi) and lo < hi:
        return None
    return f"{list(value)} must be [vmin, vmax] with vmin < vmax"


def _class_names(value: Mapping[str, str]) -> str | None:
    empty = [k for k, v in value.items() if not v.strip()]
    return f"the QuPath class of {empty} is empty" if empty else None


#: Range and form of the values (already of the field's type; None is never checked).
#: A ``Literal`` field needs no rule: its choices are checked from its annotation.
_RULES: Mapping[str, Callable[[Any], str | None]] = types.MappingProxyType(
    {
        "slide.mpp": lambda v: (
            None if _in_range(v, 0, 1000, lo_open=True) else f"{v} must be > 0 (um/px)"
        ),
        "slide.mpp_sidecar": _sidecar,
        "tissue.threshold": _fraction,
        "tissue.spacing": _positive_um,
        "tissue.min_object_um2": lambda v: (
            None if _in_range(v, 0, math.inf, hi_open=True) else f"{v} must be >= 0"
        ),
        "tiling.tile_size": lambda v: None if v >= 2 else f"{v} must be >= 2 (pixels)",
        "tiling.spacing": _positive_um,
        "tiling.overlap": lambda v: (
            None if _in_range(v, 0, 1, hi_open=True) else f"{v} must be in [0, 1)"
        ),
        "tiling.min_tissue": _fraction,
        "model.layer": lambda v: (
            None if v.strip() else "must not be empty (leave it out for the model's layer)"
        ),
        "model.target": _target,
        "inference.device": _device,
        "inference.batch_size": lambda v: None if v >= 1 else f"{v} must be >= 1",
        "inference.workers": lambda v: (
            None if v == "auto" or (isinstance(v, int) and v >= 0)
            else f"{v} must be >= 0 (0 reads tiles in the main process) or auto"
        ),
        "inference.scheduler": _scheduler,
        "output.threshold": _fraction,
        "output.saliency_range": _saliency_range,
        "output.min_region_um2": lambda v: (
            None if _in_range(v, 0, math.inf, hi_open=True) else f"{v} must be >= 0"
        ),
        "output.class_names": _class_names,
    }
)


def _check_value(key: str, value: Any, hint: Any) -> str | None:
    """Return what is wrong with an (already type-coerced) value, or None."""
    if value is None:
        return None
    if typing.get_origin(hint) is typing.Literal:
        return _choice(value, typing.get_args(hint))
    rule = _RULES.get(key)
    return None if rule is None else rule(value)


def _checked(key: str, hint: Any, raw: Any, where: str) -> Any:
    """``raw`` coerced to ``hint`` and checked; ConfigError prefixed with ``where``."""
    ok, value = _coerce(raw, hint)
    if not ok:
        raise ConfigError(f"{where} = {raw!r} must be {_type_name(hint)}")
    problem = _check_value(key, value, hint)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return value


def _validate_section(section: Any, name: str) -> None:
    """Coerce and check every field of a frozen section in place (its ``__post_init__``)."""
    hints = _type_hints(type(section))
    for f in dataclasses.fields(section):
        key = f"{name}.{f.name}"
        raw = getattr(section, f.name)
        value = _checked(key, hints[f.name], raw, f"config: {key}")
        if value is not raw:
            object.__setattr__(section, f.name, value)


def _apply(
    values: dict[str, dict[str, Any]],
    key: str,
    raw: Any,
    origin: str,
    flags: Mapping[str, str],
) -> None:
    section, name = key.split(".", 1)
    hint = _type_hints(dict(_SECTIONS)[section])[name]
    values[section][name] = _checked(key, hint, raw, _label(key, origin, flags))


def _check_key(section: str, name: str | None, origin: str) -> None:
    keys = config_keys()
    label = origin if origin != "cli" else "command line"
    if section not in keys:
        raise ConfigError(
            f"{label}: unknown section '{section}'{_suggest(section, keys)} "
            f"(sections: {', '.join(keys)})"
        )
    if name is not None and name not in keys[section]:
        elsewhere = [f"{s}.{k}" for s, ks in keys.items() for k in ks if k == name]
        if elsewhere:  # the key belongs to another section
            hint = f"; did you mean '{elsewhere[0]}'?"
        else:
            close = difflib.get_close_matches(name, keys[section], n=1, cutoff=0.6)
            hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
        raise ConfigError(
            f"{label}: unknown key '{section}.{name}'{hint} "
            f"(keys of '{section}': {', '.join(keys[section])})"
        )


def build_config(
    yaml_dict: Mapping[str, Any] | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    *,
    source: str | Path | None = None,
    flags: Mapping[str, str] | None = None,
    warn_deprecated: bool = True,
) -> RunConfig:
    """Merge a YAML configuration and command-line values into a validated RunConfig.

    Precedence: command line > YAML > the defaults of the dataclasses. Tile size and
    spacing left ``None`` are taken from the model's config.json later.

    Parameters
    ----------
    yaml_dict
        Nested mapping ``{section: {key: value}}`` as read by :func:`load_config`.
    cli_overrides
        Flat mapping of dotted keys (``"tiling.overlap"``) to values; ``None`` values
        mean "not given" and are ignored.
    source
        Name of the YAML file, used in error messages.
    flags
        Command-line option of each key, for error messages (default: those of
        ``run``, :func:`option_flags`).

    Returns
    -------
    RunConfig

    Raises
    ------
    ConfigError
        Unknown section or key (with the closest valid one suggested), a value of the
        wrong type, or a bad value; the message names the config file or option.
    """
    origin = f"config file {source}" if source is not None else "config"
    flags = option_flags("run") if flags is None else flags
    values: dict[str, dict[str, Any]] = {name: {} for name, _ in _SECTIONS}
    yaml_dict = _replace_autocast(yaml_dict, origin, warn=warn_deprecated)
    cli_overrides = _replace_autocast_cli(cli_overrides, warn=warn_deprecated)
    for section, body in (yaml_dict or {}).items():
        _check_key(str(section), None, origin)
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise ConfigError(
                f"{origin}: section '{section}' must be a mapping of keys, "
                f"not {type(body).__name__}"
            )
        for name, raw in body.items():
            _check_key(str(section), str(name), origin)
            _apply(values, f"{section}.{name}", raw, origin, flags)
    for key, raw in (cli_overrides or {}).items():
        if raw is None:
            continue
        if "." not in key:
            raise ConfigError(
                f"command line: key '{key}' must be 'section.key' (e.g. tiling.overlap)"
            )
        section, name = key.split(".", 1)
        _check_key(section, name, "cli")
        _apply(values, key, raw, "cli", flags)
    return _make(values)


def _autocast_precision(raw: Any, where: str) -> str:
    if not isinstance(raw, bool):
        raise ConfigError(f"{where} = {raw!r} must be true or false (better: use "
                          "inference.precision: auto, fp32, bf16 or fp16)")
    return "auto" if raw else "fp32"


def _replace_autocast(
    data: Mapping[str, Any] | None, origin: str, *, warn: bool
) -> Mapping[str, Any] | None:
    """Rewrite the replaced ``inference.autocast`` into ``inference.precision``."""
    if not data or not isinstance(data.get("inference"), Mapping):
        return data
    body = dict(data["inference"])
    if "autocast" not in body:
        return data
    raw = body.pop("autocast")
    new = _autocast_precision(raw, f"{origin}: inference.autocast")
    if warn:
        warnings.warn(
            f"{origin}: inference.autocast is replaced by inference.precision; reading "
            f"autocast: {str(raw).lower()} as precision: {new}",
            WsiSaliencyWarning,
            stacklevel=3,
        )
    body.setdefault("precision", new)
    return {**data, "inference": body}


def _replace_autocast_cli(
    data: Mapping[str, Any] | None, *, warn: bool
) -> Mapping[str, Any] | None:
    if not data or "inference.autocast" not in data:
        return data
    out = dict(data)
    raw = out.pop("inference.autocast")
    if raw is None:
        return out
    new = _autocast_precision(raw, "command line: --set inference.autocast")
    if warn:
        warnings.warn(
            f"--set inference.autocast is replaced by --precision; reading it as "
            f"--precision {new}",
            WsiSaliencyWarning,
            stacklevel=3,
        )
    if out.get("inference.precision") is None:
        out["inference.precision"] = new
    return out


def _make(values: Mapping[str, Mapping[str, Any]]) -> RunConfig:
    sections = {name: cls(**values.get(name, {})) for name, cls in _SECTIONS}
    return RunConfig(**sections)


def config_to_dict(config: RunConfig) -> dict[str, dict[str, Any]]:
    """Return the configuration as a canonical JSON-able nested dict.

    Parameters
    ----------
    config
        A run configuration.

    Returns
    -------
    dict
        ``{section: {key: value}}`` with tuples as lists; :func:`config_from_dict`
        (or :func:`build_config`) turns it back into an equal RunConfig.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, _ in _SECTIONS:
        section = getattr(config, name)
        out[name] = {
            f.name: (list(v) if isinstance(v := getattr(section, f.name), tuple) else v)
            for f in dataclasses.fields(section)
        }
    return out


def config_from_dict(data: Mapping[str, Any], *, source: str | Path | None = None) -> RunConfig:
    """Validate a nested dict (e.g. from ``run.json``) into a RunConfig.

    Parameters
    ----------
    data
        ``{section: {key: value}}``; missing keys take their defaults.
    source
        Name used in error messages.

    Returns
    -------
    RunConfig
    """
    return build_config(data, None, source=source, warn_deprecated=False)


def config_hash(config: RunConfig, weights_sha256: str) -> str:
    """Hash of everything that decides a slide's outputs, for resuming a batch.

    The canonical JSON of :func:`config_to_dict` without :data:`HASH_EXCLUDED_KEYS`
    (model location, batch size, reader workers), together with the model's weights
    hash, hashed with SHA-256.

    Parameters
    ----------
    config
        The effective configuration (tile size and spacing resolved from the model
        where they were ``None``).
    weights_sha256
        SHA-256 of the model weights.

    Returns
    -------
    str
        64 hex digits.
    """
    data = config_to_dict(config)
    for key in HASH_EXCLUDED_KEYS:
        section, name = key.split(".", 1)
        data[section].pop(name, None)
    payload = {"config": data, "weights_sha256": weights_sha256}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ModelDefaults(Protocol):
    """What a model's config.json contributes to a run (``ModelSpec`` satisfies it)."""

    @property
    def patch_size(self) -> int: ...

    @property
    def spacing(self) -> float: ...

    @property
    def saliency_layer(self) -> str | None: ...


def resolve_model_defaults(config: RunConfig, spec: ModelDefaults) -> RunConfig:
    """Fill the values a configuration leaves to the model. Idempotent.

    ``tiling.tile_size``, ``tiling.spacing`` and ``model.layer`` left ``None`` take the
    model's ``patch_size``, ``spacing`` and ``saliency_layer``, so the configuration hash
    in ``run.json`` records what is actually run.

    Parameters
    ----------
    config
        Run configuration.
    spec
        The model's spec (:class:`wsi_saliency.models.ModelSpec`).

    Returns
    -------
    RunConfig

    Raises
    ------
    ConfigError
        A non-positive tile size or spacing.
    """
    tile = config.tiling.tile_size if config.tiling.tile_size is not None else spec.patch_size
    spacing = config.tiling.spacing if config.tiling.spacing is not None else spec.spacing
    if tile <= 0 or spacing <= 0:
        raise ConfigError(f"tile size ({tile}) and spacing ({spacing}) must be positive")
    layer = config.model.layer
    if layer is None and spec.saliency_layer:
        layer = str(spec.saliency_layer)
    return dataclasses.replace(
        config,
        tiling=dataclasses.replace(config.tiling, tile_size=int(tile), spacing=float(spacing)),
        model=dataclasses.replace(config.model, layer=layer),
    )
