"""Batched prediction + hidden-layer saliency for tiles."""

from __future__ import annotations

import contextlib
import copy
import difflib
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from wsi_saliency.errors import ConfigError, SaliencyUnsupportedError
from wsi_saliency.models import LoadedModel
from wsi_saliency.models.surrogate_ref import check_surrogate
from wsi_saliency.saliency.choices import METHODS, SMOOTHING_MODES
from wsi_saliency.saliency.device import resolve_device
from wsi_saliency.saliency.fold import fold_batchnorm, fx_graph
from wsi_saliency.saliency.hooks import register_smoothing_hooks
from wsi_saliency.saliency.layers import LayerInfo, default_layer, get_layer, trace_layers
from wsi_saliency.saliency.methods import (
    CAPTUM_METHODS,
    captum_layer_attribution,
    channel_attribution,
    reduce_channels,
)
from wsi_saliency.saliency.precision import (
    FP16_GRAD_SCALE,
    autocast_context,
    resolve_precision,
    torch_dtype,
)
from wsi_saliency.saliency.stem import StemPlan, plan_stem, sliced_forward
from wsi_saliency.saliency.surrogate import SurrogateSet, load_surrogates, register_surrogates

__all__ = ["ENGINE_SMOOTHINGS", "SaliencyEngine", "prepared_module", "resolve_device"]

#: Smoothing modes of the engine: the hooks' modes plus ``"bilinear"`` (the model
#: folder's trained surrogates, :mod:`wsi_saliency.saliency.surrogate`); the same tuple as
#: :data:`wsi_saliency.saliency.choices.SMOOTHING_MODES`.
ENGINE_SMOOTHINGS: tuple[str, ...] = SMOOTHING_MODES

TileBatch = npt.NDArray[np.uint8] | torch.Tensor

# module types whose gradients Captum's DeepLift rewrites (and which must not be shared)
_DEEPLIFT_NONLINEAR = frozenset({
    "ReLU", "ReLU6", "ELU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "MaxPool1d",
    "MaxPool2d", "MaxPool3d",
})




def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value in allowed:
        return value
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{what} {value!r} is not one of {list(allowed)}{hint}")


def prepared_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The engine's own view of a model's module: a copy in eval mode, frozen, on ``device``.

    Parameters
    ----------
    module
        The caller's module (not changed).
    device
        Where the copy runs.

    Returns
    -------
    torch.nn.Module
        A deep copy (TorchScript modules included) with every parameter's
        ``requires_grad`` off.
    """
    with torch.no_grad():  # copies of parameters are new leaves (TorchScript clones them)
        view = copy.deepcopy(module)
    view.eval()
    for p in view.parameters():
        p.requires_grad_(False)
    return view.to(device)


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
        A loaded model. It is left untouched: the engine runs its own copy of the module
        (:func:`prepared_module`: eval mode, frozen parameters, on ``device``), so the
        caller's training flag, ``requires_grad`` and device stay as they were.
    layer
        Module path of the explained layer; ``None`` takes the model's
        ``saliency_layer``, else a stride-16 feature map (see
        :func:`~wsi_saliency.saliency.layers.default_layer`).
    method
        One of :data:`~wsi_saliency.saliency.methods.METHODS`, or ``None`` for
        prediction only (the only choice for a TorchScript model).
    smoothing
        ``"none"``, ``"backward-hook"`` (default; predictions unchanged),
        ``"forward-hook"`` (changes predictions; :meth:`predict` and :meth:`run` then
        both use the modified network, so probabilities match the explanation) or
        ``"bilinear"`` (the model folder's trained surrogates stand in for the strided
        convolutions after the stem, in prediction too; needs a folder written by
        ``wsi-saliency surrogate`` for these weights).
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    precision
        ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (CUDA only) or ``"auto"`` (see
        :func:`~wsi_saliency.saliency.precision.resolve_precision`). The network runs
        under autocast in that precision; attributions are computed and reduced in
        float32.
    channels_last
        Run the network in channels-last memory layout (faster on CPU and CUDA; same
        numbers up to float rounding). Switched off by itself when the model cannot run
        channels-last inputs (e.g. a ``view`` on a feature map).
    target
        Explained class (index or class name); ``None`` is the model's tumour class.
    ig_steps
        Integration points for ``integrated-gradients``.
    fold_bn
        Fold eval-mode ``BatchNorm2d`` layers into the convolution before them in the
        engine's copy of the network (:func:`~wsi_saliency.saliency.fold.fold_batchnorm`:
        the same function up to float rounding, one pass over each feature map less).
        Never for ``"bilinear"`` smoothing (its surrogates stand in for the convolutions
        as trained) nor across the explained layer.
    slice_stem
        On the CPU, run the network's stem (the per-sample layers it starts with, up
        to the first branch or to where the maps have shrunk to a quarter: ResNet's
        ``conv1 -> bn1 -> relu -> maxpool``) on cache-sized slices of the batch (:mod:`wsi_saliency.saliency.stem`; same numbers up to float
        rounding). Used for prediction and the single-pass methods with ``"none"`` or
        ``"backward-hook"`` smoothing, and never when the stem holds the explained layer.

    Raises
    ------
    ConfigError
        Unknown method/smoothing/device/target, or a layer that is not a feature map
        computed once per forward pass.
    SurrogateError
        ``"bilinear"`` for a model without a surrogate, or with one trained for other
        weights (a :class:`ConfigError`).
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
        precision: str = "fp32",
        channels_last: bool = True,
        target: int | str | None = None,
        ig_steps: int = 16,
        fold_bn: bool = True,
        slice_stem: bool = True,
    ) -> None:
        spec = model.spec
        self._spec = spec
        self._method = None if method is None else _choice(method, METHODS, "method")
        self._smoothing = _choice(smoothing, ENGINE_SMOOTHINGS, "smoothing")
        if spec.torchscript and self._method is not None:
            raise SaliencyUnsupportedError(
                f"{spec.source}: a TorchScript model ({spec.weights_file}) serves prediction "
                "only (method 'none'); for saliency provide config.json with a named "
                "architecture and model.safetensors (state dict)"
            )
        if spec.torchscript and self._smoothing in ("forward-hook", "bilinear"):
            raise SaliencyUnsupportedError(
                f"{spec.source}: {self._smoothing} smoothing cannot hook a TorchScript model; use "
                "smoothing 'none' or provide config.json + model.safetensors"
            )
        if ig_steps < 1:
            raise ConfigError(f"ig_steps must be >= 1, got {ig_steps}")
        self._ig_steps = int(ig_steps)
        self._device = resolve_device(device)
        self._precision = resolve_precision(precision, self._device)
        self._target = self._resolve_target(target)
        module = prepared_module(model.module, self._device)
        self._module = module
        self._mean = torch.tensor(spec.mean, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=self._device).view(1, 3, 1, 1)
        # uint8 -> normalised input in one pass: x * scale + shift
        self._scale = 1.0 / (255.0 * self._std)
        self._shift = -self._mean / self._std
        self._folded: tuple[str, ...] = ()
        self._stem_plan: StemPlan | None = None
        self._layer_name = ""
        self._map_shape: tuple[int, int] = (0, 0)
        self._stem: str | None = None
        self._layer_module: torch.nn.Module | None = None
        self._surrogates: SurrogateSet | None = None
        self._channels_last = bool(channels_last) and self._device.type in ("cpu", "cuda") \
            and self._accepts_channels_last()
        if spec.torchscript:
            return
        if self._smoothing == "bilinear":  # no surrogate / other weights: one-line error
            ref = check_surrogate(model.surrogate, spec.weights_sha256, spec.source)
            self._surrogates = load_surrogates(ref.weights, module, spec.input_size)
            self._surrogates.to(self._device)
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
        fold = fold_bn and self._smoothing != "bilinear"
        slice_ = (slice_stem and self._device.type == "cpu"
                  and self._smoothing in ("none", "backward-hook")
                  and self._method not in CAPTUM_METHODS)
        graph = fx_graph(module) if fold or slice_ else None  # one trace for both
        if fold and graph is not None:
            self._folded = tuple(fold_batchnorm(module, keep={name}, graph=graph))
            if self._folded and self._channels_last:
                module.to(memory_format=torch.channels_last)  # the new weights too
        if slice_ and graph is not None:
            size = spec.input_size
            sample = torch.zeros((1, 3, size, size), device=self._device)
            if self._channels_last:
                sample = sample.contiguous(memory_format=torch.channels_last)
            itemsize = torch.empty((), dtype=torch_dtype(self._precision)).element_size()
            self._stem_plan = plan_stem(module, sample, keep={name}, graph=graph,
                                        itemsize=itemsize)

    # ------------------------------------------------------------------ properties
    @property
    def module(self) -> torch.nn.Module:
        """The engine's own copy of the model's module (eval mode, frozen, on its device)."""
        return self._module

    @property
    def map_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the saliency maps (the layer's resolution at the model input size).

        Known for prediction-only engines too (the heatmap grid of ``--method none`` is
        the layer's), except for a TorchScript model, which has no layers to trace.
        """
        if self._map_shape == (0, 0):
            raise SaliencyUnsupportedError("this engine has no explained layer (a TorchScript "
                                           "model serves prediction only)")
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
    def precision(self) -> str:
        """Precision the network runs in: ``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        return self._precision

    @property
    def channels_last(self) -> bool:
        """Whether the network runs in channels-last memory layout."""
        return self._channels_last

    @property
    def folded_batchnorms(self) -> tuple[str, ...]:
        """Module paths of the batch norms folded into their convolutions (``fold_bn``)."""
        return self._folded

    @property
    def stem_plan(self) -> StemPlan | None:
        """The stem run on slices of the batch (``slice_stem``), or ``None``."""
        return self._stem_plan

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
        return autocast_context(self._precision, self._device)

    def _accepts_channels_last(self) -> bool:
        """Whether one channels-last sample runs through the model without error."""
        size = self._spec.input_size
        x = torch.zeros((1, 3, size, size), device=self._device)
        x = x.contiguous(memory_format=torch.channels_last)
        self._module.to(memory_format=torch.channels_last)
        try:
            with torch.inference_mode():
                self._module(x)
        except RuntimeError:
            self._module.to(memory_format=torch.contiguous_format)
            return False
        return True

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
        # (B, H, W, 3) viewed as (B, 3, H, W): channels-last strides, no copy
        u = t.to(self._device, non_blocking=True).permute(0, 3, 1, 2)
        size = self._spec.input_size
        if u.shape[-2:] != (size, size):
            x = F.interpolate(u.float().div_(255.0), size=(size, size), mode="bilinear",
                              align_corners=False, antialias=True)
            x = (x - self._mean) / self._std
        else:  # scale and normalise in one pass (same values up to float rounding)
            x = torch.addcmul(self._shift, u.float(), self._scale)
        if self._channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def _register_smoothing(self) -> list[RemovableHandle]:
        """The smoothing hooks, or the surrogates standing in for the strided convs."""
        if self._surrogates is not None:
            return register_surrogates(self._module, self._surrogates)
        return register_smoothing_hooks(self._module, self._smoothing, stem=self._stem)

    @contextlib.contextmanager
    def _forward_hooks(self) -> Iterator[None]:
        """Forward-hook / bilinear smoothing (they change the network, so prediction uses
        them too)."""
        handles: list[RemovableHandle] = []
        try:
            if self._smoothing in ("forward-hook", "bilinear"):
                handles = self._register_smoothing()
            yield
        finally:
            for h in handles:
                h.remove()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's forward pass (its stem sliced where :attr:`stem_plan` says)."""
        if self._stem_plan is None:
            return self._module(x)
        return sliced_forward(self._module, self._stem_plan, x)

    def _empty(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        h, w = self._map_shape
        return (np.zeros((0, self._spec.num_classes), np.float32),
                np.zeros((0, h, w), np.float32))

    # ------------------------------------------------------------------ public
    def prediction_network(self) -> contextlib.AbstractContextManager[None]:
        """The network as :meth:`predict` runs it: inside this context :attr:`module` has the
        forward-hook or bilinear smoothing applied (a no-op for the other modes); every hook
        is removed on exit. For scoring perturbed inputs the way a run reports them."""
        return self._forward_hooks()

    def predict(self, tiles: TileBatch) -> npt.NDArray[np.float32]:
        """Class probabilities ``(B, C)`` float32 of uint8 tiles ``(B, H, W, 3)``."""
        if len(tiles) == 0:
            return self._empty()[0]
        x = self.preprocess(tiles)
        with torch.inference_mode(), self._forward_hooks(), self._autocast_ctx():
            logits = self._forward(x)
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
            # smoothing first: a surrogate's output hook must run before the capture
            handles.extend(self._register_smoothing())
            handles.append(self._layer_module.register_forward_hook(capture))
            with torch.enable_grad(), self._autocast_ctx():
                logits = self._forward(x)
            if not captured:
                raise SaliencyUnsupportedError(f"layer {name!r} did not run in the forward "
                                               "pass")
            act = captured[0]
            if not logits.requires_grad:
                raise SaliencyUnsupportedError(
                    f"the logits do not depend on layer {name!r} through autograd; choose "
                    "another layer")
            score = logits[:, self._target].float().sum()
            scale = FP16_GRAD_SCALE if self._precision == "fp16" else 1.0
            (grad,) = torch.autograd.grad(score * scale if scale != 1.0 else score, act,
                                          allow_unused=True)
            if grad is None:
                grad = torch.zeros_like(act)
            elif scale != 1.0:
                grad = grad.float() / scale
        finally:
            for h in handles:
                h.remove()
        attr = channel_attribution(self._method, grad.float(), act.detach().float())
        return logits.detach().float().cpu(), attr.cpu()

    def _captum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._layer_module is not None and self._method is not None
        handles: list[RemovableHandle] = []
        try:
            handles.extend(self._register_smoothing())
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

