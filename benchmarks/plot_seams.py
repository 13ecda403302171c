"""Picture of the stitched saliency on the demo slide: before, the previous default, now.

Runs the demo model on the generated demo slide in three settings (the ``before`` of
``bench_seams.py``: overlap 0, uniform blend, the paper's zero-padded box; the previous
default: overlap 1/7 with the ``hann`` blend; the current defaults: overlap 1/7 with the
``reliability`` blend) and draws the stitched saliency channel of ``heatmaps.ome.zarr`` at
full heatmap resolution (one heatmap pixel = 16 x 16 slide pixels at 0.5 um/px), each
panel with its own symmetric range (99th percentile of ``|map|``), nearest-neighbour
upscaling so that every heatmap pixel stays visible.

Usage (from the ``benchmarks`` folder, which it imports ``bench_seams`` from)::

    cd benchmarks && ../.venv/bin/python plot_seams.py --out ../docs/images/seams-demo.png
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import zarr
from bench_seams import paper_box

from wsi_saliency import synthetic
from wsi_saliency.config import build_config
from wsi_saliency.models import load_model
from wsi_saliency.saliency.seams import seam_ratio
from wsi_saliency.worker import run_slide

PANELS: list[tuple[str, dict[str, Any], bool]] = [
    ("before: overlap 0, paper box", {"tiling": {"overlap": 0.0},
                                      "output": {"blend": "uniform"}}, False),
    ("previous default: overlap 1/7, hann", {"output": {"blend": "hann"}}, True),
    ("default: overlap 1/7, reliability", {}, True),
]


def stitched(slide: Path, overrides: dict[str, Any], aware: bool, root: Path
             ) -> tuple[np.ndarray, int]:
    """Stitched saliency channel and the stride cell in heatmap pixels."""
    out = Path(tempfile.mkdtemp(dir=root))
    cfg = build_config({**overrides, "inference": {"device": "cpu", "workers": 0}})
    with contextlib.nullcontext() if aware else paper_box():
        run_slide(slide, load_model(None), cfg, out)
    group = zarr.open_group(str(out / "heatmaps.ome.zarr"), mode="r")
    attrs: Any = dict(group.attrs)
    sal = np.asarray(group[attrs["multiscales"][0]["datasets"][0]["path"]])[1]
    run = json.loads((out / "run.json").read_text())
    return sal, run["tiling"]["stride"] * 14 // run["tiling"]["tile_size"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("seams-demo.png"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        slide = synthetic.write_demo_slide(root / "demo.svs")
        maps = [(label, *stitched(slide, o, a, root)) for label, o, a in PANELS]
    finite = np.isfinite(maps[-1][1])
    rows, cols = np.nonzero(finite)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps), 5.2 * (y1 - y0) / (x1 - x0)
                                                     + 0.8))
    for ax, (label, sal, period) in zip(axes, maps, strict=True):
        crop = sal[y0:y1, x0:x1]
        lim = float(np.nanpercentile(np.abs(crop), 99))
        r = seam_ratio(sal, period)
        ax.imshow(crop, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"{label}\nseam ratio |map| {r.magnitude:.2f}, TV {r.tv:.2f}", fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
