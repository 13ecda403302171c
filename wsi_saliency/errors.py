"""Errors raised by wsi_saliency.

Every error derives from :class:`WsiSaliencyError` and, where one fits, from the
matching built-in exception too (the pattern of zarr-python's ``errors.py``), so
``except OSError`` or ``except ValueError`` in calling code keeps working.

Messages are one line, name the file or value at fault, and say what to do.
"""

from __future__ import annotations

__all__ = [
    "AnnotationError",
    "ClusterError",
    "ConfigError",
    "InputError",
    "InvalidModelError",
    "LayerNotFoundError",
    "MissingDependencyError",
    "MissingMppError",
    "NoTissueError",
    "OutputError",
    "SaliencyUnsupportedError",
    "SlideOpenError",
    "SlideTooSmallError",
    "StitchError",
    "SurrogateError",
    "UnsafeWeightsError",
    "UnsupportedPixelTypeError",
    "WsiSaliencyError",
    "WsiSaliencyWarning",
]


class WsiSaliencyError(Exception):
    """Base class of every error raised on purpose by wsi_saliency."""


class WsiSaliencyWarning(UserWarning):
    """Base class of every warning issued by wsi_saliency (the tests turn it into an error
    unless a test expects it with ``pytest.warns``)."""


class SlideOpenError(WsiSaliencyError, OSError):
    """A file cannot be opened as a slide (missing, truncated, not a slide)."""


class UnsupportedPixelTypeError(WsiSaliencyError, ValueError):
    """A slide's pixels are not 8-bit RGB(A) brightfield (16-bit, 1 channel, multiplex)."""


class MissingMppError(WsiSaliencyError, ValueError):
    """No physical pixel size (microns per pixel) is known for a slide."""


class NoTissueError(WsiSaliencyError, ValueError):
    """Tissue detection found no tissue, or no tile passed the tissue threshold."""


class SlideTooSmallError(WsiSaliencyError, ValueError):
    """A slide is smaller than one tile at the requested spacing."""


class ConfigError(WsiSaliencyError, ValueError):
    """A run configuration has an unknown key or a bad value."""


class InvalidModelError(WsiSaliencyError, ValueError):
    """A model directory is incomplete or its config.json is invalid."""


class SurrogateError(ConfigError):
    """``smoothing: bilinear`` without a surrogate, or one trained for other weights."""


class UnsafeWeightsError(InvalidModelError):
    """A weights file would need arbitrary code execution (pickle) to load."""


class LayerNotFoundError(WsiSaliencyError, KeyError):
    """A layer name does not exist in the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0]) if self.args else ""


class SaliencyUnsupportedError(WsiSaliencyError, ValueError):
    """Saliency was asked of a model that cannot give it (e.g. TorchScript)."""


class OutputError(WsiSaliencyError, OSError):
    """An output folder cannot be created or written."""


class InputError(WsiSaliencyError, ValueError):
    """A batch input (file, folder, glob pattern or list file) names no usable slide."""


class StitchError(WsiSaliencyError, ValueError):
    """Tile results do not fit the stitcher (wrong shapes, indices, a tile added twice)."""


class MissingDependencyError(WsiSaliencyError, ImportError):
    """An optional package a feature needs is not installed (the message says what to install)."""


class AnnotationError(WsiSaliencyError, ValueError):
    """A lesion annotation file cannot be parsed, is empty, or does not fit its slide."""


class ClusterError(WsiSaliencyError, ConnectionError):
    """A Dask cluster cannot be started or its scheduler cannot be reached."""
