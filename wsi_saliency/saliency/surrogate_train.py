"""Distilling bilinear surrogates from a user's own slides (``wsi-saliency surrogate``).

No labels are needed: tissue tiles are sampled from the slides (seeded, balanced across
slides, optionally balanced across the classes the model predicts), the classifier is
frozen in eval mode, and each surrogate learns to reproduce its strided convolution's
output from that convolution's input (L1, summed over the replaced convolutions, Adam),
as in Smooth Deep Saliency. Held-out tiles measure the fidelity of the substituted
network. The result is a model folder (:func:`write_surrogate_folder`) that ``run
--model`` takes with ``--smoothing bilinear``.

Training checkpoints into ``OUT/.surrogate-work/`` (tiles, surrogates, optimiser, the
position in the epoch) every ``checkpoint_every_s`` seconds, at every epoch's end and
when interrupted; running the same command again resumes where it stopped and gives
the same weights as an uninterrupted run (on the CPU, for a seed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsi_saliency.errors import ConfigError
from wsi_saliency.models import LoadedModel
from wsi_saliency.saliency.choices import TRAIN_PRECISIONS
from wsi_saliency.saliency.engine import resolve_device
from wsi_saliency.saliency.surrogate import SurrogateSet, TrainResult, capture_conv_io
from wsi_saliency.saliency.surrogate_fidelity import fidelity, tv_figures
from wsi_saliency.saliency.surrogate_folder import write_card, write_surrogate_folder
from wsi_saliency.saliency.surrogate_tiles import (
    Tiles,
    TileSample,
    preprocess_tiles,
    sample_tiles,
)

__all__ = [
    "WORK_DIR",
    "ProgressFn",
    "TrainResult",
    "TrainSettings",
    "distill",
    "settings_key",
    "train_surrogates",
    "training_card",
]

log = logging.getLogger(__name__)

#: Checkpoint folder inside the output folder (removed when the folder is complete).
WORK_DIR = ".surrogate-work"

#: ``progress(step, total_steps, loss)`` after every optimiser step.
ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainSettings:
    """How the surrogates are trained.

    Parameters
    ----------
    epochs
        Passes over the training tiles.
    batch_size
        Tiles per optimiser step.
    lr
        Adam learning rate at the start; it decays to 0 over the run (cosine).
    seed
        Seed of the surrogates' initialisation and of the tile order.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    precision
        ``"auto"`` (bfloat16 autocast on a CUDA device that supports it, else float32),
        ``"fp32"`` or ``"bf16"`` (CUDA only): the names ``run --precision`` uses.
    checkpoint_every_s
        Seconds between checkpoints within an epoch (one is also written at the end of
        every epoch and when interrupted).
    warm_start
        Start each surrogate from its convolution's weights (see
        :class:`~wsi_saliency.saliency.surrogate.BilinearSurrogate`) instead of
        PyTorch's random initialisation (the paper's). Faster to converge, but the
        surrogate then starts as (and stays close to) the backward hook's smoothing.
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    checkpoint_every_s: float = 60.0
    warm_start: bool = False

    def check(self) -> None:
        """Raise :class:`ConfigError` for a bad value."""
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.precision not in TRAIN_PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r} is not one of "
                              f"{', '.join(TRAIN_PRECISIONS)}")




def _autocast(device: torch.device, precision: str) -> tuple[str, Any]:
    if precision == "fp32" or device.type != "cuda":
        if precision == "bf16":
            raise ConfigError("--precision bf16 needs a CUDA device; use fp32 on the CPU")
        return "float32", contextlib.nullcontext
    if not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            raise ConfigError("this GPU does not support bfloat16; use --precision fp32")
        return "float32", contextlib.nullcontext
    return "bfloat16", lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def _layer_losses(surrogates: SurrogateSet,
                  got: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [F.l1_loss(s(got[n][0]).float(), got[n][1].float()) for n, s in surrogates.items()]


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train_surrogates(
    model: LoadedModel,
    tiles: Tiles,
    settings: TrainSettings,
    *,
    work_dir: Path | None = None,
    key: str = "",
    progress: ProgressFn | None = None,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train one surrogate per replaced convolution on ``tiles``, classifier frozen.

    Every step runs the frozen classifier (eval mode, no gradients) on a batch,
    records each replaced convolution's input and output, and takes one Adam step on
    ``sum over layers of mean |surrogate(input) - output|``. The classifier's
    parameters and buffers are never written.

    Parameters
    ----------
    model
        The classifier (not TorchScript).
    tiles
        uint8 ``(N, S, S, 3)`` training tiles.
    settings
        Epochs, batch size, learning rate, seed, device, precision.
    work_dir
        Checkpoint folder; ``None`` trains without checkpoints. A checkpoint there with
        the same ``key`` is resumed.
    key
        Identifies the settings a checkpoint belongs to.
    progress
        ``progress(step, total_steps, loss)`` after every step.
    stop_after_steps
        Stop (as if interrupted, after checkpointing) once this many steps are done;
        for tests of resuming.

    Returns
    -------
    TrainResult

    Raises
    ------
    KeyboardInterrupt
        After writing a checkpoint (when ``work_dir`` is given).
    """
    settings.check()
    device = resolve_device(settings.device)
    precision, autocast = _autocast(device, settings.precision)
    module = model.module
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    module.to(device)
    torch.manual_seed(settings.seed)
    surrogates = SurrogateSet.for_module(module, model.spec.input_size,
                                         warm_start=settings.warm_start).to(device)
    surrogates.train()
    opt = torch.optim.Adam(surrogates.parameters(), lr=settings.lr)
    n = len(tiles)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    step_losses: list[float] = []
    epoch_losses: list[float] = []
    epoch, pos, seconds, resumed = 0, 0, 0.0, False
    ckpt = work_dir / "checkpoint.pt" if work_dir is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("key") == key:
            surrogates.load_state_dict(state["surrogates"])
            opt.load_state_dict(state["optimizer"])
            epoch, pos = int(state["epoch"]), int(state["pos"])
            step_losses = [float(v) for v in state["step_losses"]]
            epoch_losses = [float(v) for v in state["epoch_losses"]]
            seconds = float(state["seconds"])
            resumed = True
            log.info("resuming from %s: epoch %d, step %d", ckpt, epoch + 1, pos)

    def save() -> None:
        if ckpt is None:
            return
        _save_atomic({
            "key": key,
            "surrogates": surrogates.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch, "pos": pos,
            "step_losses": step_losses, "epoch_losses": epoch_losses,
            "seconds": seconds + (time.perf_counter() - t0),
        }, ckpt)

    t0 = time.perf_counter()
    last_save = t0
    done = epoch * steps_per_epoch + pos
    try:
        while epoch < settings.epochs:
            gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen).numpy()
            while pos < steps_per_epoch:
                idx = np.sort(order[pos * settings.batch_size:(pos + 1) * settings.batch_size])
                x = preprocess_tiles(model, tiles[idx], device)
                for group in opt.param_groups:  # cosine decay, a function of the step
                    group["lr"] = settings.lr * 0.5 * (1.0 + math.cos(math.pi * done / total))
                with capture_conv_io(module, surrogates.names) as got, torch.no_grad(), autocast():
                    module(x)
                with autocast():
                    loss = torch.stack(_layer_losses(surrogates, got)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = float(loss.detach())
                step_losses.append(value)
                pos += 1
                done += 1
                if progress is not None:
                    progress(done, total, value)
                now = time.perf_counter()
                if ckpt is not None and now - last_save >= settings.checkpoint_every_s:
                    save()
                    last_save = now
                if stop_after_steps is not None and done >= stop_after_steps:
                    raise KeyboardInterrupt
            epoch_losses.append(float(np.mean(step_losses[-steps_per_epoch:])))
            log.info("epoch %d/%d: loss %.5f", epoch + 1, settings.epochs, epoch_losses[-1])
            epoch, pos = epoch + 1, 0
            save()
            last_save = time.perf_counter()
    except KeyboardInterrupt:
        save()
        raise
    surrogates.eval().cpu()
    for p in surrogates.parameters():
        p.requires_grad_(False)
    return TrainResult(
        surrogates=surrogates, step_losses=step_losses, epoch_losses=epoch_losses,
        seconds=seconds + time.perf_counter() - t0, device=str(device), precision=precision,
        resumed=resumed)


def settings_key(model: LoadedModel, slides: Sequence[str | os.PathLike[str]],
                 **values: Any) -> str:
    """Hash of what a checkpoint depends on (weights, slides, sampling and training)."""
    payload = {"weights": model.spec.weights_sha256,
               "slides": [os.path.abspath(s) for s in slides], **values}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def training_card(result: TrainResult, sample: TileSample, settings: TrainSettings,
                  fid: dict[str, Any]) -> dict[str, Any]:
    """The ``sampling``, ``training`` and ``fidelity`` entries of the card."""
    n = len(sample.train)
    steps = len(result.step_losses)
    return {
        "sampling": {"per_slide": sample.per_slide, "per_class": sample.per_class},
        "training": {
            **{k: v for k, v in asdict(settings).items() if k != "checkpoint_every_s"},
            "tiles": n, "steps": steps, "device": result.device,
            "precision": result.precision, "seconds": round(result.seconds, 2),
            "tiles_per_s": round(n * settings.epochs / max(result.seconds, 1e-9), 2),
            "epoch_losses": result.epoch_losses, "resumed": result.resumed,
        },
        "fidelity": fid,
    }


def distill(
    model: LoadedModel,
    slides: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    settings: TrainSettings,
    *,
    n_tiles: int = 512,
    n_heldout: int = 64,
    stratify: bool = True,
    copy_weights: bool = True,
    min_tissue: float = 0.5,
    mpp: float | None = None,
    backend: str = "auto",
    with_tv: bool = True,
    trust_code: bool = False,
    progress: ProgressFn | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Sample tiles, train the surrogates, measure fidelity and write the model folder.

    Resumes from ``OUT/.surrogate-work/`` when it holds a checkpoint of the same
    settings (model weights, slides, tiles, seed, sampling, batch size, learning rate,
    precision); the folder is removed when the model folder is complete.

    Parameters
    ----------
    model
        The classifier.
    slides
        Slide files to draw tiles from.
    out
        The surrogate model folder.
    settings
        Training settings.
    n_tiles, n_heldout, stratify, min_tissue, mpp, backend
        See :func:`sample_tiles`.
    copy_weights
        Copy the classifier weights into ``out`` (else reference them by path).
    with_tv
        Also measure the maps' total variation (none / backward-hook / bilinear).
    trust_code
        The model folder may run its own code (needed to reload it for ``with_tv``).
    progress, stop_after_steps
        See :func:`train_surrogates`.

    Returns
    -------
    dict
        The card (``surrogate.json``).
    """
    settings.check()
    out_dir = Path(out)
    work = out_dir / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    key = settings_key(model, slides, tiles=n_tiles, heldout=n_heldout, seed=settings.seed,
                       stratify=stratify, min_tissue=min_tissue, mpp=mpp,
                       batch_size=settings.batch_size, lr=settings.lr,
                       precision=settings.precision, warm_start=settings.warm_start,
                       epochs=settings.epochs)
    cache = work / "tiles.npz"
    sample: TileSample | None = None
    if cache.is_file() and (work / "key.txt").is_file() \
            and (work / "key.txt").read_text().strip() == key:
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            sample = TileSample(train=z["train"], heldout=z["heldout"],
                                per_slide=meta["per_slide"], per_class=meta["per_class"])
        log.info("resuming with the %d tiles drawn before", len(sample.train))
    if sample is None:
        for stale in work.iterdir():
            stale.unlink()
        t0 = time.perf_counter()
        sample = sample_tiles(slides, model, n_tiles=n_tiles, n_heldout=n_heldout,
                              seed=settings.seed, stratify=stratify, device=settings.device,
                              min_tissue=min_tissue, mpp=mpp, backend=backend)
        log.info("%d + %d tiles drawn in %.1f s", len(sample.train), len(sample.heldout),
                 time.perf_counter() - t0)
        meta = json.dumps({"per_slide": sample.per_slide, "per_class": sample.per_class})
        np.savez(work / "tiles.tmp.npz", train=sample.train, heldout=sample.heldout,
                 meta=np.asarray(meta))
        (work / "tiles.tmp.npz").replace(cache)
        (work / "key.txt").write_text(key + "\n")
    result = train_surrogates(model, sample.train, settings, work_dir=work, key=key,
                              progress=progress, stop_after_steps=stop_after_steps)
    device = str(resolve_device(settings.device))
    fid = fidelity(model, result.surrogates, sample.heldout, device=device)
    card = write_surrogate_folder(out_dir, model,
                                  result, training_card(result, sample, settings, fid),
                                  copy_weights=copy_weights)
    if with_tv:
        card["tv"] = tv_figures(out_dir, sample.heldout, device=device, trust_code=trust_code)
        write_card(out_dir, card)
    shutil.rmtree(work, ignore_errors=True)
    return card
