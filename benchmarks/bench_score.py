"""Time and memory of scoring one Camelyon16-sized slide.

Writes a run folder for a 100,000 x 220,000 px slide at 0.243 um/px (8 um heatmap
pixels: 3,038 x 6,683) whose tissue covers about a third of the slide, with 30 lesions
(discs of 30-1,500 um) whose probability is high, plus noise; then scores it with
``score_run`` and prints the time per stage and the peak RSS.

    python benchmarks/bench_score.py [--work /tmp/bench-score]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import shapely
import zarr

from wsi_saliency.scoring import score_run
from wsi_saliency.scoring.masks import heatmap_lesion_mask
from wsi_saliency.scoring.planted import write_geojson

MPP = 0.243
PIXEL_UM = 8.0
DIMS = (100_000, 220_000)


def build(work: Path) -> None:
    """Write the run folder ``work/run/big`` and ``work/big.geojson``."""
    rng = np.random.default_rng(0)
    ds = PIXEL_UM / MPP
    h, w = int(np.ceil(DIMS[1] * MPP / PIXEL_UM)), int(np.ceil(DIMS[0] * MPP / PIXEL_UM))
    lesions = shapely.union_all([
        shapely.Point(rng.uniform(20_000, 80_000), rng.uniform(20_000, 200_000)).buffer(
            rng.uniform(15, 750) / MPP)
        for _ in range(30)
    ])
    write_geojson(lesions, work / "big.geojson")
    mask = heatmap_lesion_mask(lesions, (h, w), (ds, ds))
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = (np.abs(xx - w / 2) < w * 0.3) & (np.abs(yy - h / 2) < h * 0.45)
    prob = np.clip(rng.normal(0.1, 0.1, (h, w)) + 0.8 * mask, 0, 1).astype(np.float32)
    prob[~(tissue | mask)] = np.nan
    sal = np.where(np.isfinite(prob), prob - 0.5 + rng.normal(0, 0.2, (h, w)), np.nan)
    folder = work / "run" / "big"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "slide": {"file": "big.tif", "dimensions": list(DIMS), "mpp": {"x": MPP, "y": MPP}},
        "model": {"class_names": ["normal", "tumor"], "tumor_class": 1},
        "heatmap": {"pixel_size_um": PIXEL_UM, "shape": [h, w]},
        "tiling": {"tile_size": 224, "stride": 224},
        "saliency": {"map_shape": [14, 14]},
    }))
    root = zarr.open_group(str(folder / "heatmaps.ome.zarr"), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(2, h, w), chunks=(1, 512, 512), dtype="float32",
                            fill_value=float("nan"))
    arr[0] = prob
    arr[1] = sal.astype(np.float32)
    root.attrs["multiscales"] = [{"datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, PIXEL_UM, PIXEL_UM]}]}]}]
    root.attrs["omero"] = {"channels": [{"label": "probability_tumor"}, {"label": "saliency"}]}
    rows = ["tile,x,y,width,height,grid_row,grid_col,tissue_fraction,prob_normal,prob_tumor,"
            "predicted_class,saliency_mean,saliency_max,saliency_positive_fraction"]
    k = 0
    for r in range(h // 14):
        for c in range(w // 14):
            block = prob[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14]
            if np.isfinite(block).any():
                p = float(np.nanmean(block))
                rows.append(f"{k},0,0,224,224,{r},{c},1,{1 - p:.4g},{p:.4g},"
                            f"{'tumor' if p >= 0.5 else 'normal'},0,0,0")
                k += 1
    (folder / "tiles.csv").write_text("\n".join(rows) + "\n")
    print(f"heatmap {h} x {w} px, {int(np.isfinite(prob).sum()):,} covered, {k:,} tiles")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-score"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    proc = multiprocessing.get_context("fork").Process(target=build, args=(args.work,))
    proc.start()  # built in a child, so this process's peak RSS is the scoring's own
    proc.join()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    scores = score_run(args.work / "run", [str(args.work / "{stem}.geojson")])
    t1, c1 = time.perf_counter(), time.process_time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = scores.slides[0]
    print(f"score_run: {t1 - t0:.1f} s wall, {c1 - c0:.1f} s CPU; peak RSS {peak:.0f} MiB (before scoring: {base:.0f} MiB)")
    print(f"lesions {s.hits.n_lesions} (+{s.hits.n_itc} ITC), found {s.hits.n_detected}, "
          f"FP {len(s.hits.fp_probs)}, FROC {scores.froc_score:.3f}, "
          f"pixel AUROC {s.pixel.auroc:.3f}")


if __name__ == "__main__":
    main()
