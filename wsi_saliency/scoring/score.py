"""Score a finished run against lesion annotations (:func:`score_run`).

Per slide: read ``run.json``, the probability and saliency heatmaps and ``tiles.csv``
(:mod:`~wsi_saliency.scoring.run_output`); find detections on the probability heatmap
(:mod:`~wsi_saliency.scoring.detections`); classify them on the level-5 evaluation mask
(:mod:`~wsi_saliency.scoring.masks`, :mod:`~wsi_saliency.scoring.froc`); rasterise the
lesions on the heatmap grid and compute the pixel scores
(:mod:`~wsi_saliency.scoring.pixel`). Then the cohort: FROC curve and score, slide-level
AUC, pooled pixel scores. Every annotation is read and checked before any heatmap is,
so a bad file stops the scoring at once. Only one slide's heatmaps are in memory at a
time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_saliency.errors import ConfigError
from wsi_saliency.scoring.annotations import Lesions, match_annotations, read_lesions
from wsi_saliency.scoring.detections import (
    DEFAULT_NMS_RADIUS_UM,
    DEFAULT_THRESHOLD,
    Detection,
    find_detections,
)
from wsi_saliency.scoring.froc import (
    FROC_RATES,
    FrocCurve,
    SlideHits,
    assign_detections,
    froc_curve,
    roc_auc,
    sensitivity_at,
)
from wsi_saliency.scoring.masks import evaluation_mask, heatmap_lesion_mask
from wsi_saliency.scoring.pixel import BinnedCounts, SlidePixelScores, slide_pixel_scores
from wsi_saliency.scoring.run_output import (
    RunSlide,
    failed_slides,
    find_run_slides,
    read_heatmaps,
    read_tile_table,
)

__all__ = ["SLIDE_SCORES", "RunScores", "ScoreParams", "SlideScore", "score_run"]

log = logging.getLogger(__name__)

#: Slide-level scores: the highest heatmap probability, or the highest tile probability.
SLIDE_SCORES: tuple[str, ...] = ("max", "tile-max")


@dataclass(frozen=True)
class ScoreParams:
    """How a run is scored.

    Parameters
    ----------
    level
        Camelyon16 evaluation-mask level (2**level level-0 px per pixel).
    threshold
        Detections must have a probability above this.
    nms_radius_um
        Non-maximum-suppression radius of the detections (um).
    slide_score
        One of :data:`SLIDE_SCORES`.
    rates
        FP-per-slide rates the FROC score averages over.
    """

    level: int = 5
    threshold: float = DEFAULT_THRESHOLD
    nms_radius_um: float = DEFAULT_NMS_RADIUS_UM
    slide_score: str = "max"
    rates: tuple[float, ...] = FROC_RATES

    def __post_init__(self) -> None:
        if self.slide_score not in SLIDE_SCORES:
            raise ConfigError(
                f"unknown slide score {self.slide_score!r}; use one of {', '.join(SLIDE_SCORES)}"
            )
        if not 0 <= self.level <= 12:
            raise ConfigError(f"evaluation level {self.level} out of range 0..12 (Camelyon16: 5)")
        if self.nms_radius_um < 0:
            raise ConfigError(f"NMS radius {self.nms_radius_um} um must be >= 0")


@dataclass(frozen=True)
class SlideScore:
    """Everything scored for one slide.

    Parameters
    ----------
    slide
        The run's record of the slide.
    annotation
        Annotation file, or ``None`` (negative slide).
    is_tumour
        Whether the slide has lesions.
    slide_score
        The slide-level score.
    detections
        Detections on the probability heatmap.
    hits
        FROC classification of the detections.
    pixel
        Pixel-level scores.
    """

    slide: RunSlide
    annotation: Path | None
    is_tumour: bool
    slide_score: float
    detections: tuple[Detection, ...]
    hits: SlideHits
    pixel: SlidePixelScores


@dataclass(frozen=True)
class RunScores:
    """The scores of a run.

    Parameters
    ----------
    run_out
        The run's output folder.
    params
        Scoring parameters.
    slides
        Per-slide scores, by folder name.
    curve
        FROC curve.
    sensitivities
        Sensitivity at each of ``params.rates``.
    froc_score
        Mean of ``sensitivities``.
    slide_auc
        Slide-level ROC AUC of ``slide_score``.
    pooled
        Pooled probability histogram.
    """

    run_out: Path
    params: ScoreParams
    slides: tuple[SlideScore, ...]
    curve: FrocCurve
    sensitivities: tuple[float, ...]
    froc_score: float
    slide_auc: float
    pooled: BinnedCounts = field(repr=False)

    def pooled_dice(self) -> float:
        """Dice at 0.5 from the summed pixel counts of every slide."""
        tp = sum(s.pixel.tp for s in self.slides)
        den = 2 * tp + sum(s.pixel.fp + s.pixel.fn for s in self.slides)
        return 2.0 * tp / den if den else math.nan

    def mean_over_tumour_slides(self, value: Callable[[SlideScore], float]) -> float:
        """Mean of ``value`` over tumour slides where it is defined."""
        v = [value(s) for s in self.slides if s.is_tumour]
        v = [x for x in v if math.isfinite(x)]
        return float(np.mean(v)) if v else math.nan

    def mean_topk_curve(self) -> np.ndarray:
        """Mean top-k % saliency Dice curve over slides where it is defined (k = 1..100)."""
        curves = [s.pixel.topk_dice for s in self.slides if s.pixel.topk_dice]
        return np.mean(np.asarray(curves), axis=0) if curves else np.full(100, np.nan)

    def pointing(self) -> tuple[int, int, int]:
        """Summed ``(hits, tumour tiles with lesion, tumour-predicted tiles)``."""
        return (
            sum(s.pixel.pointing_hits for s in self.slides),
            sum(s.pixel.pointing_tiles for s in self.slides),
            sum(s.pixel.tumour_tiles for s in self.slides),
        )


def _slide_score(kind: str, prob: np.ndarray, slide: RunSlide) -> float:
    if kind == "tile-max":
        t = read_tile_table(slide).probability
        t = t[np.isfinite(t)]
        return float(t.max()) if t.size else 0.0
    finite = prob[np.isfinite(prob)]
    return float(finite.max()) if finite.size else 0.0


def score_slide(slide: RunSlide, lesions: Lesions, params: ScoreParams,
                pooled: BinnedCounts | None = None) -> SlideScore:
    """Score one slide of a run against its lesions."""
    prob, sal = read_heatmaps(slide)
    detections = find_detections(
        prob,
        downsample=slide.downsample,
        pixel_size_um=slide.pixel_size_um,
        threshold=params.threshold,
        radius_um=params.nms_radius_um,
    )
    emask = (
        evaluation_mask(lesions.geometry, slide.dimensions, slide.mpp, level=params.level)
        if lesions.is_tumour
        else None
    )
    hits = assign_detections(slide.name, detections, emask)
    lesion_px = heatmap_lesion_mask(lesions.geometry, slide.shape, slide.downsample)
    pixel = slide_pixel_scores(
        prob, sal, lesion_px, read_tile_table(slide),
        step=slide.step, map_size=slide.map_size, pooled=pooled,
    )
    return SlideScore(
        slide=slide,
        annotation=lesions.source,
        is_tumour=lesions.is_tumour,
        slide_score=_slide_score(params.slide_score, prob, slide),
        detections=tuple(detections),
        hits=hits,
        pixel=pixel,
    )


def score_run(
    run_out: str | Path,
    annotations: Sequence[str],
    *,
    negatives: Sequence[str] | None = None,
    params: ScoreParams | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> RunScores:
    """Score every finished slide of a run against its annotations.

    Parameters
    ----------
    run_out
        The ``--out`` folder of ``wsi-saliency run``.
    annotations
        Annotation path patterns (``{stem}``, ``{name}``, ``{folder}``), tried in order.
    negatives
        Slides known to be negative (see
        :func:`~wsi_saliency.scoring.annotations.match_annotations`).
    params
        Scoring parameters (defaults: Camelyon16).
    progress
        Called as ``progress(done, total, slide_name)`` after each slide.

    Returns
    -------
    RunScores

    Raises
    ------
    InputError
        The run folder or a slide's outputs cannot be read.
    AnnotationError
        An annotation file is empty, malformed, or does not fit its slide.
    """
    params = params or ScoreParams()
    run_out = Path(run_out)
    slides = find_run_slides(run_out)
    failed = failed_slides(run_out)
    if failed:
        log.warning(
            "%d slide(s) failed in the run and have no outputs, so they are not scored "
            "(re-run them first): %s", len(failed), ", ".join(failed),
        )
    matched = match_annotations([(s.name, s.slide_file) for s in slides], annotations, negatives)
    lesions: dict[str, Lesions] = {}
    for s in slides:
        path = matched[s.name]
        if path is None:
            import shapely

            lesions[s.name] = Lesions(None, shapely.Polygon())
        else:
            les = read_lesions(path, s.dimensions)
            if not les.is_tumour:
                log.warning("%s: no lesion polygon in %s; scored as a negative slide", s.name, path)
            lesions[s.name] = les
    pooled = BinnedCounts()
    out: list[SlideScore] = []
    for k, s in enumerate(slides):
        out.append(score_slide(s, lesions[s.name], params, pooled))
        log.debug("%s: %d detections", s.name, len(out[-1].detections))
        if progress is not None:
            progress(k + 1, len(slides), s.name)
    curve = froc_curve([s.hits for s in out])
    sens = tuple(sensitivity_at(curve, params.rates))
    if curve.n_lesions == 0:
        log.warning("no lesion to detect (every slide negative or ITC only): no FROC score")
    return RunScores(
        run_out=run_out,
        params=params,
        slides=tuple(out),
        curve=curve,
        sensitivities=sens,
        froc_score=float(np.mean(sens)) if sens else math.nan,
        slide_auc=roc_auc([s.slide_score for s in out], [s.is_tumour for s in out]),
        pooled=pooled,
    )
