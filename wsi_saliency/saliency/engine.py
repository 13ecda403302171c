"""Batched prediction + hidden-layer saliency for tiles."""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from wsi_saliency.errors import ConfigError, SaliencyUnsupportedError
from wsi_saliency.models import LoadedModel
from wsi_saliency.saliency.hooks import SMOOTHING_MODES, register_smoothing_hooks
from wsi_saliency.saliency.layers import LayerInfo, default_layer, get_layer, trace_layers
from wsi_saliency.saliency.methods import (
    CAPTUM_METHODS,
    METHODS,
    captum_layer_attribution,
    channel_attribution,
    reduce_channels,
)

__all__ = ["SaliencyEngine", "resolve_device"]

TileBatch = npt.NDArray[np.uint8] | torch.Tensor

# module types whose gradients Captum's DeepLift rewrites (and which must not be shared)
_DEEPLIFT_NONLINEAR = frozenset({
    "ReLU", "ReLU6", "ELU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "MaxPool1d",
    "MaxPool2d", "MaxPool3d",
})


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda[:N]"`` / ``"mps"`` into a device that exists."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"device {device!r} is not a torch device; use 'auto', 'cpu' "
                              "or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} asked for but Apple MPS is not available; use 'cpu'")
    return dev


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value in allowed:
        return value
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{what} {value!r} is not one of {list(allowed)}{hint}")


class SaliencyEngine:
    """Class probabilities and a hidden-layer saliency map for every tile of a batch.

    Per batch: one forward pass and one backward pass (methods ``gradient``,
    ``gradient-x-activation``, ``grad-cam``). A forward hook on the explained layer
    replaces its output ``A`` by a detached copy that requires grad, so no graph is kept
    below the layer; the backward pass of ``sum_b logit[b, target]`` gives every
    sample's own ``dlogit_b / dA_b`` (samples do not interact in eval mode). Smoothing
    hooks on the strided convolutions above the layer act during that backward pass.
    Every hook is removed in ``finally``.

    Parameters
    ----------
    model
        A loaded model. The engine puts its module in eval mode, freezes its parameters
        and moves it to ``device``.
    layer
        Module path of the explained layer; ``None`` takes the model's
        ``saliency_layer``, else a stride-16 feature map (see
        :func:`~wsi_saliency.saliency.layers.default_layer`).
    method
        One of :data:`~wsi_saliency.saliency.methods.METHODS`, or ``None`` for
        prediction only (the only choice for a TorchScript model).
    smoothing
        ``"none"``, ``"backward-hook"`` (default; predictions unchanged) or
        ``"forward-hook"`` (changes predictions; :meth:`predict` and :meth:`run` then
        both use the modified network, so probabilities match the explanation).
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    autocast
        Mixed precision (bfloat16 where supported, else float16) on CUDA; ignored with
        a warning on the CPU.
    target
        Explained class (index or class name); ``None`` is the model's tumour class.
    ig_steps
        Integration points for ``integrated-gradients``.

    Raises
    ------
    ConfigError
        Unknown method/smoothing/device/target, or a layer that is not a feature map
        computed once per forward pass.
    LayerNotFoundError
        Unknown layer name (the message lists the closest names).
    SaliencyUnsupportedError
        Saliency asked of a TorchScript model.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        layer: str | None = None,
        method: str | None = "gradient",
        smoothing: str = "backward-hook",
        device: str | torch.device = "cpu",
        autocast: bool = False,
        target: int | str | None = None,
        ig_steps: int = 16,
    ) -> None:
        spec = model.spec
        self._spec = spec
        self._method = None if method is None else _choice(method, METHODS, "method")
        self._smoothing = _choice(smoothing, SMOOTHING_MODES, "smoothing")
        if spec.torchscript and self._method is not None:
            raise SaliencyUnsupportedError(
                f"{spec.source}: a TorchScript model ({spec.weights_file}) serves prediction "
                "only; for saliency provide config.json with a named architecture and "
                "model.safetensors (state dict)"
            )
        if spec.torchscript and self._smoothing == "forward-hook":
            raise SaliencyUnsupportedError(
                f"{spec.source}: forward-hook smoothing cannot hook a TorchScript model; use "
                "smoothing 'none' or provide config.json + model.safetensors"
            )
        if ig_steps < 1:
            raise ConfigError(f"ig_steps must be >= 1, got {ig_steps}")
        self._ig_steps = int(ig_steps)
        self._device = resolve_device(device)
        self._autocast = bool(autocast) and self._device.type == "cuda"
        if autocast and not self._autocast:
            warnings.warn("autocast is only used on CUDA; running in float32 on the CPU",
                          stacklevel=2)
        self._target = self._resolve_target(target)
        module = model.module
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        module.to(self._device)
        self._module = module
        self._mean = torch.tensor(spec.mean, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=self._device).view(1, 3, 1, 1)
        self._layer_name = ""
        self._map_shape: tuple[int, int] = (0, 0)
        self._stem: str | None = None
        self._layer_module: torch.nn.Module | None = None
        if spec.torchscript:
            return
        if layer is not None:
            get_layer(module, layer)  # unknown name -> LayerNotFoundError before any tracing
        infos = trace_layers(module, spec.input_size)
        name = layer or spec.saliency_layer or default_layer(infos)
        self._layer_module = get_layer(module, name)
        info = self._layer_info(infos, name)
        assert info.shape is not None
        self._layer_name = name
        self._map_shape = (info.shape[1], info.shape[2])
        if self._method == "deeplift":
            reused = [i.name for i in infos if i.calls > 1 and i.kind in _DEEPLIFT_NONLINEAR]
            if reused:
                raise SaliencyUnsupportedError(
                    f"deeplift needs every non-linearity module to run once, but {reused[0]!r}"
                    f" runs {next(i.calls for i in infos if i.name == reused[0])} times (shared "
                    "module); use method 'integrated-gradients' or 'gradient'"
                )
        mods = dict(module.named_modules())
        convs = [i for i in infos if isinstance(mods.get(i.name), torch.nn.Conv2d)]
        # the stem (left alone by forward-hook smoothing) is the first convolution to run
        self._stem = min(convs, key=lambda i: i.start).name if convs else None

    # ------------------------------------------------------------------ properties
    @property
    def map_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the saliency maps (the layer's resolution at the model input size)."""
        if self._method is None:
            raise SaliencyUnsupportedError("this engine was built for prediction only "
                                           "(method=None)")
        return self._map_shape

    @property
    def stem(self) -> str | None:
        """Module path of the stem convolution (the first to run; ``forward-hook`` leaves it)."""
        return self._stem

    @property
    def layer(self) -> str:
        """Module path of the explained layer (empty for prediction-only engines)."""
        return self._layer_name

    @property
    def method(self) -> str | None:
        """Attribution method (``None``: prediction only)."""
        return self._method

    @property
    def smoothing(self) -> str:
        """Smoothing mode."""
        return self._smoothing

    @property
    def device(self) -> torch.device:
        """Device the network runs on."""
        return self._device

    @property
    def autocast(self) -> bool:
        """Whether mixed precision is in use."""
        return self._autocast

    @property
    def target(self) -> int:
        """Index of the explained class."""
        return self._target

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the model's classes (columns of the probabilities)."""
        return self._spec.class_names

    # ------------------------------------------------------------------ helpers
    def _resolve_target(self, target: int | str | None) -> int:
        names = self._spec.class_names
        if target is None:
            return self._spec.tumor_class
        if isinstance(target, str):
            if target in names:
                return names.index(target)
            if target.lstrip("-").isdigit():
                target = int(target)
            else:
                raise ConfigError(f"target {target!r} is not one of the classes {list(names)}")
        if isinstance(target, bool) or not isinstance(target, int) \
                or not 0 <= target < len(names):
            raise ConfigError(f"target {target!r} must be a class index in 0..{len(names) - 1} "
                              f"or one of {list(names)}")
        return target

    def _layer_info(self, infos: list[LayerInfo], name: str) -> LayerInfo:
        info = next((i for i in infos if i.name == name), None)
        if info is None:
            raise ConfigError(f"layer {name!r} does not run in the forward pass; choose one "
                              "listed by 'wsi-saliency layers'")
        if info.shape is None:
            raise ConfigError(f"layer {name!r} ({info.kind}) does not output a (C, h, w) "
                              "feature map; choose one listed by 'wsi-saliency layers'")
        if info.calls != 1:
            raise ConfigError(f"layer {name!r} runs {info.calls} times per forward pass (a "
                              "shared module); choose one listed by 'wsi-saliency layers'")
        return info

    def _autocast_ctx(self) -> contextlib.AbstractContextManager[Any]:
        if not self._autocast:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def preprocess(self, tiles: TileBatch) -> torch.Tensor:
        """Turn uint8 tiles ``(B, H, W, 3)`` into the normalised input ``(B, 3, S, S)``.

        Scales to 0..1, resizes (bilinear, antialiased) to the model's input size if
        needed, and normalises with the model's mean and std, on the engine's device.
        """
        if isinstance(tiles, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(tiles))
        elif isinstance(tiles, torch.Tensor):
            t = tiles
        else:
            raise TypeError(f"tiles must be a numpy array or torch tensor, got "
                            f"{type(tiles).__name__}")
        if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
            raise ValueError(f"tiles must be uint8 (B, H, W, 3); got {t.dtype} "
                             f"{tuple(t.shape)}")
        x = t.to(self._device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        size = self._spec.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)
        return ((x - self._mean) / self._std).contiguous()

    @contextlib.contextmanager
    def _forward_hooks(self) -> Iterator[None]:
        """Forward-hook smoothing (it changes the network, so prediction uses it too)."""
        handles: list[RemovableHandle] = []
        try:
            if self._smoothing == "forward-hook":
                handles = register_smoothing_hooks(self._module, "forward-hook",
                                                   stem=self._stem)
            yield
        finally:
            for h in handles:
                h.remove()

    def _empty(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        h, w = self._map_shape
        return (np.zeros((0, self._spec.num_classes), np.float32),
                np.zeros((0, h, w), np.float32))

    # ------------------------------------------------------------------ public
    def predict(self, tiles: TileBatch) -> npt.NDArray[np.float32]:
        """Class probabilities ``(B, C)`` float32 of uint8 tiles ``(B, H, W, 3)``."""
        if len(tiles) == 0:
            return self._empty()[0]
        x = self.preprocess(tiles)
        with torch.inference_mode(), self._forward_hooks(), self._autocast_ctx():
            logits = self._module(x)
        probs: npt.NDArray[np.float32] = (
            torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float32, copy=False))
        return probs

    def attributions(self, tiles: TileBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C)`` and per-channel layer attributions ``(B, C_l, h, w)``.

        The channel-resolved attributions behind :meth:`run`'s maps (float32, on the
        CPU); the paper's TV metric is computed on these.
        """
        if self._method is None or self._layer_module is None:
            raise SaliencyUnsupportedError("this engine was built for prediction only "
                                           "(method=None)")
        # gradients are needed even if the caller runs under no_grad / inference_mode
        with torch.inference_mode(False), torch.enable_grad():
            x = self.preprocess(tiles)
            if self._method in CAPTUM_METHODS:
                return self._captum(x)
            return self._single_pass(x)

    def _single_pass(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._layer_module is not None and self._method is not None
        captured: list[torch.Tensor] = []
        name = self._layer_name

        def capture(_m: torch.nn.Module, _args: Any, out: Any) -> torch.Tensor:
            if not isinstance(out, torch.Tensor):
                raise SaliencyUnsupportedError(f"layer {name!r} returned "
                                               f"{type(out).__name__}, not a tensor")
            if captured:
                raise SaliencyUnsupportedError(f"layer {name!r} ran twice in one forward "
                                               "pass; choose a layer that runs once")
            leaf = out.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf.clone()  # a non-leaf, so in-place ops after the layer are fine

        handles: list[RemovableHandle] = []
        try:
            handles.append(self._layer_module.register_forward_hook(capture))
            handles.extend(register_smoothing_hooks(self._module, self._smoothing,
                                                    stem=self._stem))
            with torch.enable_grad(), self._autocast_ctx():
                logits = self._module(x)
            if not captured:
                raise SaliencyUnsupportedError(f"layer {name!r} did not run in the forward "
                                               "pass")
            act = captured[0]
            if not logits.requires_grad:
                raise SaliencyUnsupportedError(
                    f"the logits do not depend on layer {name!r} through autograd; choose "
                    "another layer")
            score = logits[:, self._target].float().sum()
            (grad,) = torch.autograd.grad(score, act, allow_unused=True)
            if grad is None:
                grad = torch.zeros_like(act)
        finally:
            for h in handles:
                h.remove()
        attr = channel_attribution(self._method, grad.float(), act.detach().float())
        return logits.detach().float().cpu(), attr.cpu()

    def _captum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._layer_module is not None and self._method is not None
        handles: list[RemovableHandle] = []
        try:
            handles.extend(register_smoothing_hooks(self._module, self._smoothing,
                                                    stem=self._stem))
            with self._autocast_ctx():
                attr = captum_layer_attribution(self._method, self._module,
                                                self._layer_module, x, self._target,
                                                n_steps=self._ig_steps)
                with torch.no_grad():
                    logits = self._module(x)
        finally:
            for h in handles:
                h.remove()
        return logits.detach().float().cpu(), attr.float().cpu()

    def run(self, tiles: TileBatch) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Probabilities and saliency maps of a batch of tiles.

        Parameters
        ----------
        tiles
            uint8 ``(B, H, W, 3)`` RGB, numpy or torch (any device); resized to the
            model's input size when ``H, W`` differ from it.

        Returns
        -------
        probabilities : numpy.ndarray
            ``(B, num_classes)`` float32 softmax.
        maps : numpy.ndarray
            ``(B, h, w)`` float32 raw signed attribution of the target logit at the
            layer, averaged over channels (``grad-cam``: ReLU of the channel sum), with
            ``(h, w) = map_shape``.
        """
        if len(tiles) == 0:
            return self._empty()
        logits, attr = self.attributions(tiles)
        assert self._method is not None
        probs = torch.softmax(logits, dim=1).numpy().astype(np.float32, copy=False)
        maps = reduce_channels(self._method, attr).numpy().astype(np.float32, copy=False)
        return probs, maps

