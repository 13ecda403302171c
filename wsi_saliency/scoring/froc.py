"""Camelyon16 lesion-level FROC and slide-level ROC.

Matched to ``compute_FP_TP_Probs`` and ``computeFROC`` of the organisers'
``Evaluation_FROC.py`` (computationalpathologygroup/Camelyon16):

* on a tumour slide, a detection whose point falls on evaluation-mask label 0 is a
  false positive; one on a lesion label is a hit for that lesion (the lesion's
  probability is the highest of its hits); one on an ITC label counts for nothing;
* on a negative slide every detection is a false positive;
* every lesion and ITC label gets an entry in the true-positive list, 0 when it was not
  hit (ITCs always 0); the number of lesions to find is ``labels - ITCs``;
* the thresholds are the distinct values among all false-positive and true-positive
  entries except 0; at each threshold ``t`` the curve has ``(#FP >= t / #slides,
  #TP >= t / #lesions)``, then the point ``(0, 0)``;
* the FROC score is the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per
  slide, read off the curve by linear interpolation (``np.interp`` of the curve sorted
  by FP rate, as the challenge's published scripts do: where several points share an FP
  rate the highest sensitivity counts, below the first point the first sensitivity,
  beyond the last the last).

Differences: the original drops the *lowest* threshold (``all_probs[1:]``), meant to
drop the 0 of missed lesions and ITCs; when there is no such 0 (every lesion found, no
ITC) it drops the lowest real detection instead, so a perfect detector of three lesions
with no false positive scores 2/3. Here only the 0 is dropped, which is the same
whenever the original's list holds a 0 (``froc_curve(..., drop_lowest=True)`` gives the
original exactly). Probabilities are kept in float64 (the original stores hits in
float32). A slide is a tumour slide when its annotation holds a lesion (the original
looks at the file name).

The slide-level AUC is the area under the ROC of one score per slide (Mann-Whitney U,
ties counted half), as in the challenge's task 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from wsi_saliency.scoring.detections import Detection
from wsi_saliency.scoring.masks import EvaluationMask

__all__ = [
    "FROC_RATES",
    "FrocCurve",
    "SlideHits",
    "assign_detections",
    "froc_curve",
    "froc_score",
    "roc_auc",
    "roc_curve",
    "sensitivity_at",
]

#: False positives per slide at which the FROC score averages the sensitivity.
FROC_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class SlideHits:
    """Per-slide FROC input.

    Parameters
    ----------
    name
        Slide name.
    fp_probs
        Probabilities of the false-positive detections.
    tp_probs
        One entry per evaluation-mask label (lesions and ITCs, in label order): the
        highest probability of a detection on it, 0 if none (always 0 for ITCs).
    n_lesions
        Lesions to be found (labels that are not ITCs).
    n_itc
        ITC labels.
    outcomes
        Per detection (same order as given): ``"TP"``, ``"FP"`` or ``"ITC"``, and the
        label hit (0 for FP).
    """

    name: str
    fp_probs: tuple[float, ...]
    tp_probs: tuple[float, ...]
    n_lesions: int
    n_itc: int = 0
    outcomes: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    @property
    def n_detected(self) -> int:
        """Lesions hit by at least one detection."""
        return sum(1 for p in self.tp_probs if p > 0)


def assign_detections(
    name: str, detections: Sequence[Detection], mask: EvaluationMask | None
) -> SlideHits:
    """Classify a slide's detections against its evaluation mask.

    Parameters
    ----------
    name
        Slide name.
    detections
        Detections in level-0 px.
    mask
        The slide's evaluation mask; ``None`` (or one without labels) for a negative slide.
    """
    if mask is None or mask.n_labels == 0:
        return SlideHits(
            name,
            tuple(d.probability for d in detections),
            (),
            0,
            0,
            tuple(("FP", 0) for _ in detections),
        )
    tp = np.zeros(mask.n_labels, dtype=np.float64)
    fp: list[float] = []
    outcomes: list[tuple[str, int]] = []
    for d in detections:
        lab = mask.label_at(d.x, d.y)
        if lab == 0:
            fp.append(d.probability)
            outcomes.append(("FP", 0))
        elif lab in mask.itc:
            outcomes.append(("ITC", lab))
        else:
            tp[lab - 1] = max(tp[lab - 1], d.probability)
            outcomes.append(("TP", lab))
    return SlideHits(
        name, tuple(fp), tuple(float(v) for v in tp), mask.n_lesions, len(mask.itc),
        tuple(outcomes),
    )


@dataclass(frozen=True)
class FrocCurve:
    """The FROC curve, in the original's order (thresholds increasing, then ``(0, 0)``).

    Parameters
    ----------
    thresholds
        Probability threshold of each point (``inf`` for the final ``(0, 0)``).
    fp_per_slide
        Average false positives per slide at each threshold.
    sensitivity
        Fraction of lesions detected at each threshold (NaN when there is no lesion).
    n_slides, n_lesions
        Slides and lesions the curve is normalised by.
    """

    thresholds: npt.NDArray[np.float64]
    fp_per_slide: npt.NDArray[np.float64]
    sensitivity: npt.NDArray[np.float64]
    n_slides: int
    n_lesions: int


def froc_curve(slides: Sequence[SlideHits], *, drop_lowest: bool = False) -> FrocCurve:
    """The FROC curve of a set of slides (see the module docstring).

    Parameters
    ----------
    slides
        Per-slide hits.
    drop_lowest
        Drop the lowest threshold whatever it is, as ``Evaluation_FROC.py`` does
        (default: drop only the threshold 0).
    """
    fps = np.asarray([p for s in slides for p in s.fp_probs], dtype=np.float64)
    tps = np.asarray([p for s in slides for p in s.tp_probs], dtype=np.float64)
    n_slides = len(slides)
    n_lesions = sum(s.n_lesions for s in slides)
    thr = np.unique(np.concatenate([fps, tps]))  # sorted, distinct
    thr = thr[1:] if drop_lowest else thr[thr > 0]
    fp_counts = np.asarray([(fps >= t).sum() for t in thr] + [0], dtype=np.float64)
    tp_counts = np.asarray([(tps >= t).sum() for t in thr] + [0], dtype=np.float64)
    fp_rate = fp_counts / n_slides if n_slides else fp_counts * np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp_counts / n_lesions if n_lesions else tp_counts * np.nan
    return FrocCurve(
        thresholds=np.concatenate([thr, [np.inf]]),
        fp_per_slide=fp_rate,
        sensitivity=sens,
        n_slides=n_slides,
        n_lesions=n_lesions,
    )


def sensitivity_at(curve: FrocCurve, rates: Sequence[float] = FROC_RATES) -> list[float]:
    """Sensitivity at each FP-per-slide rate, by linear interpolation of the curve.

    Identical to ``np.interp(rates, fp[::-1], sensitivity[::-1])`` of the challenge
    scripts, written out so that points sharing an FP rate are handled explicitly (the
    highest sensitivity at that rate counts).
    """
    x = curve.fp_per_slide[::-1]
    y = curve.sensitivity[::-1]
    out: list[float] = []
    for r in rates:
        j = int(np.searchsorted(x, r, side="right")) - 1  # last point with x <= r
        if j < 0:
            out.append(float(y[0]))
        elif j >= len(x) - 1 or x[j] == r:
            out.append(float(y[j]))
        else:
            t = (r - x[j]) / (x[j + 1] - x[j])
            out.append(float(y[j] + t * (y[j + 1] - y[j])))
    return out


def froc_score(curve: FrocCurve, rates: Sequence[float] = FROC_RATES) -> float:
    """Mean sensitivity at ``rates`` false positives per slide (NaN without lesions)."""
    return float(np.mean(sensitivity_at(curve, rates)))


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve (probability a positive outscores a negative, ties half).

    NaN unless there is at least one positive and one negative.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def roc_curve(
    scores: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(false positive rate, true positive rate, thresholds)``, from ``(0, 0)`` to ``(1, 1)``.

    One point per distinct score (``score >= threshold`` is positive).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    thr = np.unique(s)[::-1]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = [0.0] + [float((s[y] >= t).sum()) / n_pos for t in thr]
    fpr = [0.0] + [float((s[~y] >= t).sum()) / n_neg for t in thr]
    return np.asarray(fpr), np.asarray(tpr), np.concatenate([[np.inf], thr])
