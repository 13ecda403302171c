"""``config.json`` of a model directory: WSInfer's model config plus a few optional keys.

WSInfer keys (all required, as in WSInfer's ``model-config.schema.json``):
``spec_version`` (``"1.0"``), ``architecture``, ``num_classes``, ``class_names``,
``patch_size_pixels``, ``spacing_um_px``, ``transform`` (a list of
``{"name": "Resize" | "ToTensor" | "Normalize", "arguments": {...}}``).

Optional keys of this project: ``name``, ``tumor_class`` (index or class name),
``saliency_layer`` (module path of the default explained layer), ``weights`` (file name
inside the model directory), ``architecture_kwargs`` (keyword arguments of the builder).
Other keys are ignored, except near-misses of known keys (typos), which are errors.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_saliency.errors import InvalidModelError

__all__ = ["ModelSpec", "parse_config", "read_config"]

_REQUIRED = (
    "spec_version",
    "architecture",
    "num_classes",
    "class_names",
    "patch_size_pixels",
    "spacing_um_px",
    "transform",
)
_OPTIONAL = ("name", "tumor_class", "saliency_layer", "weights", "architecture_kwargs")
_SPEC_VERSIONS = ("1.0",)
_TUMOUR_NAMES = ("tumor", "tumour")


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """Everything the pipeline needs to know about a model, from its ``config.json``.

    Parameters
    ----------
    name
        Human-readable name (``name`` key, else the directory name).
    architecture
        Architecture name as written in the config.
    num_classes
        Number of output logits.
    class_names
        One name per output.
    patch_size
        Tile size in pixels at ``spacing`` (``patch_size_pixels``): the tiling default.
    spacing
        Micrometres per pixel of the tiles (``spacing_um_px``): the tiling default.
    mean, std
        Per-channel normalisation applied after scaling pixels to 0..1.
    tumor_class
        Index of the class whose probability is the tumour heatmap and whose logit is
        explained by default.
    saliency_layer
        Default explained layer (module path), or ``None`` to let the engine choose.
    weights_sha256
        SHA-256 of the weights file (hex).
    source
        Absolute path of the model directory.
    torchscript
        True when the weights are a TorchScript archive (prediction only).
    input_size
        Side of the square image the network sees (``Resize`` size, else ``patch_size``).
    weights_file
        Weights file name inside the model directory (empty until loaded).
    architecture_kwargs
        Extra keyword arguments for the architecture builder.
    spec_version
        WSInfer config spec version.
    surrogate_sha256
        SHA-256 of the folder's ``surrogate.safetensors`` ("" without one).
    """

    name: str
    architecture: str
    num_classes: int
    class_names: tuple[str, ...]
    patch_size: int
    spacing: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tumor_class: int
    saliency_layer: str | None = None
    weights_sha256: str = ""
    source: str = ""
    torchscript: bool = False
    input_size: int = 0
    weights_file: str = ""
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    spec_version: str = "1.0"
    surrogate_sha256: str = ""

    def __post_init__(self) -> None:
        if self.input_size == 0:
            object.__setattr__(self, "input_size", self.patch_size)


def _fail(where: str, message: str) -> InvalidModelError:
    return InvalidModelError(f"{where}: {message}")


def _positive_int(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(where, f"{key!r} must be a positive integer, got {value!r}")
    return value


def _triple(value: Any, key: str, where: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) in (1, 3)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        vals = [float(v) for v in value]
        if len(vals) == 1:
            vals = vals * 3
        return (vals[0], vals[1], vals[2])
    raise _fail(where, f"Normalize {key!r} must be a number or a list of 1 or 3 numbers, "
                       f"got {value!r}")


def _parse_transform(steps: Any, where: str, patch_size: int
                     ) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
    if not isinstance(steps, list):
        raise _fail(where, f"'transform' must be a list of steps, got {type(steps).__name__}")
    input_size = patch_size
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping) or "name" not in step:
            raise _fail(where, f"transform[{i}] must be an object with a 'name', got {step!r}")
        name = step["name"]
        args = step.get("arguments") or {}
        if not isinstance(args, Mapping):
            raise _fail(where, f"transform[{i}] 'arguments' must be an object, got {args!r}")
        if name == "Resize":
            size = args.get("size")
            if isinstance(size, Sequence) and not isinstance(size, str):
                if len(size) != 2 or size[0] != size[1]:
                    raise _fail(where, f"Resize size {size!r} is not square; use one integer")
                size = size[0]
            input_size = _positive_int(size, "Resize size", where)
        elif name == "ToTensor":
            continue
        elif name == "Normalize":
            if "mean" not in args or "std" not in args:
                raise _fail(where, "Normalize needs 'mean' and 'std' arguments")
            mean = _triple(args["mean"], "mean", where)
            std = _triple(args["std"], "std", where)
            if any(s <= 0 for s in std):
                raise _fail(where, f"Normalize std must be > 0, got {list(std)}")
        else:
            raise _fail(where, f"transform[{i}] {name!r} is not supported; use Resize, "
                               "ToTensor and Normalize")
    return input_size, mean, std


def _resolve_tumor_class(value: Any, class_names: tuple[str, ...], where: str) -> int:
    if value is None:
        for i, cname in enumerate(class_names):
            if cname.strip().lower() in _TUMOUR_NAMES:
                return i
        if len(class_names) == 2:
            return 1
        raise _fail(where, f"cannot tell the tumour class among {list(class_names)}; add "
                           "\"tumor_class\": INDEX_OR_NAME")
    if isinstance(value, str):
        if value not in class_names:
            raise _fail(where, f"tumor_class {value!r} is not one of {list(class_names)}")
        return class_names.index(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(class_names):
        raise _fail(where, f"tumor_class must be a class name or an index in "
                           f"0..{len(class_names) - 1}, got {value!r}")
    return value


def parse_config(data: Mapping[str, Any], *, where: str = "config.json",
                 default_name: str = "model") -> ModelSpec:
    """Validate a parsed ``config.json`` and turn it into a :class:`ModelSpec`.

    Parameters
    ----------
    data
        The parsed JSON object.
    where
        Name of the file for error messages.
    default_name
        Model name when the config has no ``name``.

    Returns
    -------
    ModelSpec
        With ``weights_sha256``, ``source`` and ``torchscript`` left empty/False for the
        loader to fill.

    Raises
    ------
    InvalidModelError
        A required key is missing, a value has the wrong type or range, or a key looks
        like a misspelt known key.
    """
    if not isinstance(data, Mapping):
        raise _fail(where, f"must hold a JSON object, got {type(data).__name__}")
    known = _REQUIRED + _OPTIONAL
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            if close:
                raise _fail(where, f"unknown key {key!r}; did you mean {close[0]!r}?")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _fail(where, f"missing required key(s) {missing} (WSInfer model config)")
    version = str(data["spec_version"])
    if version not in _SPEC_VERSIONS:
        raise _fail(where, f"spec_version {version!r} is not supported; use {_SPEC_VERSIONS[0]!r}")
    architecture = data["architecture"]
    if not isinstance(architecture, str) or not architecture:
        raise _fail(where, f"'architecture' must be a non-empty string, got {architecture!r}")
    num_classes = _positive_int(data["num_classes"], "num_classes", where)
    names = data["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(where, f"'class_names' must be a list of strings, got {names!r}")
    if len(names) != num_classes:
        raise _fail(where, f"'class_names' has {len(names)} names but num_classes is "
                           f"{num_classes}")
    if len(set(names)) != len(names):
        raise _fail(where, f"'class_names' must be unique, got {names!r}")
    class_names = tuple(names)
    patch_size = _positive_int(data["patch_size_pixels"], "patch_size_pixels", where)
    spacing = data["spacing_um_px"]
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or spacing <= 0:
        raise _fail(where, f"'spacing_um_px' must be a number > 0, got {spacing!r}")
    input_size, mean, std = _parse_transform(data["transform"], where, patch_size)
    tumor_class = _resolve_tumor_class(data.get("tumor_class"), class_names, where)
    layer = data.get("saliency_layer")
    if layer is not None and (not isinstance(layer, str) or not layer):
        raise _fail(where, f"'saliency_layer' must be a module path string, got {layer!r}")
    weights = data.get("weights")
    if weights is not None and (not isinstance(weights, str) or not weights
                                or Path(weights).is_absolute() or ".." in Path(weights).parts):
        raise _fail(where, f"'weights' must be a file name inside the model directory, "
                           f"got {weights!r}")
    kwargs = data.get("architecture_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise _fail(where, f"'architecture_kwargs' must be an object, got {kwargs!r}")
    name = data.get("name") or default_name
    return ModelSpec(
        name=str(name),
        architecture=architecture,
        num_classes=num_classes,
        class_names=class_names,
        patch_size=patch_size,
        spacing=float(spacing),
        mean=mean,
        std=std,
        tumor_class=tumor_class,
        saliency_layer=layer,
        input_size=input_size,
        weights_file=weights or "",
        architecture_kwargs=dict(kwargs),
        spec_version=version,
    )


def read_config(path: str | Path) -> ModelSpec:
    """Read and validate a model ``config.json``.

    Parameters
    ----------
    path
        The config file; the model name defaults to its directory's name.

    Returns
    -------
    ModelSpec
        See :func:`parse_config`.

    Raises
    ------
    InvalidModelError
        The file is missing, is not JSON, or does not validate.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidModelError(f"{p}: config.json not found; a model directory needs "
                                "config.json and model.safetensors")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{p}: not valid JSON ({exc})") from exc
    return parse_config(data, where=str(p), default_name=p.parent.name)
