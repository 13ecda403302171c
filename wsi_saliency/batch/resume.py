"""Resume: is a slide's output folder complete for this configuration, model and inputs?

It reads the slide's typed run record (:mod:`wsi_saliency.run_record`).
"""

from __future__ import annotations

from pathlib import Path

from wsi_saliency.config import RunConfig, config_from_dict, config_hash
from wsi_saliency.inputs import same_inputs, slide_fingerprint
from wsi_saliency.run_record import RunRecord, read_run_record

__all__ = ["completed_run", "run_matches", "up_to_date"]


#: The run record of a finished slide folder, or None (an alias of
#: :func:`wsi_saliency.run_record.read_run_record`).
completed_run = read_run_record


def run_matches(
    run: RunRecord, expected_hash: str, weights_sha256: str, fingerprint: str | None = None
) -> bool:
    """Whether a run record was made with this configuration and model weights.

    True when its model weights hash equals ``weights_sha256`` and either its
    ``config_hash`` equals ``expected_hash`` or the effective configuration it records
    under ``config`` hashes (:func:`~wsi_saliency.config.config_hash`) to it.

    Parameters
    ----------
    run
        The slide's run record.
    expected_hash
        :func:`~wsi_saliency.config.config_hash` of the batch's effective configuration.
    weights_sha256
        The batch model's weights hash.
    fingerprint
        The batch model's :func:`~wsi_saliency.inputs.model_fingerprint` (what
        ``expected_hash`` was computed with); defaults to ``weights_sha256``.

    Returns
    -------
    bool
    """
    if run.model.weights_sha256 != weights_sha256:
        return False
    if run.config_hash == expected_hash:
        return True
    # a differently computed hash: recompute it from the recorded configuration, but only
    # when the recorded model is this model (its fingerprint is part of the hash)
    if (fingerprint or weights_sha256) != (run.model.fingerprint or run.model.weights_sha256):
        return False
    try:
        cfg = config_from_dict(run.config)
    except (ValueError, TypeError):
        return False
    return config_hash(cfg, fingerprint or weights_sha256) == expected_hash


def up_to_date(
    final: Path,
    slide: Path,
    config: RunConfig,
    expected_hash: str,
    weights_sha256: str,
    fingerprint: str | None = None,
) -> tuple[bool, RunRecord | None]:
    """Whether ``final`` holds a finished run of this configuration, model and slide inputs.

    Parameters
    ----------
    final
        The slide's output folder.
    slide
        The slide file (its size, MPP sidecar and ROI contents are compared).
    config
        Effective configuration (its sidecar pattern and ROI locate the inputs).
    expected_hash, weights_sha256, fingerprint
        As for :func:`run_matches`.

    Returns
    -------
    (bool, RunRecord or None)
        Whether to skip the slide, and its run record when there is one.
    """
    run = completed_run(final)
    if run is None:
        return False, None
    if not run_matches(run, expected_hash, weights_sha256, fingerprint):
        return False, run
    current = slide_fingerprint(slide, mpp_sidecar=config.slide.mpp_sidecar, roi=config.tissue.roi)
    return same_inputs(dict(run.inputs), current), run
