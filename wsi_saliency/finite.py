"""Model outputs that are not finite: found where they enter the pipeline, left out.

A tile whose class probabilities or saliency map hold a NaN or an infinity (a model that
overflows, a broken input) has no result worth drawing. Stitched in, its NaN would spread
through the blended heatmap into every neighbour it overlaps, and written out it would
break QuPath 0.4's GeoJSON import. :func:`finite_tiles` drops such tiles from a batch;
the worker counts them in ``run.json`` (``nonfinite.tiles_left_out``) and logs a warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["finite_tiles"]


def finite_tiles(
    indices: Any, probabilities: Any, maps: Any | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """Keep the tiles of a batch whose probabilities and saliency map are all finite.

    Parameters
    ----------
    indices
        ``(B,)`` tile indices.
    probabilities
        ``(B, C)`` class probabilities.
    maps
        ``(B, h, w)`` saliency maps, or ``None`` (prediction only, ``--method none``).

    Returns
    -------
    tuple
        ``(indices, probabilities, maps)`` of the finite tiles, in the input order.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    probs = np.asarray(probabilities, dtype=np.float32)
    mp = None if maps is None else np.asarray(maps, dtype=np.float32)
    if idx.size == 0:
        return idx, probs, mp
    ok = np.isfinite(probs.reshape(idx.size, -1)).all(axis=1)
    if mp is not None:
        ok &= np.isfinite(mp.reshape(idx.size, -1)).all(axis=1)
    if ok.all():
        return idx, probs, mp
    return idx[ok], probs[ok], None if mp is None else mp[ok]
