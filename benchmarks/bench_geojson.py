"""GeoJSON size per tile and QuPath's read time for 100,000 tiles.

Writes ``tiles.geojson`` for 100,000 tiles (316 x 316 grid, 224 px tiles at 0.5 um/px on
a 0.25 um/px slide; random probabilities and saliency statistics) with the writer
directly, in the format before issue 13 (a ``name`` per tile, the model's class name,
``null`` for non-finite values; emulated here) and now (no ``name``, QuPath's ``Tumor``,
non-finite values left out; with overlap 0.5 the stride cell plus ``tile_box``), plain
and gzipped, and prints bytes per tile. Then reads each file with QuPath's own reader
(``qupath-check``, QuPath 0.5.1 and 0.4.4) and prints the read time it reports (the
``PathIO.readObjects`` call alone) and the wall time of the whole check (JVM start
included). Timings are noisy on a shared machine.

Run::

    .venv/bin/python benchmarks/bench_geojson.py [--tiles 100000] [--qupath-check PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency import tiling
from wsi_saliency.stitch import StitchedHeatmaps, TileStats
from wsi_saliency.types import Mpp, SlideInfo, TileGrid
from wsi_saliency.writers._common import class_colors, clean_float, tile_boxes
from wsi_saliency.writers.geojson import write_tiles_geojson

_NS = uuid.UUID("6b0f3c1e-5f0a-5d7c-9a52-2f1f3e9d4c11")


def grid(n_side: int, overlap: float) -> TileGrid:
    """An ``n_side x n_side`` grid of 224 px tiles at 0.5 um/px on a 0.25 um/px slide."""
    stride = round(224 * (1 - overlap)) * 2  # level-0 px
    size = stride * (n_side - 1) + 448
    info = SlideInfo(
        path="bench", backend="none", dimensions=(size, size), level_dimensions=((size, size),),
        level_downsamples=(1.0,), mpp=Mpp(0.25, 0.25, "override"),
    )
    return tiling.full_grid(info, tile_size=224, spacing=0.5, overlap=overlap)


def heatmaps(g: TileGrid) -> StitchedHeatmaps:
    """Per-tile results for every tile of ``g`` (the writers read nothing else)."""
    n = len(g)
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, n).astype(np.float32)
    stats = TileStats(
        probabilities=np.stack([1 - p, p], axis=1),
        saliency_mean=rng.normal(0, 1e-3, n).astype(np.float32),
        saliency_max=rng.uniform(0, 1e-2, n).astype(np.float32),
        saliency_positive_fraction=rng.uniform(0, 1, n).astype(np.float32),
        done=np.ones(n, dtype=bool),
    )
    g = replace(g, tissue_fraction=rng.uniform(0.25, 1, n).astype(np.float32))
    return StitchedHeatmaps(
        store=Path("."), heatmap=None, weight=None,  # type: ignore[arg-type]
        channel_names=("probability_tumor", "saliency", "probability_normal"),
        pixel_size_um=8.0, shape=(1, 1), coverage=1.0, grid=g,
        class_names=("normal", "tumor"), blend="uniform", tiles=stats, tumor_class=1,
        chunk_size=512,
    )


def write_before(path: Path, hm: StitchedHeatmaps) -> None:
    """The tiles.geojson format before issue 13 (emulated: same keys, order and rounding)."""
    names = hm.class_names
    colors = class_colors(names, hm.tumor_class)
    st = hm.tiles
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"type":"FeatureCollection","features":[')
        for k, (x0, y0, x1, y1) in enumerate(tile_boxes(hm.grid).tolist()):
            top = int(np.argmax(st.probabilities[k]))
            m: dict[str, Any] = {f"prob_{n}": clean_float(st.probabilities[k, i])
                                 for i, n in enumerate(names)}
            m["saliency_mean"] = clean_float(st.saliency_mean[k])
            m["saliency_max"] = clean_float(st.saliency_max[k])
            m["saliency_positive_fraction"] = clean_float(st.saliency_positive_fraction[k])
            m["tissue_fraction"] = clean_float(hm.grid.tissue_fraction[k])
            feat = {
                "type": "Feature",
                "id": str(uuid.uuid5(_NS, f"/tile/{k}/{x0}/{y0}")),
                "geometry": {"type": "Polygon",
                             "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
                "properties": {"objectType": "detection", "name": f"tile {k}",
                               "classification": {"name": names[top], "color": list(colors[top])},
                               "measurements": m},
            }
            fh.write(("\n" if k == 0 else ",\n") + json.dumps(feat, separators=(",", ":")))
        fh.write("\n]}\n")


def qupath_read(tool: Path | None, path: Path, version: str) -> str:
    if tool is None:
        return "qupath-check not run"
    t0 = time.perf_counter()
    p = subprocess.run([str(tool), "--qupath", version, str(path)], capture_output=True,
                       text=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode == 3:
        return "no Java 17"
    r = json.loads(p.stdout.splitlines()[0])
    if not r["ok"]:
        return f"QuPath {r['qupath']}: FAILED {r['error']}"
    return (f"QuPath {r['qupath']}: {r['objects']} objects, readObjects {r['seconds']:.2f} s "
            f"(wall {wall:.1f} s), {len(r['warnings'])} warnings")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=100_000)
    default_tool = Path(os.environ.get("QUPATH_CHECK", "../shared/tools/qupath-check/qupath-check"))
    ap.add_argument("--qupath-check", type=Path, default=default_tool)
    args = ap.parse_args()
    tool = args.qupath_check if args.qupath_check.is_file() and shutil.which("java") else None
    n_side = math.isqrt(args.tiles)
    print(f"{n_side * n_side} tiles; machine shared and loaded: timings are indicative",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for overlap in (0.0, 0.5):
            hm = heatmaps(grid(n_side, overlap))
            n = len(hm.grid)
            files = []
            if overlap == 0.0:
                write_before(d / "before.geojson", hm)
                files.append(("before", d / "before.geojson"))
            t0 = time.perf_counter()
            write_tiles_geojson(d / f"now{overlap}.geojson", hm)
            t_w = time.perf_counter() - t0
            write_tiles_geojson(d / f"now{overlap}.geojson.gz", hm, compression="gzip")
            files.append((f"now, overlap {overlap:g}", d / f"now{overlap}.geojson"))
            files.append((f"now, overlap {overlap:g}, gzip", d / f"now{overlap}.geojson.gz"))
            print(f"overlap {overlap:g}: writer {t_w:.1f} s for {n} tiles", flush=True)
            for label, path in files:
                size = path.stat().st_size
                gz = (len(gzip.compress(path.read_bytes(), 6)) if path.suffix != ".gz" else size)
                print(f"  {label:24s} {size / n:6.1f} B/tile ({size / 1e6:5.1f} MB), "
                      f"gzipped {gz / n:5.1f} B/tile ({gz / 1e6:4.1f} MB)", flush=True)
                for version in ("0.5", "0.4"):
                    print(f"    {qupath_read(tool, path, version)}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
