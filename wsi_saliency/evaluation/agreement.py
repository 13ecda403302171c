"""Agreement between settings: rank correlation of their maps on the same tiles."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from wsi_saliency.evaluation.similarity import spearman

__all__ = ["pairwise_agreement", "probability_change"]


def pairwise_agreement(
    maps: Mapping[str, npt.NDArray[np.floating]],
) -> dict[str, dict[str, float]]:
    """Mean per-tile Spearman correlation between every two settings with equal map shapes.

    Parameters
    ----------
    maps
        Label -> ``(n, h, w)`` maps of the same ``n`` tiles.

    Returns
    -------
    dict
        ``{label_a: {label_b: mean rho}}`` (symmetric; pairs with different map shapes
        are left out).
    """
    labels = list(maps)
    out: dict[str, dict[str, float]] = {a: {} for a in labels}
    for i, a in enumerate(labels):
        for b in labels[i:]:
            if maps[a].shape != maps[b].shape:
                continue
            rho = 1.0 if a == b else float(np.nanmean(spearman(maps[a], maps[b])))
            out[a][b] = out[b][a] = rho
    return out


def probability_change(
    p_hooked: npt.ArrayLike, p_plain: npt.ArrayLike
) -> dict[str, float]:
    """Mean and max ``|dp|`` of the target-class probability a forward hook causes."""
    d = np.abs(np.asarray(p_hooked, np.float64) - np.asarray(p_plain, np.float64))
    if d.size == 0:
        return {"mean_abs_dp": float("nan"), "max_abs_dp": float("nan")}
    return {"mean_abs_dp": float(d.mean()), "max_abs_dp": float(d.max())}
