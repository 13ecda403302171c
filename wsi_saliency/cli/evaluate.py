"""``wsi-saliency evaluate INPUT... --out DIR``: is a saliency map faithful, sane and smooth?"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from wsi_saliency.batch import EXIT_INTERRUPTED, SUMMARY_NAME, discover_slides
from wsi_saliency.batch.outdir import staged_folder
from wsi_saliency.cli._logging import logging_options, progress_enabled, setup_logging
from wsi_saliency.cli.run import UsageFailure
from wsi_saliency.config import BACKENDS, RunConfig, build_config, config_from_dict
from wsi_saliency.errors import WsiSaliencyError
from wsi_saliency.run_record import RUN_JSON as RUN_JSON_FILENAME

__all__ = ["RunInputs", "evaluate", "resolve_inputs"]

log = logging.getLogger("wsi_saliency.evaluate")

ALL_SMOOTHINGS = "none,backward-hook,forward-hook"


class RunInputs:
    """Slides to evaluate and, when they came from finished runs, the runs' configuration."""

    def __init__(self, slides: list[Path], run_config: dict[str, Any] | None,
                 run_weights: str | None) -> None:
        self.slides = slides
        self.run_config = run_config
        self.run_weights = run_weights


def _read_run(folder: Path) -> dict[str, Any]:
    path = folder / RUN_JSON_FILENAME
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageFailure(f"{path}: not a readable run.json ({exc}); pass a folder written "
                           "by 'wsi-saliency run' or the slides themselves") from exc
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict) \
            or run.get("status") != "done":
        raise UsageFailure(f"{path}: not the run.json of a finished run (no 'config' or status "
                           "not 'done'); rerun 'wsi-saliency run' or pass the slides")
    return run


def _summary_records(batch_dir: Path) -> list[dict[str, Any]]:
    path = batch_dir / SUMMARY_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        records = data["slides"]
        assert isinstance(records, list)
        return [r for r in records if isinstance(r, dict)]
    except (OSError, ValueError, KeyError, AssertionError, TypeError):
        return []


def _slide_of_run(folder: Path) -> Path:
    """The slide a run folder was made from, from the batch summary beside it."""
    for rec in _summary_records(folder.parent):
        out = rec.get("output")
        if out and Path(out).name == folder.name and rec.get("input"):
            slide = Path(str(rec["input"]))
            if not slide.exists():
                raise UsageFailure(f"{folder}: its slide {slide} (from {SUMMARY_NAME}) no "
                                   "longer exists; pass the slide itself")
            return slide
    raise UsageFailure(f"{folder}: cannot find the slide of this run ({SUMMARY_NAME} beside "
                       "it does not name it); pass the slide itself with --model")


def resolve_inputs(inputs: Sequence[str], out: Path) -> RunInputs:
    """Turn INPUTs (slides, folders, globs, lists, run folders, batch folders) into slides.

    A run folder (``OUT/<stem>/`` with ``run.json``) stands for its slide and settings;
    a batch folder (with ``batch-summary.json``) for every finished run in it. Runs must
    share one model.

    Raises
    ------
    UsageFailure
        A bad run folder, runs of different models, or slide inputs that name nothing.
    """
    slides: list[Path] = []
    plain: list[str] = []
    runs: list[tuple[Path, dict[str, Any]]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and (p / RUN_JSON_FILENAME).exists():
            runs.append((p, _read_run(p)))
        elif p.is_dir() and (p / SUMMARY_NAME).exists():
            recs = [r for r in _summary_records(p)
                    if r.get("status") in ("done", "skipped") and r.get("output")]
            if not recs:
                raise UsageFailure(f"{p / SUMMARY_NAME}: no finished slide in this batch "
                                   "folder; pass the slides or a run folder")
            for r in recs:
                folder = p / Path(str(r["output"])).name
                runs.append((folder, _read_run(folder)))
        else:
            plain.append(item)
    run_config: dict[str, Any] | None = None
    weights: str | None = None
    for folder, run in runs:
        slides.append(_slide_of_run(folder))
        model = run.get("model", {})
        sha = model.get("weights_sha256") if isinstance(model, dict) else None
        if run_config is None:
            run_config, weights = run["config"], sha
        elif sha != weights or run["config"].get("model", {}).get("path") != \
                run_config.get("model", {}).get("path"):
            raise UsageFailure(f"{folder}: made with another model than {runs[0][0]}; "
                               "evaluate runs of one model at a time")
    if plain:
        try:
            slides.extend(discover_slides(plain, exclude=[Path(os.path.abspath(out))]))
        except WsiSaliencyError as exc:
            raise UsageFailure(str(exc)) from exc
    return RunInputs(list(dict.fromkeys(slides)), run_config, weights)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageFailure(f"--out {out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageFailure(f"--out {out}: folder exists and is not empty; choose another "
                           "--out or pass --overwrite")
    parent = out.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageFailure(f"--out {out}: cannot create it in {parent}; choose a writable "
                           "place")


@click.command(name="evaluate")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for evaluation.json, evaluation.md and the plots.")
@click.option("--model", "-m", default=None,
              help="Model directory [default: the run's model, else the bundled demo model].")
@click.option("--trust-model-code", is_flag=True, default=None,
              help="Let the model folder run its own Python code (only folders you trust).")
@click.option("--layer", default=None,
              help="Layers, comma-separated, e.g. layer2,layer3 [default: the run's / model's].")
@click.option("--method", default=None,
              help="Methods, comma-separated [default: the run's, else gradient-x-activation].")
@click.option("--smoothing", default=None,
              help=f"Smoothings, comma-separated [default: {ALL_SMOOTHINGS}, and bilinear "
              "for a surrogate folder].")
@click.option("--target", default=None,
              help="Class explained and scored, name or index, or 'predicted' (each tile's "
              "top class) [default: the run's / the model's tumour class].")
@click.option("--tiles", "n_tiles", type=int, default=64, show_default=True,
              help="Tissue tiles drawn per slide.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every draw.")
@click.option("--steps", type=int, default=28, show_default=True,
              help="Deletion/insertion steps.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Add Grad-CAM at the last block and a random map.")
@click.option("--sanity/--no-sanity", default=True, show_default=True,
              help="Run the cascading randomisation test.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps [default: auto].")
@click.option("--batch-size", type=int, default=None, help="Tiles per model batch [default: 32].")
@click.option("--mpp", type=float, default=None, help="Level-0 um/px for every slide (override).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Slide reader.")
@click.option("--min-tissue", type=float, default=None,
              help="Min tissue fraction of a tile [default: 0.25].")
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty --out folder.")
@logging_options
def evaluate(  # noqa: C901 - one flat list of options
    inputs: tuple[str, ...],
    out: Path,
    model: str | None,
    trust_model_code: bool | None,
    layer: str | None,
    method: str | None,
    smoothing: str | None,
    target: str | None,
    n_tiles: int,
    seed: int,
    steps: int,
    baselines: bool,
    sanity: bool,
    device: str | None,
    batch_size: int | None,
    mpp: float | None,
    backend: str | None,
    min_tissue: float | None,
    overwrite: bool,
    quiet: bool,
    log_level: str | None,
    log_format: str,
) -> None:
    """Measure whether saliency maps are faithful, sane and smooth.

    INPUT is a slide, folder, glob or list file (as for run), a finished run's output
    folder (OUT/<stem>/, its slide and settings are taken from run.json and
    batch-summary.json) or a batch output folder. Each combination of --layer, --method
    and --smoothing is evaluated on --tiles tissue tiles per slide: deletion/insertion
    AUC and fidelity, cascading randomisation, total variation and seam ratio, and the
    agreement between settings. Writes evaluation.json, evaluation.md and PNG plots.

    Exit status: 0 done, 2 usage error (nothing written), 130 interrupted.
    """
    from wsi_saliency.evaluation.evaluate import evaluate as run_evaluation
    from wsi_saliency.evaluation.report import write_report
    from wsi_saliency.evaluation.settings import settings_product, split_list
    from wsi_saliency.models import load_model

    setup_logging(log_level, log_format, quiet=quiet)
    try:
        _check_out(out, overwrite)
        found = resolve_inputs(inputs, out)
        base: dict[str, Any] = found.run_config or {}
        overrides = {k: v for k, v in {
            "model.path": model, "model.trust_code": trust_model_code,
            "inference.device": device, "inference.batch_size": batch_size,
            "slide.mpp": mpp, "slide.backend": backend, "tiling.min_tissue": min_tissue,
        }.items() if v is not None}
        config: RunConfig = (config_from_dict(base, source="run.json") if base
                             else build_config({}, None))
        config = build_config(_as_dict(config), overrides)
        loaded = load_model(config.model.path, trust_code=config.model.trust_code)
        if found.run_weights and model is None and found.run_weights != \
                loaded.spec.weights_sha256:
            log.warning("the model's weights changed since the run (SHA-256 differs); "
                        "evaluating the current weights")
        layers = split_list(layer) or [config.model.layer or loaded.spec.saliency_layer
                                       or ""]
        layers = [x for x in layers if x] or [""]
        methods = split_list(method) or [config.model.method if base
                                         else "gradient-x-activation"]
        smoothings = split_list(smoothing) or (  # a surrogate folder adds its own setting
            split_list(ALL_SMOOTHINGS) + (["bilinear"] if loaded.surrogate is not None else []))
        if layers == [""]:
            from wsi_saliency.saliency.layers import default_layer, trace_layers

            layers = [default_layer(trace_layers(loaded.module, loaded.spec.input_size))]
        settings = settings_product(layers, methods, smoothings)
        tgt: int | str | None = (int(target) if target is not None
                                 and target.lstrip("-").isdigit() else target)
        show = progress_enabled(quiet=quiet, log_format=log_format)
        from tqdm import tqdm

        bar = tqdm(total=None, desc="evaluate", unit="tile", disable=not show,
                   dynamic_ncols=True)

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        try:
            result = run_evaluation(loaded, found.slides, config, settings, n_tiles=n_tiles,
                                    seed=seed, steps=steps, target=tgt, baselines=baselines,
                                    sanity=sanity, progress=progress)
        finally:
            bar.close()
    except KeyboardInterrupt:
        click.echo("interrupted; nothing written", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except (WsiSaliencyError, OSError) as exc:
        raise UsageFailure(str(exc)) from exc
    final = out.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(final.parent, final.name) as tmp:  # the project's one atomic commit
        write_report(result, tmp)
    if not quiet:
        click.echo((out / "evaluation.md").read_text(encoding="utf-8").split("\n\nInsertion")[0])
        click.echo(f"\noutputs: {out}/evaluation.json, evaluation.md, curves.png, sanity.png, "
                   "gallery.png")


def _as_dict(config: RunConfig) -> dict[str, Any]:
    from wsi_saliency.config import config_to_dict

    return config_to_dict(config)
