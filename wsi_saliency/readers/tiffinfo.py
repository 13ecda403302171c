"""Checks on TIFF-based slides made with tifffile before any backend opens them.

* pixel type: only 8-bit RGB(A) brightfield is supported; 16-bit, single-channel and
  multiplex (multi-channel) fluorescence images raise
  :class:`~wsi_saliency.errors.UnsupportedPixelTypeError` (OpenSlide would otherwise
  silently convert some of them);
* truncation: every pyramid page's tile/strip data must lie inside the file;
* the level-0 TIFF resolution tags, for the spacing policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsi_saliency.errors import SlideOpenError, UnsupportedPixelTypeError

__all__ = ["TiffCheck", "check_tiff", "is_tiff"]

_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(path: Path) -> bool:
    """True when the file starts with a TIFF or BigTIFF header."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class TiffCheck:
    """What :func:`check_tiff` learnt: level-0 resolution tags (pixels per unit)."""

    x_resolution: float | None
    y_resolution: float | None
    resolution_unit: int | None


def check_tiff(path: Path) -> TiffCheck | None:
    """Inspect a TIFF slide; ``None`` when tifffile cannot parse it (backends decide).

    Raises
    ------
    UnsupportedPixelTypeError
        16-bit (or other non-8-bit), single-channel, or multi-channel (multiplex) pixels.
    SlideOpenError
        Image data beyond the end of the file (truncated download or copy).
    """
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - any parse failure: let the backends try
        return None
    with tf:
        try:
            pages = list(tf.pages)
            series = tf.series
        except Exception:  # noqa: BLE001
            return None
        if not pages:
            return None
        page = pages[0]
        if not isinstance(page, tifffile.TiffPage):
            return None
        fix = "convert it to an 8-bit RGB brightfield slide (e.g. with QuPath or bfconvert)"
        bits = int(page.bitspersample)
        if page.dtype is None or page.dtype.itemsize != 1 or bits != 8:
            raise UnsupportedPixelTypeError(
                f"{path}: {bits}-bit {page.dtype} pixels are not supported (8-bit RGB only); {fix}"
            )
        spp = int(page.samplesperpixel)
        photometric = int(page.photometric)
        # 1 = MINISBLACK, 0 = MINISWHITE, 3 = PALETTE; 2 = RGB, 6 = YCbCr
        n_channels = spp
        if series:
            s0 = series[0]
            axes = s0.axes
            for ax in ("C", "S", "I"):
                if ax in axes and photometric in (0, 1):
                    n_channels = max(n_channels, int(s0.shape[axes.index(ax)]))
        if spp > 4 or (photometric in (0, 1) and n_channels > 1):
            raise UnsupportedPixelTypeError(
                f"{path}: multi-channel ({n_channels} channel) fluorescence/multiplex images are "
                f"not supported (brightfield RGB only); {fix}"
            )
        if spp == 1 and photometric != 3:
            raise UnsupportedPixelTypeError(
                f"{path}: single-channel (greyscale/fluorescence) pixels are not supported "
                f"(8-bit RGB brightfield only); {fix}"
            )
        if photometric not in (1, 2, 3, 6):
            raise UnsupportedPixelTypeError(
                f"{path}: colour model (TIFF photometric {photometric}) is not supported "
                f"(RGB or YCbCr only); {fix}"
            )
        size = path.stat().st_size
        for p in pages:
            offsets = getattr(p, "dataoffsets", ())
            counts = getattr(p, "databytecounts", ())
            ends = [o + c for o, c in zip(offsets, counts, strict=False) if c]
            if ends and max(ends) > size:
                raise SlideOpenError(
                    f"{path}: the file is truncated (image data beyond its {size} bytes); "
                    "copy or download it again"
                )
        tags = page.tags
        xr = tags.get("XResolution")
        yr = tags.get("YResolution")
        ru = tags.get("ResolutionUnit")
        return TiffCheck(
            x_resolution=_ratio(xr.value) if xr is not None else None,
            y_resolution=_ratio(yr.value) if yr is not None else None,
            resolution_unit=int(ru.value) if ru is not None else None,
        )


def _ratio(v: object) -> float | None:
    try:
        if isinstance(v, tuple):
            num, den = v
            return float(num) / float(den) if den else None
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
