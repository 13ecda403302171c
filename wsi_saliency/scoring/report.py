"""Write the scores of a run: JSON, CSV tables, plots and a Markdown summary.

Files written by :func:`write_report` into the output folder:

* ``scores.json``: parameters, FROC curve and score, sensitivities at the six rates,
  slide AUC, pooled pixel and saliency scores, and one entry per slide;
* ``slides.csv``: one row per slide (label, slide score, lesions, detections, FROC
  counts, pixel and saliency scores);
* ``detections.csv``: every detection (slide, level-0 ``x``, ``y``, probability,
  outcome ``TP``/``FP``/``ITC``, evaluation-mask label);
* ``froc.png`` (lesion-level FROC with the six operating points), ``roc.png``
  (slide-level ROC), ``topk_dice.png`` (top-k % saliency Dice against k);
* ``summary.md``: the summary table (also printed by the CLI).

Everything is written into a temporary sibling folder renamed into place at the end, so
a failure leaves no half-written report.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.batch.outdir import staged_folder
from wsi_saliency.errors import OutputError
from wsi_saliency.scoring.froc import roc_curve
from wsi_saliency.scoring.score import RunScores, SlideScore

__all__ = ["REPORT_FILES", "scores_dict", "summary_table", "write_report"]

REPORT_FILES = (
    "scores.json",
    "slides.csv",
    "detections.csv",
    "froc.png",
    "roc.png",
    "topk_dice.png",
    "summary.md",
)


def _f(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _slide_dict(s: SlideScore) -> dict[str, Any]:
    k, best = s.pixel.best_topk
    return {
        "name": s.slide.name,
        "slide_file": s.slide.slide_file,
        "annotation": str(s.annotation) if s.annotation else None,
        "label": "tumour" if s.is_tumour else "negative",
        "slide_score": _f(s.slide_score),
        "lesions": s.hits.n_lesions,
        "itc": s.hits.n_itc,
        "lesions_detected": s.hits.n_detected,
        "detections": len(s.detections),
        "false_positives": len(s.hits.fp_probs),
        "pixel": {
            "pixels": s.pixel.n_pixels,
            "lesion_pixels": s.pixel.n_lesion_pixels,
            "auroc": _f(s.pixel.auroc),
            "average_precision": _f(s.pixel.average_precision),
            "dice_at_0.5": _f(s.pixel.dice),
        },
        "saliency": {
            "auroc_positive": _f(s.pixel.saliency_auroc),
            "topk_dice_best": _f(best),
            "topk_dice_best_k": k or None,
            "pointing_hits": s.pixel.pointing_hits,
            "pointing_tiles": s.pixel.pointing_tiles,
            "pointing_accuracy": _f(s.pixel.pointing_accuracy),
            "tumour_predicted_tiles": s.pixel.tumour_tiles,
        },
    }


def scores_dict(scores: RunScores) -> dict[str, Any]:
    """The content of ``scores.json``."""
    curve = scores.curve
    topk = scores.mean_topk_curve()
    finite = np.isfinite(topk)
    best_k = int(np.nanargmax(topk)) + 1 if finite.any() else None
    hits, tiles, n_tumour = scores.pointing()
    return {
        "run_out": str(scores.run_out),
        "parameters": {
            "evaluation_level": scores.params.level,
            "detection_threshold": scores.params.threshold,
            "nms_radius_um": scores.params.nms_radius_um,
            "slide_score": scores.params.slide_score,
            "fp_rates": list(scores.params.rates),
        },
        "camelyon16": {
            "froc_score": _f(scores.froc_score),
            "sensitivity_at_fp_rates": {
                f"{r:g}": _f(v) for r, v in zip(scores.params.rates, scores.sensitivities, strict=True)
            },
            "slide_auc": _f(scores.slide_auc),
            "slides": len(scores.slides),
            "tumour_slides": sum(s.is_tumour for s in scores.slides),
            "lesions": curve.n_lesions,
            "itc": sum(s.hits.n_itc for s in scores.slides),
            "curve": {
                "threshold": [_f(t) for t in curve.thresholds],
                "fp_per_slide": [_f(v) for v in curve.fp_per_slide],
                "sensitivity": [_f(v) for v in curve.sensitivity],
            },
        },
        "pixel": {
            "auroc": _f(scores.pooled.auroc()),
            "average_precision": _f(scores.pooled.average_precision()),
            "dice_at_0.5": _f(scores.pooled_dice()),
            "auroc_mean_over_tumour_slides": _f(
                scores.mean_over_tumour_slides(lambda s: s.pixel.auroc)
            ),
        },
        "saliency": {
            "auroc_positive_mean": _f(
                scores.mean_over_tumour_slides(lambda s: s.pixel.saliency_auroc)
            ),
            "topk_dice_mean_curve": [_f(v) for v in topk],
            "topk_dice_best": _f(float(topk[best_k - 1])) if best_k else None,
            "topk_dice_best_k": best_k,
            "pointing_hits": hits,
            "pointing_tiles": tiles,
            "pointing_accuracy": _f(hits / tiles) if tiles else None,
            "tumour_predicted_tiles": n_tumour,
        },
        "slides": [_slide_dict(s) for s in scores.slides],
    }


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if math.isfinite(v) else "n/a"
    return str(v)


def summary_table(scores: RunScores) -> str:
    """A Markdown summary: cohort scores, then one row per slide."""
    d = scores_dict(scores)
    c, px, sal = d["camelyon16"], d["pixel"], d["saliency"]
    sens = ", ".join(f"{k}: {_fmt(v)}" for k, v in c["sensitivity_at_fp_rates"].items())
    lines = [
        "| score | value |",
        "|---|---|",
        f"| slides (tumour / negative) | {c['slides']} ({c['tumour_slides']} / "
        f"{c['slides'] - c['tumour_slides']}) |",
        f"| lesions to detect (ITCs ignored) | {c['lesions']} ({c['itc']}) |",
        f"| FROC score | {_fmt(c['froc_score'])} |",
        f"| sensitivity at FP/slide | {sens} |",
        f"| slide AUC ({d['parameters']['slide_score']}) | {_fmt(c['slide_auc'])} |",
        f"| pixel AUROC / AP / Dice@0.5 (pooled) | {_fmt(px['auroc'])} / "
        f"{_fmt(px['average_precision'])} / {_fmt(px['dice_at_0.5'])} |",
        f"| saliency AUROC (mean over tumour slides) | {_fmt(sal['auroc_positive_mean'])} |",
        f"| best top-k % saliency Dice (k) | {_fmt(sal['topk_dice_best'])} "
        f"({_fmt(sal['topk_dice_best_k'])} %) |",
        f"| pointing game | {_fmt(sal['pointing_accuracy'])} ({sal['pointing_hits']} / "
        f"{sal['pointing_tiles']} tumour tiles on lesions) |",
        "",
        "| slide | label | score | lesions (ITC) | found | FP | pixel AUROC | Dice | "
        "saliency AUROC | top-k Dice (k) | pointing |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in d["slides"]:
        p, q = s["pixel"], s["saliency"]
        lines.append(
            f"| {s['name']} | {s['label']} | {_fmt(s['slide_score'])} | {s['lesions']} "
            f"({s['itc']}) | {s['lesions_detected']} | {s['false_positives']} | "
            f"{_fmt(p['auroc'])} | {_fmt(p['dice_at_0.5'])} | {_fmt(q['auroc_positive'])} | "
            f"{_fmt(q['topk_dice_best'])} ({_fmt(q['topk_dice_best_k'])}) | "
            f"{q['pointing_hits']}/{q['pointing_tiles']} |"
        )
    return "\n".join(lines) + "\n"


def _write_csvs(scores: RunScores, folder: Path) -> None:
    rows = [_slide_dict(s) for s in scores.slides]
    cols = [
        "name", "slide_file", "annotation", "label", "slide_score", "lesions", "itc",
        "lesions_detected", "detections", "false_positives",
    ]
    with open(folder / "slides.csv", "w", encoding="utf-8", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        pcols = list(rows[0]["pixel"]) if rows else []
        scols = list(rows[0]["saliency"]) if rows else []
        wr.writerow(cols + [f"pixel_{c}" for c in pcols] + [f"saliency_{c}" for c in scols])
        for r in rows:
            vals = [r[c] for c in cols] + [r["pixel"][c] for c in pcols]
            vals += [r["saliency"][c] for c in scols]
            wr.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                         for v in vals])
    with open(folder / "detections.csv", "w", encoding="utf-8", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["slide", "x", "y", "probability", "outcome", "label"])
        for s in scores.slides:
            for det, (outcome, lab) in zip(s.detections, s.hits.outcomes, strict=True):
                wr.writerow([s.slide.name, det.x, det.y, f"{det.probability:.6g}", outcome, lab])


def _plots(scores: RunScores, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    curve = scores.curve
    fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=100)
    x_max = max(8.0, float(np.nanmax(curve.fp_per_slide)) if curve.fp_per_slide.size else 8.0)
    if curve.n_lesions:
        # ascending FP rate; flat beyond the last point, as the score reads it
        x = np.r_[curve.fp_per_slide[::-1], x_max]
        y = np.r_[curve.sensitivity[::-1], curve.sensitivity[0]]
        ax.plot(x, y, "-", color="black", lw=1.2)
        ax.plot(scores.params.rates, scores.sensitivities, "o", color="tab:red", ms=4,
                label=f"FROC score {scores.froc_score:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(-0.1, x_max)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("average false positives per slide")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title("lesion-level FROC (Camelyon16)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "froc.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=100)
    fpr, tpr, _ = roc_curve([s.slide_score for s in scores.slides],
                            [s.is_tumour for s in scores.slides])
    ax.plot(fpr, tpr, "-", color="black", lw=1.2, drawstyle="steps-post",
            label=f"AUC {scores.slide_auc:.3f}" if math.isfinite(scores.slide_auc) else "AUC n/a")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"slide-level ROC ({scores.params.slide_score})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    fig.savefig(folder / "roc.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=100)
    ks = np.arange(1, 101)
    for s in scores.slides:
        if s.pixel.topk_dice:
            ax.plot(ks, s.pixel.topk_dice, lw=0.8, alpha=0.6, label=s.slide.name)
    mean = scores.mean_topk_curve()
    if np.isfinite(mean).any():
        ax.plot(ks, mean, color="black", lw=1.6, label="mean")
    ax.set_xlabel("top-k % saliency pixels (k)")
    ax.set_ylabel("Dice with the lesions")
    ax.set_title("saliency localisation", fontsize=10)
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "topk_dice.png")
    plt.close(fig)


def write_report(scores: RunScores, out_dir: str | Path, *, overwrite: bool = True) -> Path:
    """Write every report file (:data:`REPORT_FILES`) into ``out_dir``; return it.

    Raises
    ------
    OutputError
        The folder cannot be written, or exists and ``overwrite`` is False.
    """
    import json

    from wsi_saliency.writers.run_meta import to_jsonable  # the writers import zarr: on use

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists; remove it or pass --overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with staged_folder(out.parent, out.name) as tmp:  # the project's one atomic commit
            (tmp / "scores.json").write_text(
                json.dumps(to_jsonable(scores_dict(scores)), indent=2, allow_nan=False) + "\n",
                encoding="utf-8",
            )
            _write_csvs(scores, tmp)
            _plots(scores, tmp)
            (tmp / "summary.md").write_text(summary_table(scores), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the scores ({exc})") from exc
    return out
