"""``wsi-saliency surrogate MODEL_DIR SLIDES... --out DIR``: distil bilinear surrogates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import click

from wsi_saliency.cli._logging import logging_options, progress_enabled, setup_logging
from wsi_saliency.cli.run import UsageFailure
from wsi_saliency.readers import BACKENDS
from wsi_saliency.saliency.choices import TRAIN_PRECISIONS

__all__ = ["surrogate"]

EXIT_INTERRUPTED = 130


@click.command(name="surrogate")
@click.argument("model_dir", type=str)
@click.argument("slides", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The surrogate model folder to write (run --model takes it).")
@click.option("--epochs", type=int, default=10, show_default=True,
              help="Passes over the training tiles.")
@click.option("--tiles", "n_tiles", type=int, default=512, show_default=True,
              help="Training tiles, split evenly across the slides.")
@click.option("--heldout", "n_heldout", type=int, default=64, show_default=True,
              help="Held-out tiles for the fidelity figures.")
@click.option("--stratify/--no-stratify", default=True, show_default=True,
              help="Balance each slide's tiles across the classes the model predicts.")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Tiles per optimiser step.")
@click.option("--lr", type=float, default=1e-3, show_default=True,
              help="Adam learning rate (cosine decay to 0).")
@click.option("--warm-start", is_flag=True,
              help="Start each surrogate from its convolution's weights (faster, less smooth).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the tile choice, the initialisation and the tile order.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--precision", type=click.Choice(TRAIN_PRECISIONS), default="auto",
              show_default=True, help="auto: bfloat16 autocast on CUDA where supported.")
@click.option("--min-tissue", type=float, default=0.5, show_default=True,
              help="Smallest tissue fraction of a sampled tile.")
@click.option("--mpp", type=float, default=None,
              help="Level-0 um/px for every slide, overriding metadata.")
@click.option("--backend", type=click.Choice(BACKENDS),
              default="auto", show_default=True, help="Slide reader.")
@click.option("--link-weights", is_flag=True,
              help="Reference the classifier weights by path and SHA-256 instead of copying.")
@click.option("--trust-model-code", is_flag=True,
              help="Let MODEL_DIR run its own Python code (file.py:callable architectures).")
@click.option("--overwrite", is_flag=True, help="Replace a surrogate already in --out.")
@logging_options
def surrogate(
    model_dir: str,
    slides: tuple[str, ...],
    out: Path,
    epochs: int,
    n_tiles: int,
    n_heldout: int,
    stratify: bool,
    batch_size: int,
    lr: float,
    warm_start: bool,
    seed: int,
    device: str,
    precision: str,
    min_tissue: float,
    mpp: float | None,
    backend: str,
    link_weights: bool,
    trust_model_code: bool,
    overwrite: bool,
    quiet: bool,
    log_level: str | None,
    log_format: str,
) -> None:
    """Train bilinear surrogates of MODEL_DIR's strided convolutions on tiles of SLIDES.

    MODEL_DIR is a model folder ('demo' for the bundled demo model). SLIDES are slide
    files, folders, quoted glob patterns or list files, as for 'run'. No labels are
    needed. The classifier is frozen; each strided convolution after the stem gets a
    Conv3x3 -> bilinear resize -> Conv3x3 surrogate trained to reproduce its output.
    OUT becomes a model folder for 'run --model OUT --smoothing bilinear', with a card
    (SURROGATE_CARD.md, surrogate.json, loss_curve.png) holding the fidelity figures.
    An interrupted run resumes when started again with the same options.
    """
    from wsi_saliency.batch import discover_slides
    from wsi_saliency.errors import WsiSaliencyError
    from wsi_saliency.models import load_model
    from wsi_saliency.models.surrogate_ref import SURROGATE_MANIFEST
    from wsi_saliency.saliency.engine import resolve_device
    from wsi_saliency.saliency.surrogate import surrogate_targets
    from wsi_saliency.saliency.surrogate_train import WORK_DIR, TrainSettings, distill

    setup_logging(log_level, log_format, quiet=quiet)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             device=device, precision=precision, warm_start=warm_start)
    try:
        settings.check()
        if n_tiles < 1 or n_heldout < 1:
            raise UsageFailure(f"--tiles and --heldout must be >= 1 (got {n_tiles}, "
                               f"{n_heldout})")
        if not 0.0 <= min_tissue <= 1.0:
            raise UsageFailure(f"--min-tissue must be in [0, 1], got {min_tissue}")
        paths = discover_slides(list(slides), exclude=[Path(os.path.abspath(out))])
        mdir = None if model_dir == "demo" and not Path(model_dir).is_dir() else model_dir
        model = load_model(mdir, trust_code=trust_model_code)
        if model.spec.torchscript:
            raise UsageFailure(f"{model.spec.source}: a TorchScript model cannot get a "
                               "surrogate; provide config.json + model.safetensors")
        resolve_device(device)
        surrogate_targets(model.module, model.spec.input_size)  # refusals before any slide
        if out.exists() and not out.is_dir():
            raise UsageFailure(f"--out {out} is a file; choose a folder")
        if (out / SURROGATE_MANIFEST).is_file():
            if not overwrite:
                raise UsageFailure(f"{out} already holds a surrogate; pass --overwrite or "
                                   "choose another --out")
            (out / SURROGATE_MANIFEST).unlink()
        if overwrite:
            shutil.rmtree(out / WORK_DIR, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
    except (WsiSaliencyError, OSError) as exc:
        raise UsageFailure(str(exc)) from exc

    bar: Any = None
    if progress_enabled(quiet=quiet, log_format=log_format):
        from tqdm import tqdm

        bar = tqdm(total=0, unit="step", desc="surrogate", dynamic_ncols=True)

    def progress(step: int, total: int, loss: float) -> None:
        if bar is None:
            return
        bar.total = total
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    try:
        card = distill(model, [str(p) for p in paths], out, settings, n_tiles=n_tiles,
                       n_heldout=n_heldout, stratify=stratify, copy_weights=not link_weights,
                       min_tissue=min_tissue, mpp=mpp, backend=backend,
                       trust_code=trust_model_code, progress=progress)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        click.echo(f"interrupted; the checkpoint is in {out / WORK_DIR}: run the same command "
                   "again to resume", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except WsiSaliencyError as exc:
        if bar is not None:
            bar.close()
        raise UsageFailure(str(exc)) from exc
    if bar is not None:
        bar.close()
    if not quiet:
        fid, tr = card["fidelity"], card["training"]
        click.echo(f"surrogate: {out} ({len(card['surrogate']['layers'])} convolutions, "
                   f"{tr['tiles']} tiles x {tr['epochs']} epochs in {tr['seconds']:.0f} s)")
        click.echo(f"held-out ({fid['tiles']} tiles): top-class agreement "
                   f"{100 * fid['top_class_agreement']:.1f} %, mean |dp| "
                   f"{fid['mean_abs_dp']:.4f}, max |dp| {fid['max_abs_dp']:.4f}")
        if "tv" in card:
            tv = card["tv"]
            click.echo(f"map TV: none {tv['none']:.3f}, backward-hook "
                       f"{tv['backward-hook']:.3f}, bilinear {tv['bilinear']:.3f}")
        click.echo(f"use it: wsi-saliency run SLIDES --out RESULTS --model {out} "
                   "--smoothing bilinear")
