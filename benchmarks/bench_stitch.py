"""Memory benchmark of the streaming stitcher on a whole 100,000 x 100,000 px slide.

Stitches synthetic tile results for every tile of a 100k x 100k px slide at 0.5 um/px
(224 px tiles at 0.5 um/px, 14 x 14 saliency maps, no tissue filtering: ~200k tiles) and
prints the wall time and the peak resident memory of the process (``getrusage``). The
goal is peak RSS < 1.5 GB. ``--writers`` also writes the OME-Zarr, the two OME-TIFFs,
both GeoJSONs and the CSV from the stitched result (the peak then covers those too).

Run::

    .venv/bin/python benchmarks/bench_stitch.py [--size 100000] [--overlap 0] [--writers]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wsi_saliency import tiling
from wsi_saliency.stitch import Stitcher
from wsi_saliency.types import BatchResult, Mpp, SlideInfo, TileGrid


def full_grid(size: int, mpp: float, tile: int, spacing: float, overlap: float) -> TileGrid:
    """Every tile of a square ``size`` px slide (no tissue filtering)."""
    info = SlideInfo(
        path="bench", backend="none", dimensions=(size, size), level_dimensions=((size, size),),
        level_downsamples=(1.0,), mpp=Mpp(mpp, mpp, "override"),
    )
    return tiling.full_grid(info, tile_size=tile, spacing=spacing, overlap=overlap)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000, help="slide side in level-0 px")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--tile", type=int, default=224)
    ap.add_argument("--spacing", type=float, default=0.5)
    ap.add_argument("--map", type=int, default=14)
    ap.add_argument("--overlap", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--blend", default="uniform")
    ap.add_argument("--writers", action="store_true", help="also write the outputs")
    args = ap.parse_args()

    rss0 = peak_rss_mb()
    grid = full_grid(args.size, args.mpp, args.tile, args.spacing, args.overlap)
    m = args.map
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_stitch_") as tmp:
        st = Stitcher(Path(tmp) / "scratch", grid, (m, m), ["normal", "tumor"], blend=args.blend)
        print(
            f"slide {args.size}x{args.size} px @ {args.mpp} um/px, {len(grid)} tiles "
            f"({grid.grid_shape[0]}x{grid.grid_shape[1]}), maps {m}x{m}, overlap {args.overlap}, "
            f"heatmap {st.shape[1]}x{st.shape[0]} px @ {st.pixel_size_um:g} um/px, "
            f"{len(st.channel_names)} channels"
        )
        n = len(grid)
        # a smooth "tumour" blob so the probability channel has structure
        cy = cx = grid.grid_shape[0] / 2.0
        t0 = time.perf_counter()
        gen = 0.0
        for start in range(0, n, args.batch):
            g0 = time.perf_counter()
            idx = np.arange(start, min(start + args.batch, n), dtype=np.int64)
            r2 = ((grid.rows[idx] - cy) ** 2 + (grid.cols[idx] - cx) ** 2) / (0.3 * cy) ** 2
            p = np.exp(-r2).astype(np.float32)
            probs = np.stack([1.0 - p, p], axis=1)
            maps = rng.standard_normal((idx.size, m, m), dtype=np.float32)
            gen += time.perf_counter() - g0
            st.add(BatchResult(indices=idx, probabilities=probs, maps=maps))
        t_add = time.perf_counter() - t0
        t1 = time.perf_counter()
        hm = st.finalize()
        t_fin = time.perf_counter() - t1
        stitch_peak = peak_rss_mb()
        print(
            f"add: {t_add:.1f} s ({n / max(t_add - gen, 1e-9):,.0f} tiles/s excluding "
            f"{gen:.1f} s of data generation); finalize: {t_fin:.1f} s; "
            f"coverage {hm.coverage:.3f}"
        )
        print(
            f"peak RSS after stitching: {stitch_peak:.0f} MB "
            f"(before building the grid: {rss0:.0f} MB; goal < 1536 MB)"
        )
        if args.writers:
            from wsi_saliency.writers import (
                write_heatmap_tiffs,
                write_ome_zarr,
                write_regions_geojson,
                write_tiles_csv,
                write_tiles_geojson,
            )

            out = Path(tmp) / "out"
            out.mkdir()
            for label, fn in (
                ("ome-zarr + ome-tiff", None),
                ("tiles.geojson", lambda: write_tiles_geojson(out / "tiles.geojson", hm)),
                ("regions.geojson", lambda: write_regions_geojson(out / "regions.geojson", hm)),
                ("tiles.csv", lambda: write_tiles_csv(out / "tiles.csv", hm)),
            ):
                t = time.perf_counter()
                if fn is None:
                    levels = write_ome_zarr(out / "heatmaps.ome.zarr", hm)
                    write_heatmap_tiffs(out, hm, levels=levels)
                else:
                    fn()
                print(f"{label}: {time.perf_counter() - t:.1f} s, peak RSS {peak_rss_mb():.0f} MB")
        print(f"peak RSS overall: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
