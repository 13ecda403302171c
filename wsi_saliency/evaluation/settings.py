"""The saliency settings an evaluation compares: layer x method x smoothing."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Setting", "settings_product", "split_list"]


@dataclass(frozen=True)
class Setting:
    """One way of computing saliency maps.

    Parameters
    ----------
    layer
        Module path of the explained layer.
    method
        Attribution method (``gradient-x-activation``, ``grad-cam``, ...), or
        ``"random"`` for the random-map baseline.
    smoothing
        ``none``, ``backward-hook``, ``forward-hook`` or ``bilinear`` (a surrogate
        folder from ``wsi-saliency surrogate`` as the model).
    baseline
        True for the Grad-CAM and random baselines the evaluation adds.
    """

    layer: str
    method: str
    smoothing: str
    baseline: bool = False

    @property
    def label(self) -> str:
        """Short name used in tables, plots and ``evaluation.json``."""
        if self.method == "random":
            return "random map"
        if self.baseline:
            return f"{self.method} @ {self.layer} (baseline)"
        return f"{self.layer} / {self.method} / {self.smoothing}"

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"label": self.label, "layer": self.layer, "method": self.method,
                "smoothing": self.smoothing, "baseline": self.baseline}


def split_list(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (blanks dropped, order kept, no repeats)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def settings_product(
    layers: Sequence[str], methods: Sequence[str], smoothings: Sequence[str]
) -> list[Setting]:
    """Every combination of the given layers, methods and smoothings (cartesian product).

    Order: layer, then method, then smoothing, each in the order given.
    """
    return [Setting(layer=layer, method=method, smoothing=smoothing)
            for layer, method, smoothing in itertools.product(layers, methods, smoothings)]
