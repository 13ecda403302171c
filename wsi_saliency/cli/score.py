"""``wsi-saliency score``: score a finished run against lesion annotations.

Reads each slide folder of ``RUN_OUT`` (``run.json``, ``heatmaps.ome.zarr``,
``tiles.csv``; nothing is recomputed), matches annotations per slide, and writes
``scores.json``, ``slides.csv``, ``detections.csv``, ``froc.png``, ``roc.png``,
``topk_dice.png`` and ``summary.md`` (see :mod:`wsi_saliency.scoring.report`).
Exit status: 0 done, 2 bad input (unreadable run folder, bad annotation, bad option).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from wsi_saliency.cli._logging import logging_options, progress_enabled, setup_logging
from wsi_saliency.errors import WsiSaliencyError
from wsi_saliency.scoring.detections import DEFAULT_NMS_RADIUS_UM, DEFAULT_THRESHOLD
from wsi_saliency.scoring.report import summary_table, write_report
from wsi_saliency.scoring.score import SLIDE_SCORES, ScoreParams, score_run

__all__ = ["score"]


def _read_negatives(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path}: cannot read ({exc})", param_hint="--negatives") from None
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


@click.command(name="score")
@click.argument(
    "run_out", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="RUN_OUT"
)
@click.option(
    "--annotations",
    "-a",
    "patterns",
    multiple=True,
    required=True,
    help="Annotation file per slide: ASAP/Camelyon16 XML, GeoJSON (QuPath) or NCRF JSON, "
    "level-0 px. {stem}, {name} and {folder} are replaced per slide; repeat to try several "
    "patterns in order. A slide without a file is negative.",
)
@click.option(
    "--negatives",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Text file naming the negative slides (one per line); then every other slide "
    "must have an annotation file.",
)
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder [default: RUN_OUT/scores].",
)
@click.option(
    "--slide-score",
    type=click.Choice(SLIDE_SCORES),
    default="max",
    show_default=True,
    help="Slide-level score for the ROC: highest heatmap or tile probability.",
)
@click.option(
    "--detection-threshold",
    type=click.FloatRange(0, 1),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Detections are heatmap maxima above this probability.",
)
@click.option(
    "--nms-radius-um",
    type=click.FloatRange(min=0),
    default=round(DEFAULT_NMS_RADIUS_UM, 3),
    show_default=True,
    help="Non-maximum-suppression radius of the detections (um).",
)
@click.option(
    "--level",
    type=click.IntRange(0, 12),
    default=5,
    show_default=True,
    help="Evaluation-mask level (2^level level-0 px per pixel; Camelyon16: 5).",
)
@logging_options
def score(
    run_out: Path,
    patterns: tuple[str, ...],
    negatives: Path | None,
    out: Path | None,
    slide_score: str,
    detection_threshold: float,
    nms_radius_um: float,
    level: int,
    quiet: bool,
    log_level: str | None,
    log_format: str,
) -> None:
    """Score a finished run against lesion annotations (Camelyon16 FROC, slide AUC,
    pixel and saliency localisation scores).

    RUN_OUT is the --out folder of `wsi-saliency run`.
    """
    setup_logging(log_level, log_format, quiet=quiet)
    neg = _read_negatives(negatives) if negatives is not None else None
    show = progress_enabled(quiet=quiet, log_format=log_format)
    bar: tqdm[Any] | None = None

    def progress(done: int, total: int, name: str) -> None:
        nonlocal bar
        if not show:
            return
        if bar is None:
            bar = tqdm(total=total, desc="scoring", unit="slide", dynamic_ncols=True)
        bar.set_postfix_str(name[:30])
        bar.update(done - bar.n)

    try:
        params = ScoreParams(
            level=level,
            threshold=detection_threshold,
            nms_radius_um=nms_radius_um,
            slide_score=slide_score,
        )
        scores = score_run(run_out, patterns, negatives=neg, params=params, progress=progress)
        folder = write_report(scores, out if out is not None else run_out / "scores")
    except WsiSaliencyError as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        click.get_current_context().exit(2)
        return
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        click.echo(summary_table(scores))
        click.echo(f"scores written to {folder}")
