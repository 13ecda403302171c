"""Write an evaluation: ``evaluation.json``, ``evaluation.md`` and PNG plots.

* ``evaluation.json``: every number (per tile and summarised), the settings, seed,
  protocol, model, slides, timings, library versions and hardware.
* ``evaluation.md``: one summary table (and the agreement between settings).
* ``curves.png`` (deletion and insertion curves, mean and inter-quartile band per
  setting), ``sanity.png`` (rank correlation with the original maps at each step of the
  cascading randomisation), ``gallery.png`` (tiles with the map of every setting).
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsi_saliency import __version__
from wsi_saliency.evaluation.evaluate import EvaluationResult, SettingResult
from wsi_saliency.evaluation.faithfulness import BLUR_KERNEL, BLUR_SIGMA
from wsi_saliency.inputs import model_fingerprint
from wsi_saliency.writers.run_meta import (
    collect_hardware,
    collect_versions,
    to_jsonable,
    write_run_json,
)

__all__ = ["EVALUATION_FILES", "summary", "write_report"]

EVALUATION_FILES: tuple[str, ...] = (
    "evaluation.json", "evaluation.md", "curves.png", "sanity.png", "gallery.png")
"""Files :func:`write_report` writes."""

_GALLERY_TILES = 4


def _mean(x: npt.ArrayLike) -> float:
    a = np.asarray(x, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def scored_tiles(result: EvaluationResult) -> npt.NDArray[np.bool_]:
    """Tiles the faithfulness summary averages over.

    The tiles whose top class (plain network) is the explained class: on the others the
    explained class's probability sits near 0 whatever is deleted or inserted, so their
    curves are flat and say nothing about the map. All tiles when there is none.
    """
    pos = np.asarray(result.positive, bool)
    return pos if pos.any() else np.ones_like(pos)


def summary(r: SettingResult, scored: npt.NDArray[np.bool_] | None = None
            ) -> dict[str, float | None]:
    """The headline numbers of one setting.

    Faithfulness: means over the ``scored`` tiles (all when None); TV and the
    randomisation figures: means over all tiles; seam ratio: mean over slides.
    """
    c = r.curves
    k = np.ones(len(r.tv), bool) if scored is None else scored
    seams = [s for s in r.seams if s is not None]
    out: dict[str, float | None] = {
        "n_scored": float(k.sum()),
        "insertion_auc": _mean(c.insertion_auc[k]),
        "deletion_auc": _mean(c.deletion_auc[k]),
        "insertion_minus_deletion": _mean((c.insertion_auc - c.deletion_auc)[k]),
        "fidelity": _mean(c.fidelity[k]),
        "tv": _mean(r.tv),
        "seam_magnitude": _mean([s.magnitude for s in seams]),
        "seam_tv": _mean([s.tv for s in seams]),
        "randomised_spearman": None,
        "randomised_spearman_abs": None,
        "randomised_ssim": None,
        "mean_abs_dp": None,
        "max_abs_dp": None,
    }
    if r.sanity is not None and len(r.sanity.steps):
        out["randomised_spearman"] = _mean(r.sanity.spearman[-1])
        out["randomised_spearman_abs"] = _mean(r.sanity.spearman_abs[-1])
        out["randomised_ssim"] = _mean(r.sanity.ssim[-1])
    if r.probability_change is not None:
        out["mean_abs_dp"] = r.probability_change["mean_abs_dp"]
        out["max_abs_dp"] = r.probability_change["max_abs_dp"]
    return {k: (None if v is None or not math.isfinite(v) else round(v, 6))
            for k, v in out.items()}


def _setting_json(r: SettingResult, scored: npt.NDArray[np.bool_]) -> dict[str, Any]:
    c = r.curves
    curves = {}
    for name in ("deletion", "insertion", "deletion_lerf"):
        a = getattr(c, name)
        curves[name] = {"mean": a.mean(0), "std": a.std(0), "q25": np.quantile(a, 0.25, 0),
                        "q75": np.quantile(a, 0.75, 0), "per_tile": a}
    out: dict[str, Any] = {
        **r.setting.as_dict(),
        "map_shape": list(r.map_shape),
        "summary": summary(r, scored),
        "summary_all_tiles": summary(r),
        "per_tile": {
            "probability": r.probability, "insertion_auc": c.insertion_auc,
            "deletion_auc": c.deletion_auc, "fidelity": c.fidelity, "tv": r.tv,
        },
        "curves": curves,
        "seam_ratio": [None if s is None else s for s in r.seams],
        "probability_change": r.probability_change,
        "seconds": round(r.seconds, 3),
    }
    if r.sanity is not None:
        out["sanity"] = {
            "steps": list(r.sanity.steps),
            "spearman_mean": r.sanity.spearman.mean(1),
            "spearman_abs_mean": r.sanity.spearman_abs.mean(1),
            "ssim_mean": r.sanity.ssim.mean(1),
            "spearman": r.sanity.spearman, "spearman_abs": r.sanity.spearman_abs,
            "ssim": r.sanity.ssim,
        }
    return out


def _payload(result: EvaluationResult) -> dict[str, Any]:
    spec = result.model.spec
    return {
        "wsi_saliency_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": result.seed,
        "target": result.target,
        "device": result.device,
        "model": {"name": spec.name, "architecture": spec.architecture,
                  "weights_sha256": spec.weights_sha256, "source": spec.source,
                  "fingerprint": model_fingerprint(spec),
                  "class_names": list(spec.class_names)},
        "config": result.config,
        "protocol": {
            "steps": result.steps,
            "ranking": "input pixels by the map upsampled bilinearly to the input size",
            "deletion": "top-ranked pixels set to 0 in normalised space (the mean colour)",
            "insertion": f"original pixels put into a Gaussian-blurred tile (kernel "
                         f"{BLUR_KERNEL}, sigma {BLUR_SIGMA})",
            "auc": "trapezoid rule over the fraction perturbed in [0, 1]",
            "fidelity": "AUC(deletion, least important first) - AUC(deletion, most "
                        "important first) (Brocki & Chung)",
            "score": "probability of the explained class; forward-hook settings are scored "
                     "with their own (hooked) network, everything else with the plain one",
            "sanity": "cascading re-initialisation from the logits to the input (Adebayo et "
                      "al. 2018); Spearman of signed and absolute maps, SSIM of min-max "
                      "scaled maps, against the original maps",
            "tv": "paper's normalised anisotropic TV of the channel-resolved attribution",
            "seam_ratio": "a block of adjacent tissue tiles, maps side by side; border / "
                          "interior mean |map| and across-border / within-tile mean |diff|",
        },
        "slides": [{
            "path": s.path, "n_tissue_tiles": s.n_grid, "n_sampled": len(s.indices),
            "grid_indices": s.indices, "grid_positions": s.positions,
            "block_origin": s.block_origin if s.block is not None else None,
            "block_shape": s.block_shape if s.block is not None else None,
        } for s in result.slides],
        "targets": result.targets,
        "predicted": result.predicted,
        "scored_tiles": scored_tiles(result),
        "settings": [_setting_json(r, scored_tiles(result)) for r in result.settings],
        "agreement_spearman": result.agreement,
        "timings_s": result.timings,
        "versions": collect_versions(),
        "hardware": collect_hardware(),
    }


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(result: EvaluationResult) -> str:
    """The text of ``evaluation.md``."""
    n = len(result.targets)
    scored = scored_tiles(result)
    lines = [
        "# Saliency evaluation",
        "",
        f"Model `{result.model.spec.name}`, {len(result.slides)} slide(s), {n} tiles, "
        f"explained class: {result.target}, seed {result.seed}, {result.steps} perturbation "
        f"steps, device {result.device}, {result.timings.get('total', 0):.0f} s. "
        f"Faithfulness columns average the {int(scored.sum())} tiles whose top class is the "
        "explained class (all tiles when none is); the other columns all tiles.",
        "",
        "| setting | insertion AUC | deletion AUC | ins - del | fidelity | TV | seam |map| | "
        "seam TV | rho, last randomisation step | |rho| | SSIM | mean / max |dp| |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.settings:
        s = summary(r, scored)
        dp = ("" if s["mean_abs_dp"] is None
              else f"{_fmt(s['mean_abs_dp'], 4)} / {_fmt(s['max_abs_dp'], 4)}")
        lines.append(
            f"| {r.setting.label} | {_fmt(s['insertion_auc'])} | {_fmt(s['deletion_auc'])} | "
            f"{_fmt(s['insertion_minus_deletion'])} | {_fmt(s['fidelity'])} | {_fmt(s['tv'])} | "
            f"{_fmt(s['seam_magnitude'], 2)} | {_fmt(s['seam_tv'], 2)} | "
            f"{_fmt(s['randomised_spearman'], 2)} | {_fmt(s['randomised_spearman_abs'], 2)} | "
            f"{_fmt(s['randomised_ssim'], 2)} | {dp} |")
    lines += [
        "",
        "Insertion/deletion AUC: area under the explained-class probability as the most "
        "important pixels are inserted into a blurred tile / deleted (higher / lower is "
        "better). Fidelity: AUC of deleting the least important pixels first minus AUC of "
        "deleting the most important first (higher is better). TV: normalised total "
        "variation (lower is smoother). Seam: tile-border over tile-interior mean |map| and "
        "across-border over within-tile |difference| on a block of adjacent tiles (1 = no "
        "seam). rho / |rho| / SSIM: similarity of the maps after the whole network is "
        "re-initialised to the trained network's maps (near 0 passes the sanity check). "
        "|dp|: change of the explained-class probability caused by the forward hook.",
        "",
    ]
    sets = [r for r in result.settings if not r.setting.baseline]
    pairs = []
    for a in sets:
        for b in sets:
            if (a.setting.layer, a.setting.method) == (b.setting.layer, b.setting.method) \
                    and a.setting.smoothing == "none" and b.setting.smoothing != "none":
                rho = result.agreement.get(a.setting.label, {}).get(b.setting.label)
                pairs.append(f"| {b.setting.label} | {a.setting.label} | {_fmt(rho, 3)} |")
    if pairs:
        lines += ["## Agreement with unsmoothed maps (mean Spearman per tile)", "",
                  "| setting | versus | rho |", "|---|---|---|", *pairs, ""]
    lines += ["Plots: `curves.png`, `sanity.png`, `gallery.png`. Every number: "
              "`evaluation.json`.", ""]
    return "\n".join(lines)


def _colours(k: int) -> list[Any]:
    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(k)]


def plot_curves(result: EvaluationResult, path: Path, dpi: int = 90) -> Path:
    """Deletion and insertion curves: mean per setting with the inter-quartile band."""
    fig = Figure(figsize=(10, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    x = np.linspace(0, 1, result.steps + 1)
    k = scored_tiles(result)
    for r, col in zip(result.settings, _colours(len(result.settings)), strict=True):
        for ax, name in zip(axes, ("deletion", "insertion"), strict=True):
            a = getattr(r.curves, name)[k]
            ax.plot(x, a.mean(0), color=col, lw=1.5, label=r.setting.label,
                    ls="--" if r.setting.baseline else "-")
            ax.fill_between(x, np.quantile(a, 0.25, 0), np.quantile(a, 0.75, 0), color=col,
                            alpha=0.12, lw=0)
    for ax, name in zip(axes, ("deletion (most important first)", "insertion into blur"),
                        strict=True):
        ax.set_title(f"{name}, {int(k.sum())} tiles", fontsize=10)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("explained-class probability")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_sanity(result: EvaluationResult, path: Path, dpi: int = 90) -> Path:
    """Spearman correlation with the original maps against the randomisation step."""
    fig = Figure(figsize=(6.5, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 1)
    steps: tuple[str, ...] = ()
    for r, col in zip(result.settings, _colours(len(result.settings)), strict=True):
        if r.sanity is None:
            continue
        steps = r.sanity.steps
        xs = np.arange(len(steps) + 1)
        ys = np.array([1.0, *(_mean(row) for row in r.sanity.spearman)])
        ax.plot(xs, ys, marker="o", color=col, label=r.setting.label,
                ls="--" if r.setting.baseline else "-")
    ax.set_xticks(np.arange(len(steps) + 1), ["original", *(f"+{s}" for s in steps)],
                  fontsize=8, rotation=30)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("Spearman rho vs original map")
    ax.set_title("cascading randomisation (logits -> input)", fontsize=10)
    ax.grid(alpha=0.3)
    if steps:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_gallery(result: EvaluationResult, path: Path, dpi: int = 70) -> Path:
    """A few tiles with the map of every setting: half scored (explained class on top), half not."""
    tiles = result.tiles
    n = len(tiles)
    scored = scored_tiles(result)
    pos, neg = np.nonzero(scored)[0], np.nonzero(~scored)[0]

    def spread(idx: npt.NDArray[np.intp], k: int) -> list[int]:
        if k <= 0 or len(idx) == 0:
            return []
        return [int(idx[j]) for j in np.unique(np.linspace(0, len(idx) - 1, min(k, len(idx)))
                                                .round().astype(int))]

    first = spread(pos, (_GALLERY_TILES + 1) // 2 if len(neg) else _GALLERY_TILES)
    pick = np.array(sorted(first + spread(neg, min(n, _GALLERY_TILES) - len(first))), int)
    cols = 1 + len(result.settings)
    fig = Figure(figsize=(1.6 * cols, 1.7 * len(pick) + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(pick), cols, squeeze=False))
    names = result.model.spec.class_names
    for i, k in enumerate(pick):
        axes[i, 0].imshow(tiles[k])
        axes[i, 0].set_title(f"tile {k}: {names[int(result.predicted[k])]}", fontsize=7)
        for j, r in enumerate(result.settings, start=1):
            m = r.maps[k]
            v = float(np.abs(m).max()) or 1.0
            axes[i, j].imshow(m, cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
            if i == 0:
                axes[i, j].set_title(r.setting.label.replace(" / ", "\n", 1), fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_report(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write every evaluation output into an existing folder.

    Returns
    -------
    dict
        Output name (``json``, ``markdown``, ``curves``, ``sanity``, ``gallery``) -> path.
    """
    out = Path(out_dir)
    paths = {
        "json": write_run_json(out / "evaluation.json", to_jsonable(_payload(result))),
        "curves": plot_curves(result, out / "curves.png"),
        "sanity": plot_sanity(result, out / "sanity.png"),
        "gallery": plot_gallery(result, out / "gallery.png"),
    }
    md = out / "evaluation.md"
    md.write_text(markdown(result), encoding="utf-8")
    paths["markdown"] = md
    return paths
