"""pyvips backend: libvips decodes the pixels of TIFF-based slides (SVS, generic, OME TIFF).

The ``pyvips-binary`` wheel ships libvips without its OpenSlide loader and without
JPEG 2000, so this backend reads only what libvips' own ``tiffload`` reads: tiled or
stripped TIFF pages with JPEG, deflate, LZW, ... compression. The pyramid structure
(which TIFF page or SubIFD is which level, dimensions, downsamples) and the metadata
(vendor, spacing, objective) come from tifffile through tiffslide's parser, so that
geometry and spacing are the same as tiffslide's by construction; pixels come from
libvips (one lazily opened image and :class:`pyvips.Region` per level).

libvips keeps a small cache of decoded TIFF tiles per level image (two rows of tiles
across the level), so neighbouring reads seldom decode a tile twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from wsi_saliency.readers.base import BaseSlideReader
from wsi_saliency.types import SlideInfo

__all__ = ["JPEG2000_COMPRESSIONS", "PyVipsReader", "open_pyvips"]

#: TIFF compressions holding JPEG 2000 (Aperio YCbCr / RGB, OME/generic): libvips'
#: tiffload needs its JPEG 2000 loader for these, which pyvips-binary does not ship.
JPEG2000_COMPRESSIONS: frozenset[int] = frozenset({33003, 33004, 33005, 34712})


class PyVipsSlide:
    """The parts of a slide file pyvips needs: path and (page, subifd) per level."""

    def __init__(self, path: str, pages: tuple[tuple[int, int | None], ...]) -> None:
        self.path = path
        self.pages = pages
        self._images: dict[int, Any] = {}
        self._regions: dict[int, Any] = {}

    def region(self, level: int) -> Any:
        """The :class:`pyvips.Region` of ``level`` (opened on first use)."""
        reg = self._regions.get(level)
        if reg is None:
            import pyvips

            page, subifd = self.pages[level]
            # revalidate: never a stale image from libvips' operation cache when a file
            # was replaced at the same path
            kwargs: dict[str, Any] = {"page": page, "fail_on": "error", "revalidate": True}
            if subifd is not None:
                kwargs["subifd"] = subifd
            img = pyvips.Image.tiffload(self.path, **kwargs)
            reg = pyvips.Region.new(img)
            self._images[level] = img
            self._regions[level] = reg
        return reg

    def image(self, level: int) -> Any:
        """The :class:`pyvips.Image` of ``level`` (opened on first use)."""
        self.region(level)
        return self._images[level]

    def bands(self, level: int) -> int:
        """Number of bands of ``level`` (3 RGB, 4 RGBA)."""
        return int(self.image(level).bands)

    def close(self) -> None:
        """Drop the libvips images (libvips closes the file with the last reference)."""
        self._regions.clear()
        self._images.clear()


class PyVipsReader(BaseSlideReader):
    """A slide whose pixels libvips decodes."""

    def __init__(self, slide: PyVipsSlide, info: SlideInfo) -> None:
        super().__init__(info)
        self._slide = slide

    def _read_level_raw(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> npt.NDArray[np.uint8]:
        reg = self._slide.region(level)
        bands = self._slide.bands(level)
        data = reg.fetch(x, y, width, height)
        a = np.frombuffer(data, dtype=np.uint8)
        if a.size != width * height * bands:
            raise TypeError(
                f"libvips returned {a.size} bytes for a {width}x{height}x{bands} uint8 window"
            )
        a = a.reshape(height, width, bands)
        if bands == 3 or bands == 4:
            return a
        if bands == 2:  # grey + alpha: cannot pass the pixel-type checks, but be exact
            return np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
        return np.repeat(a[..., :1], 3, axis=2)

    def _close(self) -> None:
        self._slide.close()


Geometry = tuple[tuple[tuple[int, int], ...], tuple[float, ...]]


def open_pyvips(path: str) -> tuple[PyVipsSlide, Mapping[str, object], Geometry]:
    """Parse ``path`` with tiffslide, map its levels to TIFF pages and open them in libvips.

    Returns the pyvips slide, tiffslide's properties (vendor, spacing, objective, tile
    sizes) and the geometry ``(level_dimensions, level_downsamples)`` exactly as tiffslide
    reports it. Raises whatever tiffslide or libvips raise (the caller turns it into
    :class:`~wsi_saliency.errors.SlideOpenError`).
    """
    import tiffslide

    ts = tiffslide.TiffSlide(path)
    try:
        props = dict(ts.properties)
        idx = int(props.get("tiffslide.series-index") or 0)
        series = ts.ts_tifffile.series[idx]
        tf = ts.ts_tifffile
        # libvips names a page by its top-level IFD number and, for pyramids kept in
        # SubIFDs (OME-TIFF), the SubIFD number under it: map file offsets to both
        where: dict[int, tuple[int, int | None]] = {}
        for i, top in enumerate(tf.pages):
            where[int(top.offset)] = (i, None)
            for j, off in enumerate(getattr(top, "subifds", None) or ()):
                where.setdefault(int(off), (i, j))
        pages: list[tuple[int, int | None]] = []
        for lvl in series.levels:
            key = lvl.keyframe
            if int(key.compression) in JPEG2000_COMPRESSIONS:
                raise ValueError(
                    f"JPEG 2000 tiles (TIFF compression {int(key.compression)}): "
                    "the libvips of pyvips-binary has no JPEG 2000 decoder"
                )
            if int(key.offset) not in where:
                raise ValueError(f"level {key.shape} is in a nested SubIFD libvips cannot name")
            pages.append(where[int(key.offset)])
        dims = tuple((int(w), int(h)) for w, h in ts.level_dimensions)
        ds = tuple(float(d) for d in ts.level_downsamples)
    finally:
        ts.close()
    if len(pages) != len(dims):
        raise ValueError(f"{len(pages)} TIFF levels but {len(dims)} slide levels")
    slide = PyVipsSlide(path, tuple(pages))
    try:
        for k, (w, h) in enumerate(dims):
            got = slide.image(k)
            if (int(got.width), int(got.height)) != (w, h):
                raise ValueError(
                    f"libvips sees level {k} as {got.width}x{got.height}, tifffile as {w}x{h}"
                )
            if got.format != "uchar":
                raise TypeError(f"libvips reads level {k} as {got.format}, expected uchar")
    except BaseException:
        slide.close()
        raise
    return slide, props, (dims, ds)
