"""A small two-class :class:`ModelSpec` for tests that wrap their own module."""

from __future__ import annotations

from wsi_saliency.models import ModelSpec


def tiny_spec(patch_size: int = 64, **kw: object) -> ModelSpec:
    """Classes ``("normal", "tumor")``, 0.5 um/px, mean 0.5 / std 0.25; ``kw`` overrides."""
    base: dict[str, object] = dict(
        name="t", architecture="x", num_classes=2, class_names=("normal", "tumor"),
        patch_size=patch_size, spacing=0.5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        tumor_class=1)
    base.update(kw)
    return ModelSpec(**base)  # type: ignore[arg-type]
