"""Run configuration: frozen dataclasses (YAML + command-line merge is added below them).

Precedence: command line > YAML config (``--config``) > model config.json (tile size
and spacing) > the defaults written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "InferenceConfig",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "SlideConfig",
    "TilingConfig",
    "TissueConfig",
]


@dataclass(frozen=True)
class SlideConfig:
    """How slides are opened.

    Parameters
    ----------
    backend
        ``"auto"`` (OpenSlide, falling back to tiffslide), ``"openslide"`` or ``"tiffslide"``.
    mpp
        Level-0 spacing override in um/px for every slide (``--mpp``); wins over metadata.
    mpp_sidecar
        Name pattern of a per-slide sidecar file giving the spacing, resolved beside each
        slide; ``{stem}`` and ``{name}`` are replaced (default ``"{stem}.mpp.json"``).
    """

    backend: str = "auto"
    mpp: float | None = None
    mpp_sidecar: str = "{stem}.mpp.json"


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection.

    Parameters
    ----------
    method
        ``"otsu"`` (Otsu on HSV saturation) or ``"fixed"`` (``threshold``).
    threshold
        Saturation threshold in 0..1 for ``"fixed"``.
    spacing
        Micrometres per pixel of the thumbnail tissue is detected on (8-16 is sensible).
    min_object_um2
        Tissue objects and holes smaller than this area (um^2) are removed / filled.
    roi
        Optional region-of-interest mask restricting tiling: a PNG (any scale) or GeoJSON
        (level-0 polygons). ``{stem}`` / ``{name}`` are replaced per slide.
    """

    method: str = "otsu"
    threshold: float | None = None
    spacing: float = 8.0
    min_object_um2: float = 20000.0
    roi: str | None = None


@dataclass(frozen=True)
class TilingConfig:
    """Tile grid. ``None`` means: take it from the model's config.json."""

    tile_size: int | None = None
    spacing: float | None = None
    overlap: float = 0.0
    min_tissue: float = 0.25


@dataclass(frozen=True)
class ModelConfig:
    """Model and saliency method.

    Parameters
    ----------
    path
        Model directory; ``None`` is the bundled demo model.
    layer
        Module path of the explained layer; ``None`` is the model's ``saliency_layer``.
    method
        ``gradient``, ``gradient-x-activation``, ``integrated-gradients``, ``deeplift``
        or ``grad-cam``.
    smoothing
        ``none``, ``backward-hook`` or ``forward-hook``.
    target
        Class explained (name or index); ``None`` is the model's tumour class.
    """

    path: str | None = None
    layer: str | None = None
    method: str = "gradient"
    smoothing: str = "backward-hook"
    target: str | int | None = None


@dataclass(frozen=True)
class InferenceConfig:
    """Where and how fast the model runs."""

    device: str = "auto"
    batch_size: int = 32
    workers: int = 2
    autocast: bool = False


@dataclass(frozen=True)
class OutputConfig:
    """What is written and how it is displayed.

    Parameters
    ----------
    threshold
        Tumour probability at or above which ``regions.geojson`` draws a region.
    saliency_range
        Fixed ``(vmin, vmax)`` display range of saliency in ``overlay.png`` for a cohort;
        ``None`` scales each slide by robust percentiles (recorded in ``run.json``).
    blend
        How overlapping tiles are merged: ``"uniform"`` or ``"hann"``.
    """

    threshold: float = 0.5
    saliency_range: tuple[float, float] | None = None
    blend: str = "uniform"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a slide's outputs."""

    slide: SlideConfig = field(default_factory=SlideConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
