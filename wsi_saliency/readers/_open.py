"""``open_slide``: checks, backend choice (the ``auto`` rule), spacing policy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal, get_args

import numpy as np

from wsi_saliency.errors import SlideOpenError, WsiSaliencyError
from wsi_saliency.readers.base import BaseSlideReader
from wsi_saliency.readers.mpp import mpp_from_resolution, resolve_mpp, vendor_mpp
from wsi_saliency.readers.mpp import require_mpp as _require_mpp
from wsi_saliency.readers.openslide_backend import (
    OpenSlideReader,
    open_openslide,
    openslide_geometry,
    openslide_objective,
)
from wsi_saliency.readers.pyvips_backend import PyVipsReader, open_pyvips
from wsi_saliency.readers.tiffinfo import TiffCheck, check_tiff, is_tiff
from wsi_saliency.readers.tiffslide_backend import (
    TiffSlideReader,
    open_tiffslide,
    tiffslide_geometry,
    tiffslide_objective,
)
from wsi_saliency.types import SlideInfo

__all__ = ["BACKENDS", "Backend", "differences", "open_slide", "probe_windows"]

#: Backend names accepted by :func:`open_slide` (``slide.backend``): ``auto`` picks, per
#: file, the fastest backend that reads the slide identically to its reference.
Backend = Literal["auto", "openslide", "tiffslide", "pyvips"]
#: Slide reader backends (``slide.backend``).
BACKENDS: tuple[Backend, ...] = get_args(Backend)

#: ``auto``: the reference backends, tried in this order; the first that opens the
#: slide is its reference.
REFERENCE_ORDER: Final[tuple[str, ...]] = ("openslide", "tiffslide")
#: ``auto``: backends fastest first, as measured by ``benchmarks/bench_read.py`` (tiles
#: per CPU second through the block cache). A slide is served by the first of these
#: that reads it identically to its reference (or is the reference): same level
#: dimensions and downsamples, same spacing, and on every probe window a mean absolute
#: pixel difference of at most :data:`PROBE_MEAN_TOL` with at most
#: :data:`PROBE_OUTLIER_FRAC` of the values differing by more than
#: :data:`PROBE_MAX_TOL` (JPEG decoders may round differently).
SPEED_ORDER: Final[tuple[str, ...]] = ("pyvips", "tiffslide", "openslide")
PROBE_MEAN_TOL: Final[float] = 1.0
PROBE_MAX_TOL: Final[int] = 8
PROBE_OUTLIER_FRAC: Final[float] = 0.001
#: Side of the square probe windows (level pixels).
PROBE_SIZE: Final[int] = 256

_log = logging.getLogger(__name__)


def _tile_shapes(
    props: Mapping[str, object], prefix: str, n_levels: int
) -> tuple[tuple[int, int] | None, ...]:
    out: list[tuple[int, int] | None] = []
    for k in range(n_levels):
        try:
            w = int(str(props.get(f"{prefix}.level[{k}].tile-width")))
            h = int(str(props.get(f"{prefix}.level[{k}].tile-height")))
        except (TypeError, ValueError):
            out.append(None)
            continue
        out.append((w, h) if w > 0 and h > 0 else None)
    return tuple(out)


def _build(
    backend: str,
    path: Path,
    tiff: TiffCheck | None,
    mpp: float | tuple[float, float] | None,
    mpp_sidecar: str | None,
) -> BaseSlideReader:
    handle: object
    props: Mapping[str, object]
    prop_backend = backend
    if backend == "openslide":
        handle, props = open_openslide(str(path))
        dims, ds = openslide_geometry(handle)
        objective = openslide_objective(props)
        vendor = str(props.get("openslide.vendor") or "unknown")
    elif backend == "pyvips":
        if tiff is None:
            raise ValueError("libvips reads TIFF-based slides only (SVS, generic and OME TIFF)")
        handle, props, (dims, ds) = open_pyvips(str(path))
        prop_backend = "tiffslide"  # structure and metadata were parsed by tiffslide
        objective = tiffslide_objective(props)
        vendor = str(props.get("tiffslide.vendor") or "generic-tiff")
    else:
        handle, props = open_tiffslide(str(path))
        dims, ds = tiffslide_geometry(handle)
        objective = tiffslide_objective(props)
        vendor = str(props.get("tiffslide.vendor") or ("generic-tiff" if tiff else "unknown"))
    try:
        resolution = None
        if tiff is not None:
            resolution = mpp_from_resolution(
                tiff.x_resolution, tiff.y_resolution, tiff.resolution_unit
            )
        spacing = resolve_mpp(
            path,
            override=mpp,
            sidecar=mpp_sidecar,
            vendor=vendor_mpp(props, prop_backend),
            resolution=resolution,
        )
        info = SlideInfo(
            path=str(path),
            backend=backend,
            dimensions=dims[0],
            level_dimensions=dims,
            level_downsamples=ds,
            mpp=spacing,
            objective_power=objective,
            vendor=vendor,
        )
    except BaseException:
        handle.close()  # type: ignore[attr-defined]
        raise
    reader: BaseSlideReader
    if backend == "openslide":
        reader = OpenSlideReader(handle, info)
    elif backend == "pyvips":
        reader = PyVipsReader(handle, info)  # type: ignore[arg-type]
    else:
        reader = TiffSlideReader(handle, info)
    reader.tile_shapes = _tile_shapes(props, prop_backend, len(dims))
    return reader


def open_slide(
    path: str | Path,
    *,
    backend: str = "auto",
    mpp: float | tuple[float, float] | None = None,
    mpp_sidecar: str | None = "{stem}.mpp.json",
    require_mpp: bool = True,
) -> BaseSlideReader:
    """Open a whole-slide image.

    Parameters
    ----------
    path
        The slide file.
    backend
        ``"auto"``: per file, the fastest backend (pyvips, then tiffslide, then
        OpenSlide) that reads the slide identically to the reference backend
        (OpenSlide, or tiffslide for files OpenSlide cannot open; see
        :func:`differences`). ``"openslide"``,
        ``"tiffslide"`` or ``"pyvips"`` force one backend. ``reader.info.backend``
        records which served the slide.
    mpp
        Spacing override in um/px (number or ``(x, y)``); wins over everything.
    mpp_sidecar
        Name pattern of a per-slide sidecar JSON (``{stem}``/``{name}`` replaced),
        ``None`` to ignore sidecars.
    require_mpp
        Raise :class:`~wsi_saliency.errors.MissingMppError` when no spacing is found
        (otherwise ``info.mpp`` is ``None``).

    Returns
    -------
    BaseSlideReader
        A :class:`~wsi_saliency.readers.SlideReader`; use it as a context manager.

    Raises
    ------
    SlideOpenError
        Missing, unreadable, truncated or non-slide file.
    UnsupportedPixelTypeError
        16-bit, single-channel or multiplex fluorescence pixels.
    MissingMppError
        No spacing found and ``require_mpp``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    p = Path(path).expanduser()
    if not p.exists():
        raise SlideOpenError(f"{p}: no such file; check the slide path")
    if p.is_dir():
        raise SlideOpenError(f"{p}: is a folder, not a slide file; give the slide file itself")
    # absolute, not resolved: a per-slide sidecar sits beside the path the user gave,
    # which may be a symlink into a read-only archive
    p = p.absolute()
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise SlideOpenError(
            f"{p}: cannot be read ({exc.strerror}); check its permissions"
        ) from exc
    if not head:
        raise SlideOpenError(f"{p}: the file is empty; copy or download the slide again")
    tiff = check_tiff(p) if is_tiff(p) else None

    if backend == "pyvips":
        try:
            reader = _build("pyvips", p, tiff, mpp, mpp_sidecar)
        except (MemoryError, KeyboardInterrupt, WsiSaliencyError):
            raise
        except Exception as exc:  # noqa: BLE001 - libvips / tifffile errors of any kind
            raise SlideOpenError(_pyvips_refusal(p, exc)) from exc
        try:
            _smoke_test(reader)
        except SlideOpenError as exc:
            reader.close()
            raise SlideOpenError(_pyvips_refusal(p, exc.__cause__ or exc)) from exc
        return _checked(reader, p, require_mpp, mpp_sidecar)

    order = REFERENCE_ORDER if backend == "auto" else (backend,)
    errors: list[str] = []
    for name in order:
        try:
            reader = _build(name, p, tiff, mpp, mpp_sidecar)
        except MemoryError:
            raise
        except WsiSaliencyError:
            raise
        except Exception as exc:  # noqa: BLE001 - backend-specific error types
            errors.append(f"{name}: {type(exc).__name__}: {_one_line(exc)}")
            continue
        try:
            _smoke_test(reader)
        except BaseException:
            reader.close()
            raise
        if backend == "auto":
            reader = _fastest_identical(reader, p, tiff, mpp, mpp_sidecar)
        return _checked(reader, p, require_mpp, mpp_sidecar)
    raise SlideOpenError(
        f"{p}: not a readable slide ({'; '.join(errors)}); check that it is a complete "
        "whole-slide image (SVS, TIFF, NDPI, MRXS, ...)"
    )


def _checked(
    reader: BaseSlideReader, p: Path, require_mpp: bool, mpp_sidecar: str | None
) -> BaseSlideReader:
    try:
        if require_mpp:
            _require_mpp(p, reader.info.mpp, mpp_sidecar)
    except BaseException:
        reader.close()
        raise
    return reader


def _pyvips_refusal(p: Path, exc: BaseException) -> str:
    return (
        f"{p}: not a readable slide for the pyvips backend ({type(exc).__name__}: "
        f"{_one_line(exc)}); libvips here reads TIFF-based slides (SVS, generic and OME "
        "TIFF) without JPEG 2000 - use --backend auto (falls back per file) or "
        "--backend openslide / tiffslide"
    )


def _fastest_identical(
    reference: BaseSlideReader,
    p: Path,
    tiff: TiffCheck | None,
    mpp: float | tuple[float, float] | None,
    mpp_sidecar: str | None,
) -> BaseSlideReader:
    """``auto``: the first backend of :data:`SPEED_ORDER` that reads the slide like ``reference``."""
    ref_name = reference.info.backend
    for name in SPEED_ORDER:
        if name == ref_name:
            return reference
        if name == "pyvips" and tiff is None:
            _log.debug("%s: not a TIFF, pyvips skipped", p)
            continue
        try:
            candidate = _build(name, p, tiff, mpp, mpp_sidecar)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises
            _log.info("%s: %s cannot open it (%s)", p, name, _one_line(exc))
            continue
        try:
            why = differences(candidate, reference)
        except (MemoryError, KeyboardInterrupt):
            candidate.close()
            raise
        except Exception as exc:  # noqa: BLE001 - a pixel the candidate cannot decode
            why = f"{type(exc).__name__}: {_one_line(exc.__cause__ or exc)}"
        if not why:
            reference.close()
            return candidate
        candidate.close()
        _log.info("%s: %s does not read it like %s (%s)", p, name, ref_name, why)
    return reference


def probe_windows(info: SlideInfo) -> list[tuple[int, int, int, int, int]]:
    """The probe windows ``(level, x, y, w, h)`` compared by :func:`differences`.

    Three windows of level 0 (at a quarter, half and three quarters of the diagonal)
    and the middle of every other level, each at most :data:`PROBE_SIZE` square.
    """
    out: list[tuple[int, int, int, int, int]] = []
    for level, (w, h) in enumerate(info.level_dimensions):
        pw, ph = min(w, PROBE_SIZE), min(h, PROBE_SIZE)
        fracs = (0.25, 0.5, 0.75) if level == 0 else (0.5,)
        for f in fracs:
            x = max(0, min(w - pw, round(w * f - pw / 2)))
            y = max(0, min(h - ph, round(h * f - ph / 2)))
            win = (level, x, y, pw, ph)
            if win not in out:
                out.append(win)
    return out


def differences(a: BaseSlideReader, b: BaseSlideReader) -> str:
    """Why ``a`` does not read its slide identically to ``b``; ``""`` when it does.

    Identical: same level dimensions, same downsamples (to 1e-9 relative), same spacing
    values (to 1e-9 relative; the source may differ) and, on every window of
    :func:`probe_windows`, pixels within JPEG decoder tolerance (see
    :data:`PROBE_MEAN_TOL`).
    """
    ia, ib = a.info, b.info
    if ia.level_dimensions != ib.level_dimensions:
        return f"levels {ia.level_dimensions} vs {ib.level_dimensions}"
    if not np.allclose(ia.level_downsamples, ib.level_downsamples, rtol=1e-9, atol=0):
        return f"downsamples {ia.level_downsamples} vs {ib.level_downsamples}"
    ma, mb = ia.mpp, ib.mpp
    if (ma is None) != (mb is None) or (
        ma is not None
        and mb is not None
        and not np.allclose((ma.x, ma.y), (mb.x, mb.y), rtol=1e-9, atol=0)
    ):
        return f"spacing {ma} vs {mb}"
    for level, x, y, w, h in probe_windows(ia):
        pa = a.read_level(level, x, y, w, h).astype(np.int16)
        pb = b.read_level(level, x, y, w, h).astype(np.int16)
        d = np.abs(pa - pb)
        mean = float(d.mean())
        outliers = float((d > PROBE_MAX_TOL).mean())
        if mean > PROBE_MEAN_TOL or outliers > PROBE_OUTLIER_FRAC:
            return (
                f"pixels of level {level} at ({x}, {y}) differ: mean {mean:.2f}, "
                f"{outliers:.2%} beyond {PROBE_MAX_TOL}"
            )
    return ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _smoke_test(reader: BaseSlideReader) -> None:
    """Decode a few pixels of the coarsest level so that corrupt files fail at open."""
    level = reader.info.level_count - 1
    w, h = reader.info.level_dimensions[level]
    reader.read_level(level, 0, 0, min(w, 16), min(h, 16))
