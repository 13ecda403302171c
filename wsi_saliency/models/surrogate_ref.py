"""The surrogate part of a model folder: ``surrogate.json`` + ``surrogate.safetensors``.

A folder written by ``wsi-saliency surrogate`` is a model folder (``config.json`` of the
original model, its weights copied or referenced by path and SHA-256) plus:

* ``surrogate.safetensors``: the bilinear surrogates (see
  :mod:`wsi_saliency.saliency.surrogate`);
* ``surrogate.json``: the card as JSON, and what the loader needs: the SHA-256 of the
  weights the surrogates were trained for (``base_weights.sha256``), where those weights
  are (``base_weights.file``: a file in the folder, or an absolute path), and the SHA-256
  of ``surrogate.safetensors``.

Reading it runs no code. The hashes are compared when ``smoothing: bilinear`` is asked
for (:func:`check_surrogate`), so a folder whose referenced weights changed still loads
for the other smoothing modes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_saliency.errors import InvalidModelError, SurrogateError

__all__ = [
    "SURROGATE_MANIFEST",
    "SURROGATE_WEIGHTS",
    "SurrogateRef",
    "check_surrogate",
    "read_surrogate_ref",
]

#: The card/manifest file of a surrogate model folder.
SURROGATE_MANIFEST = "surrogate.json"
#: The surrogates' weights in a surrogate model folder.
SURROGATE_WEIGHTS = "surrogate.safetensors"


@dataclass(frozen=True)
class SurrogateRef:
    """What ``surrogate.json`` says, plus the hash of ``surrogate.safetensors`` as found.

    Parameters
    ----------
    manifest
        Path of ``surrogate.json``.
    weights
        Path of ``surrogate.safetensors``.
    sha256
        SHA-256 of ``surrogate.safetensors`` as recorded in the manifest.
    actual_sha256
        SHA-256 of ``surrogate.safetensors`` as found on disk ("" if missing).
    base_sha256
        SHA-256 of the classifier weights the surrogates were trained for.
    base_weights
        Absolute path of referenced classifier weights, or ``None`` when they are a file
        of the folder (found the usual way).
    layers
        Module paths of the replaced convolutions.
    """

    manifest: Path
    weights: Path
    sha256: str
    actual_sha256: str
    base_sha256: str
    base_weights: Path | None
    layers: tuple[str, ...]


def _str(data: dict[str, Any], key: str, where: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidModelError(f"{where}: '{key}' must be a non-empty string; rewrite the "
                                "folder with 'wsi-saliency surrogate'")
    return value


def read_surrogate_ref(directory: str | Path, sha256_file: Any) -> SurrogateRef | None:
    """Read ``surrogate.json`` of a model folder (``None`` when there is none).

    Parameters
    ----------
    directory
        The model folder.
    sha256_file
        Function returning a file's hex SHA-256.

    Returns
    -------
    SurrogateRef or None

    Raises
    ------
    InvalidModelError
        The manifest is not valid JSON or lacks a required entry.
    """
    d = Path(directory)
    path = d / SURROGATE_MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("base_weights"), dict):
        raise InvalidModelError(f"{path}: needs a 'base_weights' object; rewrite the folder "
                                "with 'wsi-saliency surrogate'")
    base = data["base_weights"]
    base_sha = _str(base, "sha256", path)
    base_file = _str(base, "file", path)
    base_path: Path | None = None
    if Path(base_file).is_absolute():
        base_path = Path(base_file)
        if not base_path.is_file():
            raise InvalidModelError(
                f"{path}: the classifier weights it references, {base_path}, are missing; "
                "put them back or retrain with 'wsi-saliency surrogate ... --copy-weights'")
    raw = data.get("surrogate")
    surrogate: dict[str, Any] = raw if isinstance(raw, dict) else {}
    file = d / str(surrogate.get("file", SURROGATE_WEIGHTS))
    layers = surrogate.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise InvalidModelError(f"{path}: 'surrogate.layers' must be a list of module paths")
    return SurrogateRef(
        manifest=path,
        weights=file,
        sha256=str(surrogate.get("sha256", "")),
        actual_sha256=sha256_file(file) if file.is_file() else "",
        base_sha256=base_sha,
        base_weights=base_path,
        layers=tuple(layers),
    )


def check_surrogate(ref: SurrogateRef | None, weights_sha256: str, source: str) -> SurrogateRef:
    """Check that a model folder's surrogate exists and was trained for its weights.

    Parameters
    ----------
    ref
        The folder's surrogate (``LoadedModel.surrogate``).
    weights_sha256
        SHA-256 of the classifier weights actually loaded.
    source
        The model folder, for messages.

    Returns
    -------
    SurrogateRef
        ``ref``.

    Raises
    ------
    SurrogateError
        No surrogate, a missing or altered ``surrogate.safetensors``, or a surrogate
        trained for other classifier weights.
    """
    if ref is None:
        raise SurrogateError(
            f"{source or 'the model'}: smoothing 'bilinear' needs a trained surrogate "
            f"({SURROGATE_MANIFEST} + {SURROGATE_WEIGHTS}) and this model folder has none; "
            "train one with 'wsi-saliency surrogate MODEL_DIR SLIDES... --out DIR' and run "
            "with --model DIR")
    if not ref.actual_sha256:
        raise SurrogateError(f"{ref.weights}: surrogate weights missing; retrain with "
                             "'wsi-saliency surrogate'")
    if ref.sha256 and ref.actual_sha256 != ref.sha256:
        raise SurrogateError(
            f"{ref.weights}: SHA-256 {ref.actual_sha256[:12]}... differs from the "
            f"{ref.sha256[:12]}... recorded in {ref.manifest.name}; the file was changed, "
            "retrain with 'wsi-saliency surrogate'")
    if weights_sha256 != ref.base_sha256:
        raise SurrogateError(
            f"{ref.manifest}: the surrogate was trained for classifier weights with SHA-256 "
            f"{ref.base_sha256[:12]}... but the model's weights have {weights_sha256[:12]}...; "
            "retrain the surrogate for these weights with 'wsi-saliency surrogate'")
    return ref
