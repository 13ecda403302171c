"""Resume: is a slide's output folder complete for this configuration, model and inputs?"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wsi_saliency.config import RunConfig, config_from_dict, config_hash
from wsi_saliency.inputs import same_inputs, slide_fingerprint

__all__ = ["completed_run", "recorded_n_tiles", "run_matches", "up_to_date"]


def completed_run(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``run.json`` of a finished slide folder, or None.

    Parameters
    ----------
    folder
        A slide's output folder.

    Returns
    -------
    dict or None
        None when the folder or its ``run.json`` is missing or unreadable, or when a
        file that ``run.json`` lists under ``outputs`` (a list of names or a mapping
        to paths) is missing.
    """
    run_json = Path(folder) / "run.json"
    try:
        data = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    outputs = data.get("outputs")
    if isinstance(outputs, dict):
        listed = list(outputs.values())
    elif isinstance(outputs, list):
        listed = outputs
    else:
        listed = []
    for rel in listed:
        if isinstance(rel, str) and not (Path(folder) / Path(rel).name).exists():
            return None
    return data


def recorded_n_tiles(run: dict[str, Any]) -> int | None:
    """The tile count a parsed ``run.json`` records, if any."""
    for holder in (run, run.get("tiling")):
        if isinstance(holder, dict) and isinstance(holder.get("n_tiles"), int):
            return int(holder["n_tiles"])
    return None


def _recorded_hashes(run: dict[str, Any]) -> tuple[Any, Any]:
    model = run.get("model")
    weights = model.get("weights_sha256") if isinstance(model, dict) else None
    return run.get("config_hash"), weights or run.get("weights_sha256")



def run_matches(
    run: dict[str, Any], expected_hash: str, weights_sha256: str, fingerprint: str | None = None
) -> bool:
    """Whether a parsed ``run.json`` was made with this configuration and model weights.

    True when its model weights hash equals ``weights_sha256`` and either its
    ``config_hash`` equals ``expected_hash`` or the effective configuration it records
    under ``config`` hashes (:func:`~wsi_saliency.config.config_hash`) to it.

    Parameters
    ----------
    run
        Parsed ``run.json``.
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
    recorded_hash, recorded_weights = _recorded_hashes(run)
    if recorded_weights != weights_sha256:
        return False
    if recorded_hash == expected_hash:
        return True
    # a differently computed hash: recompute it from the recorded configuration, but only
    # when the recorded model is this model (its fingerprint is part of the hash)
    model = run.get("model")
    recorded_fp = model.get("fingerprint") if isinstance(model, dict) else None
    if (fingerprint or weights_sha256) != (recorded_fp or recorded_weights):
        return False
    recorded_config = run.get("config")
    if not isinstance(recorded_config, dict):
        return False
    try:
        cfg = config_from_dict(recorded_config)
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
) -> tuple[bool, dict[str, Any] | None]:
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
    (bool, dict or None)
        Whether to skip the slide, and the parsed ``run.json`` when there is one.
    """
    run = completed_run(final)
    if run is None:
        return False, None
    if not run_matches(run, expected_hash, weights_sha256, fingerprint):
        return False, run
    current = slide_fingerprint(slide, mpp_sidecar=config.slide.mpp_sidecar, roi=config.tissue.roi)
    return same_inputs(run.get("inputs"), current), run
