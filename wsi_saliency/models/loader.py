"""Loading a model directory (``config.json`` + weights) into a ready network."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from wsi_saliency.errors import InvalidModelError
from wsi_saliency.models.architectures import build_architecture
from wsi_saliency.models.spec import ModelSpec, read_config
from wsi_saliency.models.surrogate_ref import SurrogateRef, read_surrogate_ref
from wsi_saliency.models.weights import (
    find_weights,
    is_torchscript,
    load_state_dict,
    load_torchscript,
    sha256_file,
)

__all__ = ["LoadedModel", "demo_model_dir", "load_model"]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A network with its spec, on the CPU, in eval mode, parameters frozen.

    Parameters
    ----------
    spec
        What ``config.json`` says (plus the weights' hash and where they came from).
    module
        The network; it maps normalised images ``(B, 3, S, S)`` with
        ``S = spec.input_size`` to logits ``(B, spec.num_classes)``.
    surrogate
        The folder's bilinear surrogate (``surrogate.json``), if it has one.
    """

    spec: ModelSpec
    module: nn.Module
    surrogate: SurrogateRef | None = None


def demo_model_dir() -> Path:
    """Return the directory of the bundled demo model (``wsi_saliency/models/demo``)."""
    return Path(__file__).resolve().parent / "demo"


def _check_state_dict(module: nn.Module, state: dict[str, object], path: Path) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise InvalidModelError(
            f"{path}: weights do not fit the architecture (missing {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{'...' if len(unexpected) > 4 else ''}); check 'architecture' and 'num_classes'"
        )
    for key, value in expected.items():
        got = state[key]
        shape = tuple(getattr(got, "shape", ()))
        if shape != tuple(value.shape):
            raise InvalidModelError(
                f"{path}: tensor {key!r} has shape {shape}, the architecture needs "
                f"{tuple(value.shape)}; check 'architecture' and 'num_classes'"
            )


def load_model(model_dir: str | Path | None = None, *, trust_code: bool = False) -> LoadedModel:
    """Load a model directory.

    Loading runs no code from the folder unless ``trust_code`` is True: weights are
    safetensors or ``weights_only`` state dicts, and an ``architecture`` that would import
    Python code (``"file.py:callable"``, ``"package.module:callable"``) is refused before
    anything is imported. A TorchScript archive is loaded with :func:`torch.jit.load`,
    which runs TorchScript (not arbitrary Python) but is not a sandbox: use archives you
    trust.

    Parameters
    ----------
    model_dir
        Directory holding ``config.json`` (WSInfer keys plus optional ``tumor_class``,
        ``saliency_layer``, ``weights``, ``architecture_kwargs``) and the weights
        (``model.safetensors`` preferred; a state-dict ``.pt``/``.pth`` loaded with
        ``weights_only=True``; or a TorchScript archive for prediction only).
        ``None`` loads the bundled demo model.
    trust_code
        Allow the model directory to run its own Python code (an ``architecture`` of
        ``"file.py:callable"`` or ``"package.module:callable"``): ``--trust-model-code``,
        config ``model.trust_code``. Named architectures never need it.

    Returns
    -------
    LoadedModel
        The network on the CPU in eval mode with ``requires_grad`` off for every
        parameter (saliency needs gradients of activations only).

    Raises
    ------
    InvalidModelError
        Missing directory, config or weights; invalid config; an architecture that runs
        code from the model folder or a module while ``trust_code`` is False (nothing of
        it is imported); weights that do not fit the architecture; a ``saliency_layer``
        that is not a module of the network.
    UnsafeWeightsError
        A pickled weights file that would run code; nothing in it is executed.
    """
    directory = demo_model_dir() if model_dir is None else Path(model_dir).expanduser()
    if not directory.is_dir():
        raise InvalidModelError(f"{directory}: model directory not found; pass a directory with "
                                "config.json and model.safetensors")
    directory = directory.resolve()
    spec = read_config(directory / "config.json")
    surrogate = read_surrogate_ref(directory, sha256_file)
    if surrogate is not None and surrogate.base_weights is not None:
        weights = surrogate.base_weights  # referenced by path (and SHA-256) in surrogate.json
    else:
        weights = find_weights(directory, spec.weights_file or None)
    digest = sha256_file(weights)
    torchscript = is_torchscript(weights)
    module: nn.Module
    if torchscript:
        module = load_torchscript(weights)
    else:
        module = build_architecture(
            spec.architecture, spec.num_classes, model_dir=directory,
            kwargs=spec.architecture_kwargs, trust_code=trust_code,
        )
        state = load_state_dict(weights)
        _check_state_dict(module, state, weights)  # type: ignore[arg-type]
        module.load_state_dict(state, strict=True)
        if spec.saliency_layer is not None:
            names = [n for n, _ in module.named_modules() if n]
            if spec.saliency_layer not in names:
                close = difflib.get_close_matches(spec.saliency_layer, names, n=5, cutoff=0.5)
                raise InvalidModelError(
                    f"{directory / 'config.json'}: saliency_layer {spec.saliency_layer!r} is not "
                    f"a module of {spec.architecture!r}; closest: {close}; list them with "
                    f"'wsi-saliency layers {directory}'"
                )
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    spec = dataclasses.replace(
        spec,
        weights_sha256=digest,
        source=str(directory),
        torchscript=torchscript,
        weights_file=weights.name,
        surrogate_sha256=surrogate.actual_sha256 if surrogate is not None else "",
    )
    return LoadedModel(spec=spec, module=module, surrogate=surrogate)
