"""Pixel-level scores on the heatmap grid: probability and saliency against the lesions.

Domains (heatmap pixels; the lesion mask is rasterised on the heatmap grid):

* **probability**: pixels covered by a tile *or* inside a lesion; uncovered pixels count
  as probability 0, so a lesion the tissue detector missed counts against the run.
  Scores: AUROC, average precision (the step-wise sum ``sum (R_n - R_{n-1}) P_n`` over
  distinct thresholds, scikit-learn's definition) and Dice of ``probability >= 0.5``
  (the threshold of ``regions.geojson``).
* **saliency** (localisation inside tissue): pixels covered by a tile. Scores, on slides
  with lesion and non-lesion pixels there:

  - AUROC of the positive saliency ``max(s, 0)`` against the lesion mask;
  - Dice of the top-k % saliency pixels (ranked by signed saliency, ties in row-major
    order; ``round(k N / 100)`` pixels, at least one) with the lesion mask, for
    k = 1..100; the best k and its Dice are reported (Brocki et al., arXiv 2209.15398);
  - pointing game: for every tile predicted tumour (``tiles.csv``) whose footprint holds
    lesion pixels, whether the maximum-saliency pixel of its footprint (first in
    row-major order on ties) is a lesion pixel. Tumour-predicted tiles without any lesion
    are counted separately (they are false alarms; pointing is undefined there).

Pooled over slides: probability AUROC / AP from 65,536-bin histograms over [0, 1]
(bounded memory whatever the cohort; within 1e-4 of the exact value), Dice from summed
counts; saliency scores as the mean over slides (raw saliency scales differ between
slides), the pooled top-k curve as the mean of the per-slide curves, the pointing game
from summed hits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from wsi_saliency.scoring.run_output import TileTable

__all__ = [
    "HISTOGRAM_BINS",
    "BinnedCounts",
    "SlidePixelScores",
    "average_precision",
    "dice",
    "pixel_auroc_ap",
    "pointing_game",
    "slide_pixel_scores",
    "topk_dice",
]

#: Bins of the pooled probability histograms.
HISTOGRAM_BINS = 65536
#: Probability threshold of the Dice score.
DICE_THRESHOLD = 0.5


def _tie_group_counts(
    scores: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int, int]:
    """Cumulative ``(tp, fp)`` at each distinct score, highest first, and ``(P, N)``."""
    s = np.asarray(scores).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    del order
    tp = np.cumsum(y_sorted, dtype=np.int64)
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1]
    del s_sorted, y_sorted
    tp = tp[last]
    fp = last.astype(np.int64) + 1 - tp
    return tp, fp, int(y.sum()), int(y.size - y.sum())


def pixel_auroc_ap(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """``(AUROC, average precision)`` from one sort (exact; ties count half in the AUROC).

    The AUROC is the trapezoidal area under the ROC through every distinct threshold,
    which equals the Mann-Whitney statistic with ties counted half (:func:`roc_auc`).
    """
    if np.asarray(scores).size == 0:
        return float("nan"), float("nan")
    tp, fp, n_pos, n_neg = _tie_group_counts(scores, labels)
    if n_pos == 0:
        return float("nan"), float("nan")
    precision = tp / (tp + fp)
    ap = float(np.sum(np.diff(np.r_[0, tp]) / n_pos * precision))
    if n_neg == 0:
        return float("nan"), ap
    tpr = np.r_[0, tp] / n_pos
    fpr = np.r_[0, fp] / n_neg
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return auc, ap


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds (NaN w/o positives)."""
    return pixel_auroc_ap(scores, labels)[1]


def dice(pred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """``2 |P & T| / (|P| + |T|)``; NaN when both are empty."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    den = int(p.sum()) + int(t.sum())
    return float(2.0 * int((p & t).sum()) / den) if den else float("nan")


@dataclass
class BinnedCounts:
    """Histogram of scores in [0, 1] split by label, for pooled AUROC and AP.

    Parameters
    ----------
    n_bins
        Number of equal bins over [0, 1].
    """

    n_bins: int = HISTOGRAM_BINS
    pos: npt.NDArray[np.int64] = field(init=False)
    neg: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.pos = np.zeros(self.n_bins, dtype=np.int64)
        self.neg = np.zeros(self.n_bins, dtype=np.int64)

    def add(self, scores: npt.ArrayLike, labels: npt.ArrayLike) -> None:
        """Count scores (clipped to [0, 1]) with their labels."""
        s = np.clip(np.asarray(scores, dtype=np.float64).ravel(), 0.0, 1.0)
        y = np.asarray(labels, dtype=bool).ravel()
        b = np.minimum((s * self.n_bins).astype(np.int64), self.n_bins - 1)
        self.pos += np.bincount(b[y], minlength=self.n_bins)
        self.neg += np.bincount(b[~y], minlength=self.n_bins)

    def auroc(self) -> float:
        """AUROC with scores in one bin counted as ties (NaN without both labels)."""
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        above = np.cumsum(self.pos[::-1])[::-1] - self.pos  # positives in higher bins
        u = float(np.sum(self.neg * (above + 0.5 * self.pos)))
        return u / (n_pos * n_neg)

    def average_precision(self) -> float:
        """AP with one threshold per bin edge (NaN without positives)."""
        n_pos = int(self.pos.sum())
        if n_pos == 0:
            return float("nan")
        keep = (self.pos + self.neg)[::-1] > 0
        tp = np.cumsum(self.pos[::-1])[keep]
        fp = np.cumsum(self.neg[::-1])[keep]
        precision = tp / (tp + fp)
        recall = tp / n_pos
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def topk_dice(
    saliency: npt.ArrayLike, lesion: npt.ArrayLike, ks: range = range(1, 101)
) -> npt.NDArray[np.float64]:
    """Dice of the top-k % saliency pixels with the lesion mask, for each ``k`` in ``ks``."""
    s = np.asarray(saliency, dtype=np.float64).ravel()
    y = np.asarray(lesion, dtype=bool).ravel()
    n, n_les = s.size, int(y.sum())
    if n == 0:
        return np.full(len(ks), np.nan)
    order = np.argsort(-s, kind="stable")
    cum = np.cumsum(y[order])
    out = []
    for k in ks:
        nk = max(1, int(round(k * n / 100.0)))
        out.append(2.0 * float(cum[nk - 1]) / (nk + n_les))
    return np.asarray(out)


def pointing_game(
    saliency: npt.NDArray[np.floating],
    lesion: npt.NDArray[np.bool_],
    tiles: TileTable,
    *,
    step: int,
    map_size: int,
) -> tuple[int, int, int]:
    """``(hits, tiles with lesion, tumour-predicted tiles)`` of the pointing game."""
    h, w = saliency.shape
    hits = eligible = n_tumour = 0
    for r, c in zip(
        tiles.rows[tiles.tumour_predicted], tiles.cols[tiles.tumour_predicted], strict=True
    ):
        n_tumour += 1
        i0, j0 = int(r) * step, int(c) * step
        i1, j1 = min(h, i0 + map_size), min(w, j0 + map_size)
        if i0 >= i1 or j0 >= j1:
            continue
        les = lesion[i0:i1, j0:j1]
        if not les.any():
            continue
        win = saliency[i0:i1, j0:j1]
        if not np.isfinite(win).any():
            continue
        eligible += 1
        k = int(np.nanargmax(win))
        if les.ravel()[k]:
            hits += 1
    return hits, eligible, n_tumour


@dataclass(frozen=True)
class SlidePixelScores:
    """Pixel-level scores of one slide (NaN where undefined).

    Parameters
    ----------
    n_pixels, n_lesion_pixels
        Pixels of the probability domain, and lesion pixels among them.
    auroc, average_precision, dice
        Probability scores.
    tp, fp, fn
        Pixel counts at the Dice threshold.
    saliency_auroc
        AUROC of the positive saliency inside tissue.
    topk_dice
        Dice of the top-k % saliency for k = 1..100 (empty when undefined).
    pointing_hits, pointing_tiles, tumour_tiles
        Pointing-game hits, tumour-predicted tiles holding lesion, tumour-predicted tiles.
    """

    n_pixels: int
    n_lesion_pixels: int
    auroc: float
    average_precision: float
    dice: float
    tp: int
    fp: int
    fn: int
    saliency_auroc: float
    topk_dice: tuple[float, ...]
    pointing_hits: int
    pointing_tiles: int
    tumour_tiles: int

    @property
    def best_topk(self) -> tuple[int, float]:
        """``(k, Dice)`` of the best top-k % saliency Dice (``(0, nan)`` when undefined)."""
        if not self.topk_dice:
            return 0, float("nan")
        k = int(np.argmax(self.topk_dice))
        return k + 1, float(self.topk_dice[k])

    @property
    def pointing_accuracy(self) -> float:
        """Pointing-game hits / tumour-predicted tiles holding lesion."""
        return self.pointing_hits / self.pointing_tiles if self.pointing_tiles else math.nan


def slide_pixel_scores(
    probability: npt.NDArray[np.floating],
    saliency: npt.NDArray[np.floating],
    lesion: npt.NDArray[np.bool_],
    tiles: TileTable,
    *,
    step: int,
    map_size: int,
    pooled: BinnedCounts | None = None,
) -> SlidePixelScores:
    """Pixel-level scores of one slide; adds its probability pixels to ``pooled``."""
    covered = np.isfinite(probability)
    domain = covered | lesion
    p = np.nan_to_num(probability[domain], nan=0.0)  # uncovered lesion pixels: 0
    y = lesion[domain]
    if pooled is not None:
        pooled.add(p, y)
    pred = p >= DICE_THRESHOLD
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    sal_dom = np.isfinite(saliency) & covered
    s = saliency[sal_dom]
    ys = lesion[sal_dom]
    del domain, sal_dom
    both = bool(ys.any()) and not bool(ys.all())
    hits, eligible, n_tumour = pointing_game(saliency, lesion, tiles, step=step, map_size=map_size)
    auroc, ap = pixel_auroc_ap(p, y)
    return SlidePixelScores(
        n_pixels=int(p.size),
        n_lesion_pixels=int(y.sum()),
        auroc=auroc,
        average_precision=ap,
        dice=dice(pred, y),
        tp=tp,
        fp=fp,
        fn=fn,
        saliency_auroc=pixel_auroc_ap(np.maximum(s, 0), ys)[0] if both else math.nan,
        topk_dice=tuple(float(v) for v in topk_dice(s, ys)) if both else (),
        pointing_hits=hits,
        pointing_tiles=eligible,
        tumour_tiles=n_tumour,
    )
