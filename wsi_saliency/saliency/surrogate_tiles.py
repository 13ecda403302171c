"""Tiles for surrogate training: drawn from slides, and turned into model input.

Tiles come from the same tissue detection, grid and readers as ``run`` (the model's
tile size and spacing, no overlap), seeded, split evenly across the slides and
optionally balanced across the classes the model predicts; a seeded disjoint subset is
held out for the fidelity figures.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from wsi_saliency.errors import ConfigError, NoTissueError
from wsi_saliency.models import LoadedModel
from wsi_saliency.saliency.engine import SaliencyEngine

__all__ = ["TileSample", "Tiles", "preprocess_tiles", "sample_tiles"]

log = logging.getLogger(__name__)

Tiles = npt.NDArray[np.uint8]


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


def preprocess_tiles(model: LoadedModel, tiles: Tiles, device: torch.device) -> torch.Tensor:
    """uint8 tiles ``(B, H, W, 3)`` -> the model's normalised input ``(B, 3, S, S)``.

    As :meth:`~wsi_saliency.saliency.SaliencyEngine.preprocess`: scale to 0..1, resize
    (bilinear, antialiased) to the input size if needed, normalise.
    """
    spec = model.spec
    x = torch.from_numpy(np.ascontiguousarray(tiles)).to(device).permute(0, 3, 1, 2)
    x = x.float().div_(255.0)
    if x.shape[-2:] != (spec.input_size, spec.input_size):
        x = F.interpolate(x, size=(spec.input_size,) * 2, mode="bilinear",
                          align_corners=False, antialias=True)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()
