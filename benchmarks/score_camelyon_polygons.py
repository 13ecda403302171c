"""Score the demo model on slides carrying the official Camelyon16 lesion polygons.

Builds one generated slide per Camelyon16 annotation in ``$WSI_TEST_DATA/camelyon16``
(``Tumor_001``, ``_002``, ``_081``, ``_093``): the official polygons (NCRF JSON),
shrunk by ``--scale`` (default 1/2) so the slides stay small, planted at 0.243 um/px
with the project's tumour texture, plus one negative slide. The annotations are written
back in three formats (ASAP XML, GeoJSON, NCRF JSON; the negative slide has none). Then
``wsi-saliency run`` (demo configuration at overlap 0.5, demo model) and ``wsi-saliency score`` run
on them, and the figures are printed. ``--images DIR`` copies ``froc.png``, ``roc.png``
and ``topk_dice.png`` there (the README's pictures).

    python benchmarks/score_camelyon_polygons.py --work /tmp/c16 [--images docs/images]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import shapely

from wsi_saliency.roi import read_annotations
from wsi_saliency.scoring.planted import (
    planted_slide,
    write_asap_xml,
    write_geojson,
    write_ncrf_json,
)

REPO = Path(__file__).resolve().parents[1]
LESIONS = ("Tumor_001", "Tumor_002", "Tumor_081", "Tumor_093")
WRITERS = {"Tumor_001": ("xml", write_asap_xml), "Tumor_002": ("json", write_ncrf_json),
           "Tumor_081": ("geojson", write_geojson), "Tumor_093": ("xml", write_asap_xml)}


def build(data: Path, slides: Path, ann: Path, scale: float) -> None:
    """Write the planted slides into ``slides`` and their annotations into ``ann``."""
    slides.mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)
    for name in LESIONS:
        geom = read_annotations(data / "camelyon16" / "ncrf_json" / f"{name}.json").tumour_geometry()
        _, local = planted_slide(geom, slides / f"{name.lower()}.tif", scale=scale)
        ext, writer = WRITERS[name]
        writer(local, ann / f"{name.lower()}.{ext}")
    planted_slide(shapely.Polygon(), slides / "normal_001.tif", size=(2400, 2400), seed=7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="working folder")
    ap.add_argument("--scale", type=float, default=0.5, help="lesion shrink factor")
    ap.add_argument("--images", type=Path, default=None, help="copy the plots here")
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("WSI_TEST_DATA", REPO.parent / "shared" / "data")))
    args = ap.parse_args()
    slides, ann, out = args.work / "slides", args.work / "annotations", args.work / "out"
    t0 = time.perf_counter()
    if not slides.is_dir():
        build(args.data, slides, ann, args.scale)
    t1 = time.perf_counter()
    exe = [sys.executable, "-c", "from wsi_saliency.cli import main; main()"]
    subprocess.run([*exe, "run", str(slides), "--out", str(out), "-q", "--device", "cpu",
                    "--config", str(REPO / "configs" / "demo.yaml"),
                    # half-tile overlap, as configs/camelyon16.yaml: finer probability maps
                    "--overlap", "0.5"], check=True)
    t2 = time.perf_counter()
    patterns = [f"{ann}/{{stem}}.{e}" for e in ("xml", "geojson", "json")]
    cmd = [*exe, "score", str(out)]
    for p in patterns:
        cmd += ["--annotations", p]
    subprocess.run(cmd, check=True)
    t3 = time.perf_counter()
    scores = json.loads((out / "scores" / "scores.json").read_text())
    c = scores["camelyon16"]
    print(f"build {t1 - t0:.1f} s, run {t2 - t1:.1f} s, score {t3 - t2:.1f} s")
    print(f"FROC score {c['froc_score']}, slide AUC {c['slide_auc']}, "
          f"pixel AUROC {scores['pixel']['auroc']}")
    if args.images:
        for name in ("froc.png", "roc.png", "topk_dice.png"):
            shutil.copy(out / "scores" / name,
                        args.images / f"scoring-{name.replace('_', '-')}")
        localisation_figure(out, ann, ("tumor_093", "tumor_081"),
                            args.images / "scoring-localisation.png")


def localisation_figure(out: Path, ann: Path, names: tuple[str, ...], path: Path) -> None:
    """Probability and saliency heatmaps of some slides with the lesion outlines and the
    detections (crosses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from wsi_saliency.scoring.annotations import annotation_path, read_lesions
    from wsi_saliency.scoring.masks import heatmap_lesion_mask
    from wsi_saliency.scoring.run_output import read_heatmaps, read_run_slide

    det = [ln.split(",") for ln in (out / "scores" / "detections.csv").read_text().splitlines()[1:]]
    fig, axes = plt.subplots(len(names), 2, figsize=(6.4, 3.0 * len(names)), dpi=90)
    for row, name in zip(axes, names, strict=True):
        slide = read_run_slide(out / name)
        pats = [f"{ann}/{{stem}}.{e}" for e in ("xml", "geojson", "json")]
        found = annotation_path(pats, slide.slide_file, name)
        assert found is not None
        lesions = read_lesions(found, slide.dimensions)
        prob, sal = read_heatmaps(slide)
        mask = heatmap_lesion_mask(lesions.geometry, slide.shape, slide.downsample)
        vmax = float(np.nanpercentile(np.abs(sal), 99)) or 1.0
        sx, sy = slide.downsample
        for ax, img, kw, title in (
            (row[0], prob, {"cmap": "magma", "vmin": 0, "vmax": 1}, "tumour probability"),
            (row[1], sal, {"cmap": "RdBu_r", "vmin": -vmax, "vmax": vmax}, "saliency"),
        ):
            ax.imshow(img, interpolation="nearest", **kw)
            ax.contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
            pts = [(int(d[1]) / sx - 0.5, int(d[2]) / sy - 0.5, d[4]) for d in det if d[0] == name]
            for x, y, outcome in pts:
                ax.plot(x, y, "x", color="cyan" if outcome == "TP" else "yellow", ms=6, mew=1.5)
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
