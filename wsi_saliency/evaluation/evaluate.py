"""Run an evaluation: sample tiles, compute maps per setting, score them.

:func:`evaluate` checks every setting against the model (unknown layer, method or
class) and samples every slide (unreadable slide, no tissue) before any map is
computed, so bad inputs fail fast. All work happens on a deep copy of the caller's
network; the caller's parameters, buffers and hooks are left exactly as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from wsi_saliency.config import RunConfig, resolve_model_defaults
from wsi_saliency.errors import ConfigError
from wsi_saliency.evaluation.agreement import pairwise_agreement, probability_change
from wsi_saliency.evaluation.faithfulness import STEPS, Curves, perturbation_curves
from wsi_saliency.evaluation.sampling import SlideSample, sample_slide
from wsi_saliency.evaluation.sanity import copy_model, randomisation_steps, randomise
from wsi_saliency.evaluation.settings import Setting
from wsi_saliency.evaluation.similarity import spearman, ssim
from wsi_saliency.evaluation.smoothness import block_seam_ratio
from wsi_saliency.models import LoadedModel
from wsi_saliency.saliency import SaliencyEngine
from wsi_saliency.saliency.engine import resolve_device
from wsi_saliency.saliency.hooks import smoothing_hooks
from wsi_saliency.saliency.layers import trace_layers
from wsi_saliency.saliency.methods import reduce_channels
from wsi_saliency.saliency.metrics import total_variation
from wsi_saliency.saliency.seams import SeamRatio

__all__ = ["EvaluationResult", "SanityResult", "SettingResult", "evaluate", "last_block"]

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class SanityResult:
    """Cascading randomisation of one setting: per step, per tile."""

    steps: tuple[str, ...]
    spearman: npt.NDArray[np.float64]      # (n_steps, n_tiles)
    spearman_abs: npt.NDArray[np.float64]  # (n_steps, n_tiles)
    ssim: npt.NDArray[np.float64]          # (n_steps, n_tiles)


@dataclass(frozen=True, eq=False)
class SettingResult:
    """Everything measured for one setting on the sampled tiles (all slides, in order)."""

    setting: Setting
    map_shape: tuple[int, int]
    probability: npt.NDArray[np.float64]   # (n,) target-class probability of this network
    maps: npt.NDArray[np.float32]          # (n, h, w)
    curves: Curves
    tv: npt.NDArray[np.float64]            # (n,)
    seams: tuple[SeamRatio | None, ...]    # one per slide
    sanity: SanityResult | None
    probability_change: dict[str, float] | None  # forward-hook: |dp| vs the plain network
    seconds: float


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """The result of :func:`evaluate`."""

    model: LoadedModel
    config: RunConfig
    slides: tuple[SlideSample, ...]
    settings: tuple[SettingResult, ...]
    agreement: dict[str, dict[str, float]]
    seed: int
    steps: int
    device: str
    targets: npt.NDArray[np.int64]         # (n,) class explained for each tile
    positive: npt.NDArray[np.bool_]        # (n,) the explained class is the tile's top class
    predicted: npt.NDArray[np.int64]       # (n,) top class of each tile (plain network)
    target: str                            # "predicted" or the fixed class name
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tiles(self) -> npt.NDArray[np.uint8]:
        """All sampled tiles, slide after slide."""
        return np.concatenate([s.tiles for s in self.slides])


def last_block(model: LoadedModel) -> str:
    """The deepest top-level module with a spatial map of at least 3 x 3 (ResNet ``layer4``).

    The layer of the Grad-CAM baseline (global pooling and the head are not candidates).
    """
    infos = trace_layers(model.module, model.spec.input_size)
    ok = [i for i in infos
          if i.shape is not None and i.calls == 1 and min(i.shape[1:]) >= 3]
    top = [i for i in ok if "." not in i.name] or ok
    if not top:
        raise ConfigError(f"{model.spec.source}: the model has no layer with a (C, h, w) output "
                          "for the Grad-CAM baseline; run with baselines off")
    return max(top, key=lambda i: i.order).name


class _Scorer:
    """Class probabilities of normalised inputs, with forward-hook smoothing if asked, or
    through an engine's own network (``bilinear``: its surrogates stand in, as in a run)."""

    def __init__(self, module: torch.nn.Module, smoothing: str, stem: str | None,
                 engine: SaliencyEngine | None = None) -> None:
        self._engine = engine
        self._module = engine.module if engine is not None else module
        self._mode = "forward-hook" if smoothing == "forward-hook" else "none"
        self._stem = stem

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._engine is not None:
            with torch.inference_mode(), self._engine.prediction_network():
                return torch.softmax(self._module(x).float(), dim=1)
        with torch.inference_mode(), smoothing_hooks(self._module, self._mode, stem=self._stem):
            return torch.softmax(self._module(x).float(), dim=1)

    def target(self, c: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Scoring function of class ``c`` only."""
        return lambda x: self(x)[:, c]


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _Engines:
    """One saliency engine per (setting, explained class), built when first needed."""

    def __init__(self, model: LoadedModel, device: torch.device) -> None:
        self._model = model
        self._device = device
        self._cache: dict[tuple[Setting, int | str | None], SaliencyEngine] = {}

    def get(self, s: Setting, target: int | str | None) -> SaliencyEngine:
        key = (s, target)
        if key not in self._cache:
            self._cache[key] = SaliencyEngine(
                self._model, layer=s.layer, method=s.method, smoothing=s.smoothing,
                device=self._device, target=target)
        return self._cache[key]


def _maps(engine: SaliencyEngine, tiles: npt.NDArray[np.uint8], batch: int
          ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Target probability, maps and TV of tiles, in batches."""
    probs, maps, tvs = [], [], []
    method = engine.method
    assert method is not None
    for sl in _batches(len(tiles), batch):
        logits, attr = engine.attributions(tiles[sl])
        probs.append(torch.softmax(logits, dim=1)[:, engine.target].double().numpy())
        maps.append(reduce_channels(method, attr).numpy().astype(np.float32))
        tvs.append(total_variation(attr))
    return np.concatenate(probs), np.concatenate(maps), np.concatenate(tvs)


def _maps_by_class(engines: _Engines, s: Setting, tiles: npt.NDArray[np.uint8],
                   targets: npt.NDArray[np.int64], batch: int
                   ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32],
                              npt.NDArray[np.float64]]:
    """:func:`_maps` with each tile explained for its own class ``targets[i]``."""
    n = len(tiles)
    h, w = engines.get(s, int(targets[0])).map_shape
    prob = np.zeros(n, np.float64)
    maps = np.zeros((n, h, w), np.float32)
    tv = np.zeros(n, np.float64)
    for c in np.unique(targets):
        idx = np.nonzero(targets == c)[0]
        prob[idx], maps[idx], tv[idx] = _maps(engines.get(s, int(c)), tiles[idx], batch)
    return prob, maps, tv


def _predict(scorer: _Scorer, engine: SaliencyEngine, tiles: npt.NDArray[np.uint8],
             batch: int) -> npt.NDArray[np.float64]:
    if len(tiles) == 0:
        return np.zeros((0, len(engine.class_names)), np.float64)
    return np.concatenate([scorer(engine.preprocess(tiles[sl])).double().cpu().numpy()
                           for sl in _batches(len(tiles), batch)])


def evaluate(
    model: LoadedModel,
    slides: Sequence[str | Path],
    config: RunConfig,
    settings: Sequence[Setting],
    *,
    n_tiles: int = 64,
    seed: int = 0,
    steps: int = STEPS,
    target: int | str | None = None,
    baselines: bool = True,
    sanity: bool = True,
    progress: ProgressFn | None = None,
) -> EvaluationResult:
    """Evaluate saliency settings on tissue tiles of slides.

    Parameters
    ----------
    model
        The classifier; it is deep-copied and never modified.
    slides
        Slide files.
    config
        Run configuration: slide, tissue, tiling (tile size, spacing, ``min_tissue``),
        ``inference.device`` and ``inference.batch_size`` are used.
    settings
        Layer x method x smoothing combinations to compare.
    n_tiles
        Tissue tiles per slide (seeded draw).
    seed
        Seed of the tile draw, of the random-map baseline and of the randomisation.
    steps
        Perturbation steps of the deletion/insertion curves.
    target
        Class explained and scored: ``None`` for ``config.model.target`` (the model's
        tumour class when that is None too, as in a run), a class name or index, or
        ``"predicted"`` for each tile's top class under the unmodified network.
    baselines
        Add Grad-CAM at the last block and a random map.
    sanity
        Run the cascading randomisation test.
    progress
        Called as ``progress(done, total)`` in work units.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    WsiSaliencyError
        Unknown layer/method/smoothing/target/device, unreadable slide, no tissue, ...
        raised before any map is computed.
    """
    t0 = time.perf_counter()
    if not settings:
        raise ConfigError("no saliency setting to evaluate; give --layer, --method and "
                          "--smoothing")
    if n_tiles < 1:
        raise ConfigError(f"--tiles must be at least 1, got {n_tiles}")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    config = resolve_model_defaults(config, model.spec)
    device = resolve_device(config.inference.device)
    predicted = target == "predicted"
    fixed = config.model.target if target is None else (None if predicted else target)
    batch = max(1, int(config.inference.batch_size))
    work = copy_model(model)  # every engine moves and hooks this copy only
    engines = _Engines(work, device)
    all_settings = list(dict.fromkeys(settings))
    checked = [engines.get(s, fixed) for s in all_settings]  # validates layer, method, class
    target_index = checked[0].target
    stem = checked[0].stem
    if baselines:
        gc = Setting(layer=last_block(work), method="grad-cam", smoothing="none", baseline=True)
        engines.get(gc, fixed)
        rnd = Setting(layer=checked[0].layer, method="random", smoothing="none", baseline=True)
        all_settings += [gc, rnd]
    t_check = time.perf_counter()
    samples = tuple(sample_slide(p, config, n_tiles, seed=seed) for p in slides)
    t_sample = time.perf_counter()
    tiles = np.concatenate([x.tiles for x in samples])
    n = len(tiles)
    cascade = randomisation_steps(work.module) if sanity else []
    total = n * (2 + len(cascade)) * len(all_settings)
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(done, total)

    plain = _Scorer(work.module, "none", stem)
    plain_probs = _predict(plain, checked[0], tiles, batch)
    if predicted:
        targets = plain_probs.argmax(axis=1).astype(np.int64)
        block_targets = []
        for x in samples:
            if x.block is None:
                block_targets.append(target_index)
            else:
                votes = _predict(plain, checked[0], x.block, batch).argmax(axis=1)
                block_targets.append(int(np.bincount(votes).argmax()))
    else:
        targets = np.full(n, target_index, np.int64)
        block_targets = [target_index] * len(samples)
    plain_prob = plain_probs[np.arange(n), targets]
    results: list[SettingResult] = []
    rng = np.random.default_rng(seed)
    for s in all_settings:
        ts = time.perf_counter()
        block_maps: list[npt.NDArray[Any] | None]
        if s.method == "random":
            h, w = checked[0].map_shape
            maps = rng.standard_normal((n, h, w)).astype(np.float32)
            tv = total_variation(maps[:, None])
            block_maps = [rng.standard_normal((len(x.block), h, w)) if x.block is not None
                          else None for x in samples]
            prob = plain_prob
        else:
            prob, maps, tv = _maps_by_class(engines, s, tiles, targets, batch)
            block_maps = [
                _maps(engines.get(s, c), x.block, batch)[1] if x.block is not None else None
                for x, c in zip(samples, block_targets, strict=True)]
        tick(n)
        seams = tuple(block_seam_ratio(bm, x.block_shape) if bm is not None else None
                      for bm, x in zip(block_maps, samples, strict=True))
        scorer = _Scorer(work.module, s.smoothing, stem,
                         engine=engines.get(s, int(targets[0]) if n else target_index)
                         if s.smoothing == "bilinear" and s.method != "random" else None)
        curves = _curves(scorer, checked[0], tiles, maps, targets, steps, batch, tick)
        changes = s.smoothing in ("forward-hook", "bilinear")  # they change the network
        dp = probability_change(prob, plain_prob) if changes else None
        san = None
        if sanity and s.method != "random":
            san = _cascade(work, s, device, tiles, maps, targets, cascade, seed, batch, tick)
        else:
            tick(n * len(cascade))
        results.append(SettingResult(
            setting=s, map_shape=(int(maps.shape[1]), int(maps.shape[2])), probability=prob,
            maps=maps, curves=curves, tv=np.asarray(tv, np.float64), seams=seams, sanity=san,
            probability_change=dp, seconds=time.perf_counter() - ts))
    agreement = pairwise_agreement({r.setting.label: r.maps for r in results
                                    if r.setting.method != "random"})
    t_end = time.perf_counter()
    return EvaluationResult(
        model=model, config=config, slides=samples, settings=tuple(results),
        agreement=agreement, seed=seed, steps=steps, device=str(device),
        targets=targets, positive=plain_probs.argmax(axis=1) == targets,
        predicted=plain_probs.argmax(axis=1).astype(np.int64), target="predicted" if predicted else model.spec.class_names[
            target_index],
        timings={"check": round(t_check - t0, 3), "sample": round(t_sample - t_check, 3),
                 "evaluate": round(t_end - t_sample, 3), "total": round(t_end - t0, 3)},
    )


def _curves(scorer: _Scorer, pre: SaliencyEngine, tiles: npt.NDArray[np.uint8],
            maps: npt.NDArray[np.float32], targets: npt.NDArray[np.int64], steps: int,
            batch: int, tick: Callable[[int], None]) -> Curves:
    """Perturbation curves of every tile, scored on its own class."""
    n = len(tiles)
    out = np.zeros((3, n, steps + 1), np.float64)
    for sl in _batches(n, batch):
        x = pre.preprocess(tiles[sl])
        t = targets[sl]
        for c in np.unique(t):
            idx = np.nonzero(t == c)[0]
            cur = perturbation_curves(scorer.target(int(c)), x[torch.as_tensor(idx)],
                                      maps[sl][idx], steps=steps, chunk=3 * batch)
            rows = np.arange(sl.start, sl.stop)[idx]
            out[0, rows], out[1, rows], out[2, rows] = (cur.deletion, cur.insertion,
                                                        cur.deletion_lerf)
        tick(sl.stop - sl.start)
    return Curves(deletion=out[0], insertion=out[1], deletion_lerf=out[2])


def _cascade(
    work: LoadedModel,
    s: Setting,
    device: torch.device,
    tiles: npt.NDArray[np.uint8],
    original: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    cascade: Sequence[Any],
    seed: int,
    batch: int,
    tick: Callable[[int], None],
) -> SanityResult:
    """Cascading randomisation of a fresh copy of the (unrandomised) working network."""
    rand = copy_model(work)
    rho, rho_abs, sim = [], [], []
    for k, step in enumerate(cascade):
        randomise(rand.module, step.modules, seed + 1000 + k)
        # fresh engines each step: an engine runs its own copy of the module, made when it
        # is built, so one built before this step would not see the new random weights
        engines = _Engines(rand, device)
        maps = _maps_by_class(engines, s, tiles, targets, batch)[1]
        rho.append(spearman(original, maps))
        rho_abs.append(spearman(np.abs(original), np.abs(maps)))
        sim.append(ssim(original, maps))
        tick(len(tiles))
    return SanityResult(steps=tuple(c.name for c in cascade), spearman=np.array(rho),
                        spearman_abs=np.array(rho_abs), ssim=np.array(sim))
