"""``open_slide``: checks, backend choice, spacing policy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

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
from wsi_saliency.readers.tiffinfo import TiffCheck, check_tiff, is_tiff
from wsi_saliency.readers.tiffslide_backend import (
    TiffSlideReader,
    open_tiffslide,
    tiffslide_geometry,
    tiffslide_objective,
)
from wsi_saliency.types import SlideInfo

__all__ = ["BACKENDS", "Backend", "open_slide"]

#: Backend names accepted by :func:`open_slide`.
Backend = Literal["auto", "openslide", "tiffslide"]
#: Slide reader backends (``slide.backend``): OpenSlide with tiffslide fallback, or one.
BACKENDS: tuple[Backend, ...] = get_args(Backend)


def _build(
    backend: str,
    path: Path,
    tiff: TiffCheck | None,
    mpp: float | tuple[float, float] | None,
    mpp_sidecar: str | None,
) -> BaseSlideReader:
    handle: object
    props: Mapping[str, object]
    if backend == "openslide":
        handle, props = open_openslide(str(path))
        dims, ds = openslide_geometry(handle)
        objective = openslide_objective(props)
        vendor = str(props.get("openslide.vendor") or "unknown")
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
            vendor=vendor_mpp(props, backend),
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
    if backend == "openslide":
        return OpenSlideReader(handle, info)
    return TiffSlideReader(handle, info)


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
        ``"auto"`` (OpenSlide, falling back to tiffslide for files OpenSlide cannot
        open), ``"openslide"`` or ``"tiffslide"``. ``reader.info.backend`` records
        which served the slide.
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

    order = ("openslide", "tiffslide") if backend == "auto" else (backend,)
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
            if require_mpp:
                _require_mpp(p, reader.info.mpp, mpp_sidecar)
        except BaseException:
            reader.close()
            raise
        return reader
    raise SlideOpenError(
        f"{p}: not a readable slide ({'; '.join(errors)}); check that it is a complete "
        "whole-slide image (SVS, TIFF, NDPI, MRXS, ...)"
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _smoke_test(reader: BaseSlideReader) -> None:
    """Decode a few pixels of the coarsest level so that corrupt files fail at open."""
    level = reader.info.level_count - 1
    w, h = reader.info.level_dimensions[level]
    reader.read_level(level, 0, 0, min(w, 16), min(h, 16))
