"""Finding and safely loading a model directory's weights.

Formats, in order of preference:

* ``model.safetensors`` (or the one ``*.safetensors`` file): plain tensors, no code;
* a state-dict ``.pt`` / ``.pth`` / ``.bin`` loaded with ``torch.load(weights_only=True)``:
  a file that needs any other pickled Python object (classes, functions) is refused with
  :class:`~wsi_saliency.errors.UnsafeWeightsError` before anything in it runs;
* a TorchScript archive (e.g. WSInfer's ``torchscript_model.pt``): prediction only.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wsi_saliency.errors import InvalidModelError, UnsafeWeightsError

__all__ = [
    "find_weights",
    "is_torchscript",
    "load_state_dict",
    "load_torchscript",
    "sha256_file",
]

_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_weights(model_dir: str | Path, configured: str | None = None) -> Path:
    """Return the weights file of a model directory.

    Parameters
    ----------
    model_dir
        The model directory.
    configured
        File name from the config's ``weights`` key, if any.

    Returns
    -------
    Path
        ``configured`` if given; else ``model.safetensors``; else the single
        ``*.safetensors``; else ``model.pt`` / ``model.pth``; else the single other
        ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` file.

    Raises
    ------
    InvalidModelError
        No weights file, or several candidates and no ``weights`` key to choose.
    """
    d = Path(model_dir)
    if configured:
        p = d / configured
        if not p.is_file():
            raise InvalidModelError(f"{p}: weights file named in config.json not found")
        return p
    preferred = d / "model.safetensors"
    if preferred.is_file():
        return preferred
    safes = sorted(p for p in d.glob("*.safetensors")
                   if p.is_file() and p.name != "surrogate.safetensors")
    if len(safes) == 1:
        return safes[0]
    if len(safes) > 1:
        raise InvalidModelError(f"{d}: several .safetensors files {[p.name for p in safes]}; "
                                "name one with \"weights\" in config.json")
    for name in ("model.pt", "model.pth"):
        if (d / name).is_file():
            return d / name
    others = sorted(p for p in d.iterdir() if p.is_file() and p.suffix in _PICKLE_SUFFIXES)
    if len(others) == 1:
        return others[0]
    if not others:
        raise InvalidModelError(f"{d}: no weights file; add model.safetensors (preferred) or a "
                                "state-dict model.pt")
    raise InvalidModelError(f"{d}: several weights files {[p.name for p in others]}; name one "
                            "with \"weights\" in config.json")


def is_torchscript(path: str | Path) -> bool:
    """Tell whether a file is a TorchScript archive (a zip with ``code/`` and constants)."""
    p = Path(path)
    if p.suffix == ".safetensors" or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def load_torchscript(path: str | Path) -> torch.nn.Module:
    """Load a TorchScript archive on the CPU (prediction only).

    :func:`torch.jit.load` runs the archive's TorchScript, not arbitrary Python, but it is
    not a sandbox: only load archives you trust.
    """
    try:
        with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit.load as deprecated
            warnings.simplefilter("ignore", FutureWarning)
            module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InvalidModelError(f"{path}: cannot load TorchScript archive ({exc})") from exc
    return module


def _unsafe_reason(exc: BaseException) -> str:
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it references the Python object {found.group(1)}"
    found = re.search(r"Unsupported operand[^\n]*", text)
    return found.group(0) if found else "it holds pickled Python objects beyond plain tensors"


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise InvalidModelError(f"{path}: not a state dict (a mapping of names to tensors); save "
                                "model.state_dict() or use safetensors")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict without running any code from the file.

    Parameters
    ----------
    path
        A ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin``/``.ckpt`` saved by
        ``torch.save(model.state_dict())`` (a ``{"state_dict": ...}`` checkpoint is
        unwrapped; a ``module.`` prefix from DataParallel is stripped).

    Returns
    -------
    dict of str to Tensor
        On the CPU.

    Raises
    ------
    UnsafeWeightsError
        The file needs arbitrary pickled objects; they are not loaded, nothing in them runs.
    InvalidModelError
        The file is unreadable, a TorchScript archive, or not a state dict.
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _as_state_dict(load_file(str(p), device="cpu"), p)
        except (SafetensorError, OSError, ValueError) as exc:
            raise InvalidModelError(f"{p}: cannot read safetensors file ({exc})") from exc
    if is_torchscript(p):
        raise InvalidModelError(f"{p}: is a TorchScript archive, not a state dict; load it with "
                                "load_torchscript (prediction only)")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeWeightsError(
            f"{p}: refused to load: {_unsafe_reason(exc)}, which could run arbitrary code; "
            "re-save it as a plain state dict, ideally with safetensors.torch.save_file"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise InvalidModelError(f"{p}: cannot read weights ({str(exc).splitlines()[0]})") from exc
    return _as_state_dict(obj, p)
