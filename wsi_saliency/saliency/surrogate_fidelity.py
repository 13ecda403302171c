"""How closely a surrogate-substituted network follows the original, and how smooth its maps are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_saliency.models import LoadedModel
from wsi_saliency.saliency.engine import SaliencyEngine, resolve_device
from wsi_saliency.saliency.surrogate import (
    SurrogateSet,
    capture_conv_io,
    surrogates_substituted,
)
from wsi_saliency.saliency.surrogate_tiles import Tiles, preprocess_tiles

__all__ = ["fidelity", "tv_figures"]


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
            x = preprocess_tiles(model, tiles[i:i + batch_size], dev)
            with capture_conv_io(module, surrogates.names) as got:
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
