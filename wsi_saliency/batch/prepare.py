"""Before a batch: check the inputs, the model and the output folder, in that order.

:func:`prepare_batch` finds every usage error a batch can find without reading a slide
(no input, bad model, bad layer or tile geometry, missing Dask, unwritable output
folder) and only then creates the output folder, so a usage error leaves nothing
behind. The command line turns its errors into exit status 2.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_saliency.batch.discover import discover_slides
from wsi_saliency.batch.outdir import prepare_output_dir
from wsi_saliency.config import RunConfig

if TYPE_CHECKING:
    from wsi_saliency.models import LoadedModel

__all__ = ["PreparedBatch", "check_batch", "load_batch_model", "prepare_batch"]

logger = logging.getLogger("wsi_saliency")


@dataclass(frozen=True)
class PreparedBatch:
    """A batch ready to run: its slides, output folder, configuration and model.

    Parameters
    ----------
    slides
        Discovered slide paths.
    out_dir
        The created, writable output folder.
    config
        The run configuration (as given; the runner resolves the model's defaults).
    model
        The model, loaded once.
    """

    slides: list[Path]
    out_dir: Path
    config: RunConfig
    model: LoadedModel


def load_batch_model(config: RunConfig) -> LoadedModel:
    """Load the model ``config.model`` names (the bundled demo model when its path is None).

    Parameters
    ----------
    config
        Run configuration.

    Returns
    -------
    LoadedModel
    """
    from wsi_saliency.models import load_model

    return load_model(config.model.path, trust_code=config.model.trust_code)


def check_batch(model: LoadedModel, config: RunConfig, *, demo: bool = False) -> None:
    """Usage errors a slide would only find later (layer, target, device, tile geometry).

    Warns when the bundled demo model runs on the user's slides (not for the demo).

    Parameters
    ----------
    model
        The loaded model.
    config
        Run configuration.
    demo
        The demo runs the demo model on its own slide: no warning about it.
    """
    from wsi_saliency.worker import check_run

    check_run(model, config)
    if config.model.path is None and not demo:
        logger.warning(
            "using the bundled demo model: it was trained on generated slides only and is not "
            "a medical model; its outputs on real slides mean nothing (pass --model)"
        )


def prepare_batch(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    config: RunConfig,
    *,
    demo: bool = False,
) -> PreparedBatch:
    """Discover the slides, load and check the model, then create the output folder.

    Parameters
    ----------
    inputs
        Slide files, folders, glob patterns or list files
        (:func:`~wsi_saliency.batch.discover.discover_slides`).
    out
        Output folder (never searched for slides).
    config
        Run configuration.
    demo
        See :func:`check_batch`.

    Returns
    -------
    PreparedBatch

    Raises
    ------
    WsiSaliencyError, OSError
        Bad inputs, model, configuration, missing ``distributed`` or unwritable output
        folder; nothing was created.
    """
    slides = discover_slides(inputs, exclude=[Path(os.path.abspath(out))])
    if config.inference.scheduler is not None:
        from wsi_saliency.batch.dask import require_distributed

        require_distributed()
    model = load_batch_model(config)
    check_batch(model, config, demo=demo)
    # only now, when nothing else can be wrong, is the output folder created
    out_dir = prepare_output_dir(out)
    return PreparedBatch(slides=slides, out_dir=out_dir, config=config, model=model)
