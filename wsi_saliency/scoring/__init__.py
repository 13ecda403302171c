"""Scoring a finished run against expert lesion annotations.

* Camelyon16 protocol (the organisers' ``Evaluation_FROC.py``): level-5 evaluation
  mask, ITC rule, lesion-level FROC and its score, slide-level ROC AUC
  (:mod:`.masks`, :mod:`.detections`, :mod:`.froc`);
* pixel level on the heatmap grid: probability AUROC / AP / Dice, saliency AUROC,
  top-k % saliency Dice and the pointing game (:mod:`.pixel`);
* :func:`score_run` ties them together; :func:`write_report` writes ``scores.json``,
  CSV tables, plots and a Markdown summary. The CLI is ``wsi-saliency score``.
"""

from wsi_saliency.scoring.annotations import Lesions, match_annotations, read_lesions
from wsi_saliency.scoring.detections import Detection, find_detections
from wsi_saliency.scoring.froc import (
    FROC_RATES,
    FrocCurve,
    SlideHits,
    assign_detections,
    froc_curve,
    froc_score,
    roc_auc,
    sensitivity_at,
)
from wsi_saliency.scoring.masks import EvaluationMask, evaluation_mask, heatmap_lesion_mask
from wsi_saliency.scoring.report import summary_table, write_report
from wsi_saliency.scoring.score import RunScores, ScoreParams, SlideScore, score_run

__all__ = [
    "FROC_RATES",
    "Detection",
    "EvaluationMask",
    "FrocCurve",
    "Lesions",
    "RunScores",
    "ScoreParams",
    "SlideHits",
    "SlideScore",
    "assign_detections",
    "evaluation_mask",
    "find_detections",
    "froc_curve",
    "froc_score",
    "heatmap_lesion_mask",
    "match_annotations",
    "read_lesions",
    "roc_auc",
    "score_run",
    "sensitivity_at",
    "summary_table",
    "write_report",
]
