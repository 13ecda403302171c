"""Model architectures by name.

An architecture name in a model's ``config.json`` is resolved in this order:

1. ``"file.py:callable"``: a Python file relative to the model directory (in-house
   models; the file is executed);
2. ``"package.module:callable"``: an importable module (imported, then called);
3. ``"torchvision/NAME"`` or ``"timm/NAME"``: that library explicitly;
4. a bare name: the project's own CNNs (:data:`ARCHITECTURES`), then torchvision's
   classification models, then timm's, whichever of those optional packages is installed.

Every builder is called with ``num_classes`` (when it accepts it) plus the config's
``architecture_kwargs``; no pretrained weights are ever downloaded.

Forms 1 and 2 run code named by the model folder, so a ``config.json`` alone could run
anything (``"os:system"``). They are refused, before anything is imported, unless the
caller passes ``trust_code=True`` (``--trust-model-code``, config
``model.trust_code: true``). Likewise timm's ``checkpoint_path`` and ``pretrained*``
keyword arguments (they read a pickled checkpoint or download weights). Named
architectures (forms 3 and 4) need no trust.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from wsi_saliency.errors import InvalidModelError

__all__ = [
    "ARCHITECTURES",
    "ConvBlock",
    "DemoCNN",
    "build_architecture",
    "runs_model_code",
]


class ConvBlock(nn.Module):
    """3x3 convolution, batch norm and an in-place ReLU.

    Parameters
    ----------
    in_channels, out_channels
        Channel counts.
    stride
        Convolution stride (2 halves the resolution; the demo CNN has no pooling layers).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, BN, ReLU."""
        out: torch.Tensor = self.relu(self.bn(self.conv(x)))
        return out


class DemoCNN(nn.Module):
    """Small all-convolutional classifier whose downsampling is strided convolution.

    For a 224 px input the stages give: ``stem`` 112 px (stride 2), ``layer1`` 56
    (stride 4), ``layer2`` 28 (stride 8), ``layer3`` 14 (stride 16), ``layer4`` 7
    (stride 32), then global average pooling and a linear head ``fc``. Each ``layerN``
    starts with a stride-2 3x3 convolution (``layerN.0.conv``) followed by a stride-1
    block (``layerN.1``). There is no max-pooling, so every downsampling step is a
    strided convolution that hook smoothing acts on.

    Parameters
    ----------
    num_classes
        Number of output logits.
    width
        Channels of the stem; each stage doubles it.
    """

    def __init__(self, num_classes: int = 2, width: int = 8) -> None:
        super().__init__()
        w = int(width)
        self.stem = ConvBlock(3, w, stride=2)
        self.layer1 = nn.Sequential(ConvBlock(w, 2 * w, 2), ConvBlock(2 * w, 2 * w))
        self.layer2 = nn.Sequential(ConvBlock(2 * w, 4 * w, 2), ConvBlock(4 * w, 4 * w))
        self.layer3 = nn.Sequential(ConvBlock(4 * w, 8 * w, 2), ConvBlock(8 * w, 8 * w))
        self.layer4 = nn.Sequential(ConvBlock(8 * w, 16 * w, 2), ConvBlock(16 * w, 16 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes)`` for normalised images ``(B, 3, H, W)``."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        out: torch.Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return out


ARCHITECTURES: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {
        "demo_cnn": DemoCNN,
    }
)
"""The project's own architectures, by the name used in ``config.json``."""


def runs_model_code(name: str) -> bool:
    """Whether an architecture name runs code from outside the package's registries.

    Parameters
    ----------
    name
        The ``architecture`` value of a ``config.json``.

    Returns
    -------
    bool
        True for ``"file.py:callable"`` and ``"package.module:callable"`` (they import
        and call code the model folder names); False for the project's own, torchvision
        and timm names.
    """
    return ":" in name


_TIMM_UNSAFE_KWARGS = ("checkpoint_path", "pretrained")
"""timm ``create_model`` arguments that read a (pickled) checkpoint or download weights."""


def _untrusted(what: str, model_dir: Path | None) -> InvalidModelError:
    where = f"{model_dir / 'config.json'}: " if model_dir is not None else ""
    return InvalidModelError(
        f"{where}{what}; load it only if you trust it, with --trust-model-code "
        "(config: model.trust_code: true)"
    )


def _check_trust(name: str, kwargs: Mapping[str, Any], model_dir: Path | None,
                 trust_code: bool) -> None:
    """Refuse, before anything is imported, an architecture that would run foreign code."""
    if trust_code:
        return
    if runs_model_code(name):
        left = name.rpartition(":")[0]
        source = (
            "Python code from the model folder" if left.endswith(".py")
            else f"Python code from module {left!r}"
        )
        raise _untrusted(f"architecture {name!r} runs {source}", model_dir)
    unsafe = sorted(k for k in kwargs if k.startswith(_TIMM_UNSAFE_KWARGS))
    if unsafe:
        # timm (which a bare name may resolve to) would load a pickled checkpoint, or
        # download one, for these: unpickling runs code.
        raise _untrusted(
            f"architecture {name!r}: architecture_kwargs {unsafe} would load a checkpoint "
            "other than the model's weights file (unpickling it can run code)",
            model_dir,
        )


def _call_builder(builder: Callable[..., Any], num_classes: int, kwargs: Mapping[str, Any],
                  what: str) -> nn.Module:
    params = inspect.signature(builder).parameters if callable(builder) else {}
    accepts_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    call_kwargs = dict(kwargs)
    if ("num_classes" in params or accepts_var_kw) and "num_classes" not in call_kwargs:
        call_kwargs["num_classes"] = num_classes
    try:
        module = builder(**call_kwargs)
    except TypeError as exc:
        raise InvalidModelError(
            f"architecture {what!r} could not be built with {sorted(call_kwargs)}: {exc}; "
            "fix 'architecture_kwargs' in config.json"
        ) from exc
    if not isinstance(module, nn.Module):
        raise InvalidModelError(
            f"architecture {what!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    return module


def _load_file_callable(ref: str, model_dir: Path | None) -> Callable[..., Any]:
    file_part, _, attr = ref.rpartition(":")
    if model_dir is None:
        raise InvalidModelError(
            f"architecture {ref!r} names a file but no model directory is known; "
            "load it with load_model(MODEL_DIR)"
        )
    path = (model_dir / file_part).resolve()
    if not path.is_file():
        raise InvalidModelError(
            f"architecture {ref!r}: file {path} not found; paths are relative to the model "
            "directory"
        )
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"_wsi_saliency_user_model_{digest}", path)
    if spec is None or spec.loader is None:
        raise InvalidModelError(f"architecture {ref!r}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise InvalidModelError(f"architecture {ref!r}: importing {path} failed: {exc}") from exc
    if not hasattr(module, attr):
        raise InvalidModelError(f"architecture {ref!r}: {path.name} defines no {attr!r}")
    obj: Callable[..., Any] = getattr(module, attr)
    return obj


def _load_module_callable(ref: str) -> Callable[..., Any]:
    mod_name, _, attr = ref.rpartition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise InvalidModelError(
            f"architecture {ref!r}: cannot import module {mod_name!r} ({exc}); install it or "
            "use 'file.py:callable' relative to the model directory"
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidModelError(f"architecture {ref!r}: {mod_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InvalidModelError(f"architecture {ref!r}: {attr!r} is not callable")
    return obj


def _torchvision_builder(name: str) -> Callable[..., nn.Module] | None:
    try:
        import torchvision.models as tvm
    except ImportError:
        return None
    if name not in tvm.list_models(module=tvm):
        return None

    def build(**kwargs: Any) -> nn.Module:
        return tvm.get_model(name, weights=None, **kwargs)

    return build


def _timm_builder(name: str) -> Callable[..., nn.Module] | None:
    try:
        import timm
    except ImportError:
        return None
    if not timm.is_model(name):
        return None

    def build(**kwargs: Any) -> nn.Module:
        module: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
        return module

    return build


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def build_architecture(
    name: str,
    num_classes: int,
    *,
    model_dir: str | Path | None = None,
    kwargs: Mapping[str, Any] | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Build an untrained network from an architecture name.

    Parameters
    ----------
    name
        A name from :data:`ARCHITECTURES`, a torchvision or timm model name (optionally
        prefixed ``"torchvision/"`` or ``"timm/"``), ``"file.py:callable"`` relative to
        ``model_dir``, or ``"package.module:callable"``.
    num_classes
        Number of output logits; passed as ``num_classes`` when the builder accepts it.
    model_dir
        Directory that ``file.py`` references are relative to.
    kwargs
        Extra keyword arguments for the builder (``architecture_kwargs`` in config.json).
    trust_code
        Allow ``"file.py:callable"`` and ``"package.module:callable"`` (and timm's
        ``checkpoint_path`` / ``pretrained*`` arguments), which run code the model folder
        names. Without it they are refused before anything is imported or executed.

    Returns
    -------
    torch.nn.Module
        The network with freshly initialised weights (nothing is downloaded).

    Raises
    ------
    InvalidModelError
        The name resolves to nothing, or the library it needs is not installed; the name
        runs code from the model folder or a module and ``trust_code`` is False; the
        builder does not return a ``torch.nn.Module``.
    """
    extra: Mapping[str, Any] = kwargs or {}
    directory = Path(model_dir) if model_dir is not None else None
    _check_trust(name, extra, directory, trust_code)
    if ":" in name:
        left = name.rpartition(":")[0]
        if left.endswith(".py"):
            return _call_builder(_load_file_callable(name, directory), num_classes, extra, name)
        return _call_builder(_load_module_callable(name), num_classes, extra, name)

    library, _, bare = name.partition("/") if "/" in name else ("", "", name)
    if library not in ("", "torchvision", "timm"):
        raise InvalidModelError(
            f"architecture {name!r}: unknown library prefix {library!r}; use 'torchvision/NAME' "
            "or 'timm/NAME'"
        )
    if library == "" and bare in ARCHITECTURES:
        return _call_builder(ARCHITECTURES[bare], num_classes, extra, name)
    if library in ("", "torchvision"):
        tv = _torchvision_builder(bare)
        if tv is not None:
            return _call_builder(tv, num_classes, extra, name)
        if library == "torchvision":
            reason = ("torchvision is not installed (pip install torchvision)"
                      if not _installed("torchvision") else "torchvision has no such model")
            raise InvalidModelError(f"architecture {name!r}: {reason}")
    tm = _timm_builder(bare)
    if tm is not None:
        return _call_builder(tm, num_classes, extra, name)
    missing = [p for p in ("torchvision", "timm") if not _installed(p)]
    hint = (
        f"; {' and '.join(missing)} not installed (pip install {' '.join(missing)})"
        if missing else ""
    )
    raise InvalidModelError(
        f"architecture {name!r} is not one of {sorted(ARCHITECTURES)}, a torchvision or a timm "
        f"model{hint}; or give 'file.py:callable' relative to the model directory"
    )
