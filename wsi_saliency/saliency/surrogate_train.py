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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from wsi_saliency import __version__
from wsi_saliency.errors import ConfigError, NoTissueError, OutputError
from wsi_saliency.models import LoadedModel
from wsi_saliency.models.surrogate_ref import SURROGATE_MANIFEST, SURROGATE_WEIGHTS
from wsi_saliency.models.weights import sha256_file
from wsi_saliency.saliency.engine import SaliencyEngine, resolve_device
from wsi_saliency.saliency.surrogate import (
    SurrogateSet,
    save_surrogates,
    surrogates_substituted,
)

__all__ = [
    "WORK_DIR",
    "TileSample",
    "TrainResult",
    "TrainSettings",
    "fidelity",
    "sample_tiles",
    "train_surrogates",
    "write_surrogate_folder",
]

log = logging.getLogger(__name__)

#: Checkpoint folder inside the output folder (removed when the folder is complete).
WORK_DIR = ".surrogate-work"
CARD_MD = "SURROGATE_CARD.md"
LOSS_PNG = "loss_curve.png"

Tiles = npt.NDArray[np.uint8]
#: ``progress(step, total_steps, loss)`` after every optimiser step.
ProgressFn = Callable[[int, int, float], None]


# ----------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class TileSample:
    """Tiles drawn from slides for training and held-out fidelity.

    Parameters
    ----------
    train, heldout
        uint8 ``(N, S, S, 3)`` tiles (disjoint).
    per_slide
        ``{slide path: tiles drawn}``.
    per_class
        ``{class name: tiles drawn}`` by the model's predicted class (empty when not
        stratified).
    """

    train: Tiles
    heldout: Tiles
    per_slide: dict[str, int]
    per_class: dict[str, int] = field(default_factory=dict)


def _quotas(available: Sequence[int], total: int) -> list[int]:
    """Split ``total`` as evenly as possible over slides with ``available`` tiles each."""
    quotas = [0] * len(available)
    left = total
    open_ = [i for i, a in enumerate(available) if a > 0]
    while left > 0 and open_:
        share, extra = divmod(left, len(open_))
        for rank, i in enumerate(open_):
            want = share + (1 if rank < extra else 0)
            take = min(want, available[i] - quotas[i])
            quotas[i] += take
            left -= take
        open_ = [i for i in open_ if quotas[i] < available[i]]
        if share == 0 and extra == 0:
            break
    return quotas


def sample_tiles(
    slides: Sequence[str | os.PathLike[str]],
    model: LoadedModel,
    *,
    n_tiles: int,
    n_heldout: int,
    seed: int = 0,
    stratify: bool = True,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    min_tissue: float = 0.5,
    tissue_spacing: float = 8.0,
    mpp: float | None = None,
    backend: str = "auto",
) -> TileSample:
    """Draw tissue tiles at the model's tile size and spacing from ``slides``.

    Tiles come from the same grid, tissue detection and reader as ``run`` (no
    overlap). The total ``n_tiles + n_heldout`` is split evenly across slides (a slide
    with fewer tissue tiles gives all it has, the others make up the rest). With
    ``stratify``, each slide's share is balanced across the classes the model predicts
    (from a pool of three times the share), as the paper balanced tumour-predicted and
    normal-predicted tiles. Held-out tiles are a seeded random subset of the drawn ones.

    Parameters
    ----------
    slides
        Slide files.
    model
        The classifier (its ``patch_size`` and ``spacing`` set the tiles).
    n_tiles, n_heldout
        Training and held-out tiles.
    seed
        Seed of every random choice.
    stratify
        Balance across predicted classes.
    device, batch_size
        For the predictions that stratify.
    min_tissue, tissue_spacing
        Tile selection (``tiling.min_tissue``) and tissue thumbnail spacing.
    mpp, backend
        Spacing override and slide reader, as for ``run``.

    Returns
    -------
    TileSample

    Raises
    ------
    NoTissueError
        The slides hold fewer tissue tiles than asked for.
    WsiSaliencyError
        A slide cannot be read (named).
    """
    from wsi_saliency.readers import open_slide
    from wsi_saliency.tiling import make_grid, read_tiles
    from wsi_saliency.tissue import detect_tissue

    if n_tiles < 1 or n_heldout < 1:
        raise ConfigError(f"--tiles and --heldout must be >= 1 (got {n_tiles}, {n_heldout})")
    spec = model.spec
    rng = np.random.default_rng(seed)
    grids = []
    for path in slides:
        with open_slide(Path(path), backend=backend, mpp=mpp) as reader:
            mask = detect_tissue(reader, spacing=tissue_spacing)
            grids.append(make_grid(reader.info, mask, tile_size=spec.patch_size,
                                   spacing=spec.spacing, overlap=0.0, min_tissue=min_tissue))
    total = n_tiles + n_heldout
    available = [len(g) for g in grids]
    if sum(available) < total:
        raise NoTissueError(f"the slides hold {sum(available)} tissue tiles, fewer than the "
                            f"{total} asked for (--tiles + --heldout); add slides or ask "
                            "for fewer tiles")
    quotas = _quotas(available, total)
    engine = (SaliencyEngine(model, method=None, smoothing="none", device=device)
              if stratify else None)
    chunks: list[Tiles] = []
    per_slide: dict[str, int] = {}
    per_class: dict[str, int] = {}
    for path, grid, quota in zip(slides, grids, quotas, strict=True):
        per_slide[str(path)] = quota
        if quota == 0:
            continue
        pool_n = min(len(grid), 3 * quota) if engine is not None else quota
        pool = np.sort(rng.choice(len(grid), size=pool_n, replace=False))
        with open_slide(Path(path), backend=backend, mpp=mpp) as reader:
            tiles = read_tiles(reader, grid, pool)
        if engine is not None:
            preds = np.concatenate([
                engine.predict(tiles[i:i + batch_size]).argmax(axis=1)
                for i in range(0, len(tiles), batch_size)])
            order = _round_robin(preds, rng)[:quota]
            for c in preds[order]:
                name = spec.class_names[int(c)]
                per_class[name] = per_class.get(name, 0) + 1
            tiles = tiles[np.sort(order)]
        chunks.append(tiles)
        log.info("%s: %d tiles drawn from %d tissue tiles", path, quota, len(grid))
    all_tiles = np.concatenate(chunks)
    perm = rng.permutation(len(all_tiles))
    heldout = all_tiles[perm[:n_heldout]]
    train = all_tiles[np.sort(perm[n_heldout:])]
    return TileSample(train=train, heldout=heldout, per_slide=per_slide, per_class=per_class)


def _round_robin(labels: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Indices ordered so that every prefix is as balanced across labels as possible."""
    groups = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    out: list[int] = []
    for k in range(max((len(g) for g in groups), default=0)):
        out.extend(int(g[k]) for g in groups if k < len(g))
    return np.asarray(out, dtype=np.int64)


# ----------------------------------------------------------------------------- training
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
        ``"float32"`` or ``"bfloat16"`` (CUDA only).
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
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"--precision {self.precision!r} is not one of auto, float32, "
                              "bfloat16")


@dataclass
class TrainResult:
    """Trained surrogates and how training went.

    Parameters
    ----------
    surrogates
        On the CPU, eval mode.
    step_losses
        Loss of every optimiser step (sum over layers of the mean L1).
    epoch_losses
        Mean step loss of every epoch.
    seconds
        Training time (summed over resumed sessions; sampling excluded).
    device, precision
        Where and how it ran.
    resumed
        True when training continued from a checkpoint.
    """

    surrogates: SurrogateSet
    step_losses: list[float]
    epoch_losses: list[float]
    seconds: float
    device: str
    precision: str
    resumed: bool = False


def _autocast(device: torch.device, precision: str) -> tuple[str, Any]:
    if precision == "float32" or device.type != "cuda":
        if precision == "bfloat16":
            raise ConfigError("--precision bfloat16 needs a CUDA device; use float32 on the "
                              "CPU")
        return "float32", contextlib.nullcontext
    if not torch.cuda.is_bf16_supported():
        if precision == "bfloat16":
            raise ConfigError("this GPU does not support bfloat16; use --precision float32")
        return "float32", contextlib.nullcontext
    return "bfloat16", lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)


@contextlib.contextmanager
def _capture(module: nn.Module, names: Sequence[str]) -> Iterator[dict[str, tuple[torch.Tensor,
                                                                             torch.Tensor]]]:
    """Record ``(input, output)`` of the named convolutions (detached), hooks removed after."""
    got: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    mods = dict(module.named_modules())
    handles = []

    def hook(name: str) -> Any:
        def fn(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            got[name] = (args[0].detach(), out.detach())

        return fn

    try:
        for n in names:
            handles.append(mods[n].register_forward_hook(hook(n)))
        yield got
    finally:
        for h in handles:
            h.remove()


def _preprocess(model: LoadedModel, tiles: Tiles, device: torch.device) -> torch.Tensor:
    spec = model.spec
    x = torch.from_numpy(np.ascontiguousarray(tiles)).to(device).permute(0, 3, 1, 2)
    x = x.float().div_(255.0)
    if x.shape[-2:] != (spec.input_size, spec.input_size):
        x = F.interpolate(x, size=(spec.input_size,) * 2, mode="bilinear",
                          align_corners=False, antialias=True)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


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
                x = _preprocess(model, tiles[idx], device)
                for group in opt.param_groups:  # cosine decay, a function of the step
                    group["lr"] = settings.lr * 0.5 * (1.0 + math.cos(math.pi * done / total))
                with _capture(module, surrogates.names) as got, torch.no_grad(), autocast():
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


# ----------------------------------------------------------------------------- fidelity
def fidelity(
    model: LoadedModel,
    surrogates: SurrogateSet,
    tiles: Tiles,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> dict[str, Any]:
    """How closely the surrogate-substituted network follows the original on ``tiles``.

    Parameters
    ----------
    model
        The classifier.
    surrogates
        Its trained surrogates.
    tiles
        Held-out uint8 tiles.
    device, batch_size
        Where and in what batches to compute (float32).

    Returns
    -------
    dict
        ``tiles``; ``top_class_agreement`` (fraction of tiles whose top class is the
        same); ``mean_abs_dp`` and ``max_abs_dp`` (per tile the largest absolute change
        of a class probability, averaged / maximised over tiles); ``layers``: per
        replaced convolution the mean absolute error of its surrogate given the
        original input (``l1``) and that error relative to the mean absolute output
        (``relative_l1``).
    """
    dev = resolve_device(device)
    module = model.module.eval().to(dev)
    surrogates = surrogates.eval().to(dev)
    p_orig, p_sur = [], []
    err = {n: 0.0 for n in surrogates.names}
    mag = {n: 0.0 for n in surrogates.names}
    count = 0
    with torch.no_grad():
        for i in range(0, len(tiles), batch_size):
            x = _preprocess(model, tiles[i:i + batch_size], dev)
            with _capture(module, surrogates.names) as got:
                p_orig.append(torch.softmax(module(x).float(), 1).cpu())
            for n, s in surrogates.items():
                inp, out = got[n]
                err[n] += float((s(inp) - out).abs().mean()) * len(x)
                mag[n] += float(out.abs().mean()) * len(x)
            with surrogates_substituted(module, surrogates):
                p_sur.append(torch.softmax(module(x).float(), 1).cpu())
            count += len(x)
    po, ps = torch.cat(p_orig), torch.cat(p_sur)
    dp = (ps - po).abs().amax(dim=1)
    surrogates.cpu()
    return {
        "tiles": int(count),
        "top_class_agreement": float((po.argmax(1) == ps.argmax(1)).float().mean()),
        "mean_abs_dp": float(dp.mean()),
        "max_abs_dp": float(dp.max()),
        "layers": {n: {"l1": err[n] / count, "relative_l1": err[n] / max(mag[n], 1e-12)}
                   for n in surrogates.names},
    }


def tv_figures(model_dir: Path, tiles: Tiles, *, layer: str | None = None,
               device: str = "cpu", batch_size: int = 16,
               trust_code: bool = False) -> dict[str, float]:
    """Mean normalised TV of the ``gradient`` maps of ``tiles`` per smoothing mode.

    Parameters
    ----------
    model_dir
        A surrogate model folder (loaded with :func:`~wsi_saliency.models.load_model`).
    tiles
        uint8 tiles.
    layer
        Explained layer (``None``: the model's).
    device, batch_size
        Where and in what batches.
    trust_code
        Passed to :func:`~wsi_saliency.models.load_model`.

    Returns
    -------
    dict
        ``{"none": tv, "backward-hook": tv, "bilinear": tv}`` (lower is smoother).
    """
    from wsi_saliency.models import load_model
    from wsi_saliency.saliency.metrics import total_variation

    out: dict[str, float] = {}
    for mode in ("none", "backward-hook", "bilinear"):
        engine = SaliencyEngine(load_model(model_dir, trust_code=trust_code), layer=layer, method="gradient",
                                smoothing=mode, device=device)
        tvs = [total_variation(engine.attributions(tiles[i:i + batch_size])[1])
               for i in range(0, len(tiles), batch_size)]
        out[mode] = float(np.concatenate(tvs).mean())
    return out


# ----------------------------------------------------------------------------- folder
def settings_key(model: LoadedModel, slides: Sequence[str | os.PathLike[str]],
                 **values: Any) -> str:
    """Hash of what a checkpoint depends on (weights, slides, sampling and training)."""
    payload = {"weights": model.spec.weights_sha256,
               "slides": [os.path.abspath(s) for s in slides], **values}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _plot_loss(result: TrainResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    steps = np.arange(1, len(result.step_losses) + 1)
    ax.plot(steps, result.step_losses, lw=0.6, alpha=0.5, label="step")
    if result.epoch_losses:
        per = len(result.step_losses) / len(result.epoch_losses)
        ax.plot(per * np.arange(1, len(result.epoch_losses) + 1), result.epoch_losses, "o-",
                ms=3, label="epoch mean")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("L1 summed over layers")
    ax.set_title("surrogate training loss", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _card_markdown(card: dict[str, Any]) -> str:
    fid = card["fidelity"]
    tr = card["training"]
    lines = [
        f"# Bilinear surrogate for {card['model']['name']}",
        "",
        "Learned stand-ins for the strided convolutions after the stem (Smooth Deep "
        "Saliency's `bilinear` variant): `Conv3x3 -> bilinear resize -> Conv3x3`, trained "
        "with the classifier frozen to reproduce each convolution's output (L1, Adam). "
        "Use it with `wsi-saliency run --model THIS_FOLDER --smoothing bilinear`.",
        "",
        f"- classifier weights: `{card['base_weights']['file']}` (SHA-256 "
        f"`{card['base_weights']['sha256']}`)",
        f"- replaced convolutions: {', '.join(f'`{n}`' for n in card['surrogate']['layers'])}",
        f"- tiles: {tr['tiles']} training + {fid['tiles']} held-out from "
        f"{len(card['sampling']['per_slide'])} slide(s), seed {tr['seed']}"
        + (f", by predicted class {card['sampling']['per_class']}"
           if card["sampling"]["per_class"] else ""),
        f"- epochs: {tr['epochs']}, batch {tr['batch_size']}, lr {tr['lr']}, "
        f"{tr['device']} {tr['precision']}, {tr['seconds']:.1f} s "
        f"({tr['tiles_per_s']:.1f} tiles/s)",
        f"- final epoch loss: {tr['epoch_losses'][-1]:.5f}",
        "",
        "## Fidelity on held-out tiles",
        "",
        f"- top-class agreement: {100 * fid['top_class_agreement']:.2f} %",
        f"- |dp| (largest class-probability change per tile): mean {fid['mean_abs_dp']:.4f}, "
        f"max {fid['max_abs_dp']:.4f}",
        "",
        "| replaced convolution | L1 | relative L1 |",
        "|---|---|---|",
        *[f"| `{n}` | {v['l1']:.4g} | {v['relative_l1']:.3f} |"
          for n, v in fid["layers"].items()],
        "",
    ]
    if card.get("tv"):
        tv = card["tv"]
        lines += ["## Smoothness (normalised TV of `gradient` maps, held-out tiles)", "",
                  "| none | backward-hook | bilinear |", "|---|---|---|",
                  f"| {tv['none']:.4f} | {tv['backward-hook']:.4f} | {tv['bilinear']:.4f} |",
                  ""]
    lines += [f"![loss curve]({LOSS_PNG})", ""]
    return "\n".join(lines)


def _base_weights_path(model: LoadedModel) -> Path:
    if model.surrogate is not None and model.surrogate.base_weights is not None:
        return model.surrogate.base_weights
    return Path(model.spec.source) / model.spec.weights_file


def write_surrogate_folder(
    out: Path,
    model: LoadedModel,
    result: TrainResult,
    card: dict[str, Any],
    *,
    copy_weights: bool = True,
) -> dict[str, Any]:
    """Write the surrogate model folder (everything but ``surrogate.json``'s ``tv``).

    Writes ``config.json`` (the original, verbatim), the classifier weights (copied,
    or referenced by absolute path and SHA-256 with ``copy_weights=False``), an
    in-house architecture's ``.py`` file, ``surrogate.safetensors``,
    ``loss_curve.png``, ``SURROGATE_CARD.md`` and, last, ``surrogate.json``.

    Parameters
    ----------
    out
        The folder (created if needed).
    model
        The classifier the surrogates were trained for.
    result
        The training result.
    card
        Card entries so far (``sampling``, ``training``, ``fidelity``, ``tv``).
    copy_weights
        Copy the classifier weights into the folder (else reference them).

    Returns
    -------
    dict
        The card as written to ``surrogate.json``.
    """
    src = Path(model.spec.source)
    out.mkdir(parents=True, exist_ok=True)
    config_text = (src / "config.json").read_text(encoding="utf-8")
    config = json.loads(config_text)
    weights = _base_weights_path(model)
    if copy_weights:
        rel = str(config.get("weights") or weights.name)
        if rel == SURROGATE_WEIGHTS:
            raise OutputError(f"{weights}: the classifier weights may not be called "
                              f"{SURROGATE_WEIGHTS}; rename them")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if weights.resolve() != target.resolve():
            shutil.copyfile(weights, target)
        base_file = rel
    else:
        base_file = str(weights.resolve())
    arch = str(config.get("architecture", ""))
    if ":" in arch and arch.split(":", 1)[0].endswith(".py"):
        code = arch.split(":", 1)[0]
        if (src / code).resolve() != (out / code).resolve():
            (out / code).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / code, out / code)
    if (src / "config.json").resolve() != (out / "config.json").resolve():
        (out / "config.json").write_text(config_text, encoding="utf-8")
    save_surrogates(result.surrogates, out / SURROGATE_WEIGHTS,
                    {"base_weights_sha256": model.spec.weights_sha256})
    _plot_loss(result, out / LOSS_PNG)
    full = {
        "format": "wsi-saliency-surrogate-card/1",
        "wsi_saliency_version": __version__,
        "model": {"name": model.spec.name, "architecture": model.spec.architecture,
                  "source": str(src)},
        "base_weights": {"file": base_file, "sha256": model.spec.weights_sha256},
        "surrogate": {"file": SURROGATE_WEIGHTS,
                      "sha256": sha256_file(out / SURROGATE_WEIGHTS),
                      "layers": list(result.surrogates.names),
                      "design": "Conv3x3 -> bilinear resize (align_corners=False) -> Conv3x3, "
                                "same groups as the replaced convolution",
                      "parameters": int(sum(p.numel() for p in result.surrogates.parameters()))},
        **card,
        "loss_curve": LOSS_PNG,
    }
    write_card(out, full)
    return full


def write_card(out: Path, card: dict[str, Any]) -> None:
    """Write ``SURROGATE_CARD.md`` and, atomically and last, ``surrogate.json``."""
    (out / CARD_MD).write_text(_card_markdown(card), encoding="utf-8")
    tmp = out / (SURROGATE_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / SURROGATE_MANIFEST)


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


# ----------------------------------------------------------------------------- all of it
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
