"""Slide readers: one :class:`SlideReader` contract, OpenSlide and tiffslide backends.

>>> from wsi_saliency.readers import open_slide
>>> with open_slide("slide.svs") as reader:          # doctest: +SKIP
...     reader.info.mpp, reader.info.backend
...     tile = reader.read_region((0, 0), 0, (224, 224))

``open_slide(backend="auto")`` tries OpenSlide and falls back to tiffslide for files
OpenSlide cannot open. The spacing policy lives in :mod:`wsi_saliency.readers.mpp`.
Associated images (label, macro, thumbnail) and scanner properties are never exposed:
:class:`~wsi_saliency.types.SlideInfo` holds geometry, spacing, objective and vendor only.
"""

from __future__ import annotations

from wsi_saliency.readers._open import BACKENDS, Backend, open_slide
from wsi_saliency.readers.base import BaseSlideReader, SlideReader, composite_on_white
from wsi_saliency.readers.mpp import require_mpp, resolve_mpp
from wsi_saliency.readers.resample import resample_margin, resample_window

__all__ = [
    "BACKENDS",
    "Backend",
    "BaseSlideReader",
    "SlideReader",
    "composite_on_white",
    "open_slide",
    "require_mpp",
    "resample_margin",
    "resample_window",
    "resolve_mpp",
]
