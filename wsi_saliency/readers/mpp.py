"""The one spacing (MPP, micrometres per pixel) policy.

Order (first hit wins, x and y handled separately):

1. ``override``: the user's ``--mpp`` / config ``slide.mpp`` (a number or ``(x, y)``);
2. ``sidecar``: a per-slide JSON file beside the slide, name pattern ``{stem}.mpp.json``
   by default, holding ``{"mpp": 0.25}`` or ``{"mpp_x": 0.25, "mpp_y": 0.26}``;
3. vendor metadata: Aperio ``MPP`` (source ``"aperio"``), otherwise the backend's
   ``openslide.mpp-x/y`` / ``tiffslide.mpp-x/y`` of a scanner format (source
   ``"openslide"``); a generic TIFF has no vendor metadata - its spacing is step 4;
4. TIFF resolution tags ``XResolution`` / ``YResolution`` with ``ResolutionUnit``
   centimetre or inch (source ``"tiff-resolution"``).

Metadata values outside :data:`PLAUSIBLE_MPP` (for instance the 72-dpi default many
tools write, 352.8 um/px) are ignored as not physical; a user's override or sidecar
outside it is refused with a :class:`~wsi_saliency.errors.ConfigError` (typically a
magnification such as 40 or a resolution in dpi given where um/px was meant). Nothing
found: ``None``, and :func:`require_mpp` raises
:class:`~wsi_saliency.errors.MissingMppError` naming the slide and the fixes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from wsi_saliency.errors import ConfigError, MissingMppError
from wsi_saliency.inputs import companion_path
from wsi_saliency.types import Mpp

__all__ = [
    "PLAUSIBLE_MPP",
    "mpp_from_resolution",
    "parse_mpp_value",
    "read_sidecar",
    "require_mpp",
    "resolve_mpp",
    "sidecar_path",
    "vendor_mpp",
]

#: Range (um/px) a metadata spacing must fall in to be believed.
PLAUSIBLE_MPP: Final[tuple[float, float]] = (0.01, 50.0)

#: Micrometres per resolution unit (TIFF ResolutionUnit 2 = inch, 3 = centimetre).
_UM_PER_UNIT: Final[Mapping[int, float]] = {2: 25400.0, 3: 10000.0}


def _plausible(v: float) -> bool:
    return math.isfinite(v) and PLAUSIBLE_MPP[0] <= v <= PLAUSIBLE_MPP[1]


def parse_mpp_value(
    value: float | tuple[float, float] | list[float],
    what: str,
    *,
    example: str = "--mpp 0.25",
) -> tuple[float, float]:
    """Validate a user-given spacing: one or two numbers in :data:`PLAUSIBLE_MPP`.

    Parameters
    ----------
    value
        A number or an ``(x, y)`` pair in um/px.
    what
        Where the value came from (option or file), for the message.
    example
        How to give a correct value there, for the message.

    Raises
    ------
    ConfigError
        When the value is not one or two finite numbers within :data:`PLAUSIBLE_MPP`.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: spacing {value!r} is not a number; give um/px, e.g. {example}")
    try:
        if isinstance(value, (int, float)):
            x = y = float(value)
        else:
            vals = [float(v) for v in value]
            if len(vals) != 2:
                raise ValueError
            x, y = vals
    except (TypeError, ValueError):
        raise ConfigError(
            f"{what}: spacing {value!r} is not a number or an (x, y) pair; give um/px, "
            f"e.g. {example}"
        ) from None
    for v in (x, y):
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{what}: spacing {value!r} must be positive um/px, e.g. {example}")
    for v in (x, y):
        if not _plausible(v):
            lo, hi = PLAUSIBLE_MPP
            raise ConfigError(
                f"{what}: spacing {v:g} um/px is outside the plausible {lo:g}-{hi:g} um/px; "
                f"give the level-0 pixel size in um/px, e.g. {example} (0.25 um/px is typical "
                "at 40x, 0.5 at 20x) - did you pass a magnification or a resolution in dpi?"
            )
    return x, y


def sidecar_path(slide: Path, pattern: str) -> Path:
    """The sidecar file for ``slide``: ``pattern`` with ``{stem}``/``{name}`` filled in
    (:func:`wsi_saliency.inputs.companion_path`; ``x.ome.tif`` has stem ``x``)."""
    return companion_path(pattern, slide)


def read_sidecar(slide: Path, pattern: str | None) -> tuple[float, float] | None:
    """Spacing from the slide's sidecar JSON, or ``None`` when there is no sidecar.

    Raises
    ------
    ConfigError
        When the sidecar exists but is not ``{"mpp": v}`` or ``{"mpp_x": x, "mpp_y": y}``
        with values in :data:`PLAUSIBLE_MPP`.
    """
    if not pattern:
        return None
    path = sidecar_path(slide, pattern)
    if not path.is_file():
        return None
    fix = 'write {"mpp": 0.25} or {"mpp_x": 0.25, "mpp_y": 0.25} (um/px)'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"MPP sidecar {path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"MPP sidecar {path} must hold a JSON object; {fix}")
    example = '{"mpp": 0.25} in it'
    if "mpp" in data:
        return parse_mpp_value(data["mpp"], f"MPP sidecar {path}", example=example)
    if "mpp_x" in data and "mpp_y" in data:
        return parse_mpp_value(
            (data["mpp_x"], data["mpp_y"]), f"MPP sidecar {path}", example=example
        )
    raise ConfigError(f"MPP sidecar {path} has no 'mpp' or 'mpp_x'/'mpp_y'; {fix}")


def _float(props: Mapping[str, object], key: str) -> float | None:
    v = props.get(key)
    if v is None or v == "":
        return None
    try:
        f = float(str(v))
    except ValueError:
        return None
    return f if _plausible(f) else None


def vendor_mpp(props: Mapping[str, object], prefix: str) -> tuple[float, float, str] | None:
    """Spacing from scanner metadata exposed by a backend.

    Parameters
    ----------
    props
        The backend's property mapping.
    prefix
        ``"openslide"`` or ``"tiffslide"`` (key prefix of ``<prefix>.mpp-x`` and
        ``<prefix>.vendor``).

    Returns
    -------
    tuple or None
        ``(x, y, source)`` with source ``"aperio"`` or ``"openslide"``; ``None`` for a
        generic TIFF (its spacing comes from the resolution tags) or when absent.
    """
    vendor = props.get(f"{prefix}.vendor")
    if vendor in (None, "", "generic-tiff"):
        return None
    aperio = _float(props, "aperio.MPP")
    if aperio is not None:
        return aperio, aperio, "aperio"
    x = _float(props, f"{prefix}.mpp-x")
    y = _float(props, f"{prefix}.mpp-y")
    if x is None and y is None:
        return None
    if x is None or y is None:  # one axis only: square pixels
        x = y = x if x is not None else y
    assert x is not None and y is not None
    return x, y, "aperio" if vendor == "aperio" else "openslide"


def mpp_from_resolution(
    x_res: float | None, y_res: float | None, unit: int | None
) -> tuple[float, float] | None:
    """Spacing (um/px) from TIFF ``XResolution``/``YResolution`` (pixels per unit).

    Only centimetre (3) and inch (2) units are physical; anything else gives ``None``.
    """
    if unit is None or unit not in _UM_PER_UNIT or not x_res or not y_res:
        return None
    um = _UM_PER_UNIT[unit]
    x, y = um / float(x_res), um / float(y_res)
    if not (_plausible(x) and _plausible(y)):
        return None
    return x, y


#: Level-0 spacings above this (um/px) are rare for brightfield scans (below 5x); a user
#: value above it may be a magnification typed as a spacing, so it is logged.
UNUSUAL_MPP: Final[float] = 2.0


def _warn_if_coarse(slide: Path, mpp: float, where: str) -> None:
    if mpp > UNUSUAL_MPP:
        logging.getLogger(__name__).warning(
            "%s: %s gives %.4g um/px, unusually coarse for a level-0 scan (0.25 um/px is "
            "typical at 40x, 0.5 at 20x); check it is a spacing, not a magnification",
            slide, where, mpp,
        )


def resolve_mpp(
    slide: Path,
    *,
    override: float | tuple[float, float] | None,
    sidecar: str | None,
    vendor: tuple[float, float, str] | None,
    resolution: tuple[float, float] | None,
) -> Mpp | None:
    """Apply the policy (module docstring); ``None`` when nothing gives a spacing.

    Raises
    ------
    ConfigError
        An override or sidecar that is not a plausible spacing (see
        :func:`parse_mpp_value`).
    """
    if override is not None:
        x, y = parse_mpp_value(
            override, f"{slide}: MPP override (--mpp / slide.mpp / open_slide(mpp=))"
        )
        _warn_if_coarse(slide, x, "--mpp")
        return Mpp(x, y, "override")
    sc = read_sidecar(slide, sidecar)
    if sc is not None:
        _warn_if_coarse(slide, sc[0], "its MPP sidecar")
        return Mpp(sc[0], sc[1], "sidecar")
    if vendor is not None:
        return Mpp(vendor[0], vendor[1], vendor[2])
    if resolution is not None:
        return Mpp(resolution[0], resolution[1], "tiff-resolution")
    return None


def require_mpp(slide: Path, mpp: Mpp | None, sidecar: str | None = "{stem}.mpp.json") -> Mpp:
    """Return ``mpp`` or raise :class:`MissingMppError` naming the slide and the fix."""
    if mpp is not None:
        return mpp
    hint = ""
    if sidecar:
        hint = f' or write {sidecar_path(slide, sidecar).name} with {{"mpp": 0.25}} beside it'
    raise MissingMppError(
        f"{slide}: no pixel spacing (MPP) in the slide metadata; give it in um/px with "
        f"--mpp (CLI, e.g. --mpp 0.25) / mpp= (open_slide){hint}"
    )
