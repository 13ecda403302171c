"""Smoothness metric of Smooth Deep Saliency: normalised total variation (TV)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["tv_reduction", "total_variation"]


def total_variation(
    attributions: torch.Tensor | npt.NDArray[np.floating], *, eps: float = 1e-6
) -> npt.NDArray[np.float64]:
    """Normalised anisotropic total variation of layer attributions, per sample.

    Per channel the map is centred (its spatial mean subtracted) and divided by
    ``max(mean(|centred|), eps)``; the anisotropic L1 total variation
    ``sum |x[i+1, j] - x[i, j]| + sum |x[i, j+1] - x[i, j]|`` is summed over channels and
    divided by ``C * h * w``. The normalisation makes the value independent of the
    attribution's scale, so maps with and without smoothing compare directly.

    Parameters
    ----------
    attributions
        ``(B, C, h, w)``, ``(C, h, w)`` or ``(h, w)`` (a single channel).
    eps
        Floor of the per-channel scale (a constant channel has TV 0).

    Returns
    -------
    numpy.ndarray
        ``(B,)`` float64, one TV per sample (``(1,)`` for unbatched input).
    """
    a = torch.as_tensor(attributions).detach().to(torch.float64).cpu()
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"attributions must be (B, C, h, w), (C, h, w) or (h, w); got shape "
                         f"{tuple(a.shape)}")
    _, c, h, w = a.shape
    centred = a - a.mean(dim=(2, 3), keepdim=True)
    scale = centred.abs().mean(dim=(2, 3), keepdim=True).clamp_min(eps)
    x = centred / scale
    tv = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().sum(dim=(1, 2, 3)) + (
        x[:, :, :, 1:] - x[:, :, :, :-1]
    ).abs().sum(dim=(1, 2, 3))
    out: npt.NDArray[np.float64] = (tv / (c * h * w)).numpy()
    return out


def tv_reduction(tv_fixed: float, tv_plain: float) -> float:
    """Return ``1 - tv_fixed / tv_plain`` (the paper's reduction; 0 if ``tv_plain`` is 0)."""
    return 0.0 if tv_plain == 0 else 1.0 - tv_fixed / tv_plain
