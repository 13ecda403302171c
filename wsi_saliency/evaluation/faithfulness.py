"""Faithfulness of saliency maps by pixel perturbation (RISE deletion / insertion).

The protocol the Smooth Deep Saliency authors used (after Petsiuk et al., RISE, 2018):
input pixels are ranked by the map upsampled (bilinear) to the input size;

* **deletion** sets the top-ranked pixels to the mean colour (0 in the model's
  normalised input space), a growing fraction at each of ``steps`` equal steps;
* **insertion** starts from the tile blurred with a Gaussian (kernel 11, sigma 5) and
  puts the original pixels back in the same order.

The curve is the target-class probability against the fraction perturbed
(``steps + 1`` points from 0 to 1) and its area (trapezoid rule on ``[0, 1]``) is the
AUC: low deletion AUC and high insertion AUC mean the map finds what the model uses.
**Fidelity** (Brocki & Chung, 2023) is the area between the deletion curve that removes
the least important pixels first (LeRF) and the one that removes the most important
first (MoRF): ``AUC(LeRF) - AUC(MoRF)``, positive when the ranking is informative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

__all__ = [
    "BLUR_KERNEL",
    "BLUR_SIGMA",
    "STEPS",
    "Curves",
    "auc",
    "gaussian_blur",
    "perturbation_curves",
    "pixel_ranks",
]

STEPS = 28
"""Perturbation steps of the protocol."""
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps normalised images ``(B, 3, S, S)`` to the target-class probability ``(B,)``."""


@dataclass(frozen=True)
class Curves:
    """Perturbation curves of a set of tiles, ``(n, steps + 1)`` float64 each."""

    deletion: npt.NDArray[np.float64]
    insertion: npt.NDArray[np.float64]
    deletion_lerf: npt.NDArray[np.float64]

    @property
    def deletion_auc(self) -> npt.NDArray[np.float64]:
        """``(n,)`` deletion AUC (most important first)."""
        return auc(self.deletion)

    @property
    def insertion_auc(self) -> npt.NDArray[np.float64]:
        """``(n,)`` insertion AUC."""
        return auc(self.insertion)

    @property
    def fidelity(self) -> npt.NDArray[np.float64]:
        """``(n,)`` MoRF/LeRF fidelity ``AUC(LeRF deletion) - AUC(MoRF deletion)``."""
        return auc(self.deletion_lerf) - auc(self.deletion)


def auc(curves: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Trapezoid area under curves sampled at equal steps on ``[0, 1]`` (last axis)."""
    c = np.asarray(curves, dtype=np.float64)
    steps = c.shape[-1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    out: npt.NDArray[np.float64] = (c[..., 1:] + c[..., :-1]).sum(axis=-1) / (2.0 * steps)
    return out


def gaussian_blur(x: torch.Tensor, kernel: int = BLUR_KERNEL,
                  sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Gaussian blur of ``(B, C, H, W)`` per channel (reflect padding, as torchvision's)."""
    half = kernel // 2
    t = torch.arange(kernel, dtype=torch.float64) - half
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    k1 = (k1 / k1.sum()).to(x.dtype).to(x.device)
    c = x.shape[1]
    y = F.pad(x, (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k1.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)
    return F.conv2d(y, k1.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)


def pixel_ranks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Rank of every input pixel, 0 = most important, from maps ``(B, h, w)``.

    The map is upsampled bilinearly (``align_corners=False``) to ``size``; ties keep
    raster order (stable sort). Returns int64 ``(B, H * W)``.
    """
    up = F.interpolate(maps[:, None].double(), size=size, mode="bilinear",
                       align_corners=False)[:, 0].reshape(maps.shape[0], -1)
    order = torch.sort(-up, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                   .expand_as(order).contiguous())
    return ranks


def _counts(n_pixels: int, steps: int) -> torch.Tensor:
    return torch.round(torch.arange(steps + 1, dtype=torch.float64) * n_pixels / steps).long()


def perturbation_curves(
    score: ScoreFn,
    images: torch.Tensor,
    maps: torch.Tensor | npt.NDArray[np.floating],
    *,
    steps: int = STEPS,
    chunk: int = 96,
) -> Curves:
    """Deletion (MoRF and LeRF) and insertion curves of tiles explained by maps.

    Parameters
    ----------
    score
        Target-class probability of normalised images (no gradients needed).
    images
        Normalised model inputs ``(n, 3, S, S)`` on the scoring device.
    maps
        Saliency maps ``(n, h, w)``: higher = more important for the target class.
    steps
        Equal steps from nothing to everything perturbed (28 in the protocol).
    chunk
        Images per forward pass.

    Returns
    -------
    Curves
        ``(n, steps + 1)`` curves; point ``k`` has ``round(k * S * S / steps)`` pixels
        perturbed.
    """
    n, _, hh, ww = images.shape
    m = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps)
    if m.shape[0] != n:
        raise ValueError(f"{m.shape[0]} maps for {n} images")
    device = images.device
    ranks = pixel_ranks(m.to(device), (hh, ww))
    counts = _counts(hh * ww, steps).to(device)
    blurred = gaussian_blur(images)
    out = np.zeros((3, n, steps + 1), np.float64)
    for i in range(n):
        x = images[i]
        r = ranks[i]
        top = r[None, :] < counts[:, None]                      # (steps+1, P): MoRF
        bottom = r[None, :] >= (hh * ww - counts)[:, None]      # LeRF: least important first
        top = top.view(steps + 1, 1, hh, ww)
        bottom = bottom.view(steps + 1, 1, hh, ww)
        zero = torch.zeros((), dtype=x.dtype, device=device)
        batch = torch.cat([
            torch.where(top, zero, x[None]),                    # deletion, MoRF
            torch.where(top, x[None], blurred[i][None]),        # insertion
            torch.where(bottom, zero, x[None]),                 # deletion, LeRF
        ])
        probs = torch.cat([score(batch[j:j + chunk]) for j in range(0, len(batch), chunk)])
        out[:, i, :] = probs.double().cpu().numpy().reshape(3, steps + 1)
    return Curves(deletion=out[0], insertion=out[1], deletion_lerf=out[2])
