"""Tile reading per backend: direct reads vs the shared block cache, against raw decoding.

For each slide, each backend that opens it and overlap 0 and 0.5, on the first
``--max-tiles`` tissue tiles of the pipeline's grid (224 px at ``--spacing``), in grid
order, all in this one thread (so rates are per core), prints tiles/s of

* ``direct``: :func:`wsi_saliency.tiling.read_tile` tile by tile (before the cache:
  every tile decodes every compressed slide tile under it);
* ``cached``: :func:`wsi_saliency.tiling.read_tiles` in batches of 32 through one
  :func:`~wsi_saliency.tiling.tile_cache` (what the slide job does);
* ``raw``: the same tiles' compressed slide tiles, each decoded once by
  ``imagecodecs.jpeg8_decode`` (``jpeg2k_decode`` for JPEG 2000) from bytes already in
  memory, expressed as grid tiles per second: the rate reading would have if decoding
  were all it cost;

and ``cached / raw`` (goal >= 0.5). Rates are tiles per CPU second of this process
(best of ``--repeats``; the phases are interleaved so that load on a shared machine
hits them alike); wall-clock rates are printed too.

Usage::

    .venv/bin/python benchmarks/bench_read.py [SLIDE[:MPP] ...] [--spacing 0.5]
        [--max-tiles 800] [--repeats 3] [--no-generated] [--size 8192]

Without slides it generates a JPEG SVS at 0.5 um/px (level 0 read as it is) and a
JPEG generic TIFF at 0.243 um/px (Camelyon16's spacing; level 1 resampled by 1.029),
and adds the slides of ``$WSI_TEST_DATA/slides`` when that folder exists.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from wsi_saliency import synthetic
from wsi_saliency.errors import WsiSaliencyError
from wsi_saliency.readers import open_slide
from wsi_saliency.readers.base import BaseSlideReader
from wsi_saliency.readers.blockcache import BlockCache
from wsi_saliency.tiling import make_grid, read_tile, read_tiles, tile_cache, tile_window
from wsi_saliency.tissue import detect_tissue
from wsi_saliency.types import TileGrid

BACKENDS = ("pyvips", "openslide", "tiffslide")


def generated_slides(root: Path, size: int) -> list[tuple[Path, float | None]]:
    """A JPEG SVS at 0.5 um/px and a JPEG generic TIFF at 0.243 um/px, tissue almost everywhere."""
    out = []
    for kind, mpp in (("svs", 0.5), ("tiff", 0.243)):
        w, h = size, size * 3 // 4
        m = 0.04
        tissue = (
            (w * m, h * m),
            (w * (1 - m), h * m),
            (w * (1 - m), h * (1 - m)),
            (w * m, h * (1 - m)),
        )
        tumour = ((w * 0.3, h * 0.3), (w * 0.5, h * 0.3), (w * 0.5, h * 0.6), (w * 0.3, h * 0.6))
        spec = synthetic.SyntheticSlide(
            width=w, height=h, mpp=mpp, tissue=(tissue,), tumour=(tumour,), seed=11
        )
        path = root / f"generated-{size}.{kind}"
        t = time.perf_counter()
        synthetic.write_slide(spec, path, kind=kind, compression="jpeg")
        print(f"# wrote {path.name} ({w}x{h} px at {mpp} um/px) in {time.perf_counter() - t:.1f} s")
        out.append((path, None))
    return out


def native_tiles(reader: BaseSlideReader, grid: TileGrid, n: int) -> list[tuple[int, int]]:
    """Distinct compressed tiles ``(tx, ty)`` of ``grid.level`` under the first ``n`` tiles."""
    shape = reader.native_tile_shape(grid.level)
    assert shape is not None
    tw, th = shape
    lw, lh = reader.info.level_dimensions[grid.level]
    seen: dict[tuple[int, int], None] = {}
    for k in range(n):
        sx, sy, w, h, *_ = tile_window(grid, k)
        x0, y0 = max(sx, 0), max(sy, 0)
        x1, y1 = min(sx + w, lw), min(sy + h, lh)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                seen[(tx, ty)] = None
    return list(seen)


def raw_decoder(
    path: Path, level: int, tiles: list[tuple[int, int]]
) -> tuple[str, Callable[[], None]] | None:
    """A function decoding ``tiles`` of ``level`` once each from bytes in memory."""
    import imagecodecs
    import tifffile
    from tifffile.tifffile import jpeg_decode_colorspace

    try:
        tf = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - not a TIFF: no raw baseline
        return None
    with tf:
        import tiffslide

        with tiffslide.TiffSlide(path) as ts:
            idx = int(ts.properties.get("tiffslide.series-index") or 0)
        page = tf.series[idx].levels[level].keyframe
        if not page.is_tiled:
            return None
        across = math.ceil(page.imagewidth / page.tilewidth)
        blobs = []
        for tx, ty in tiles:
            i = ty * across + tx
            tf.filehandle.seek(page.dataoffsets[i])
            blobs.append(tf.filehandle.read(page.databytecounts[i]))
        comp = int(page.compression)
        if comp == 7:
            cs, ocs = jpeg_decode_colorspace(
                page.photometric, page.planarconfig, page.extrasamples, page.is_jfif
            )
            tables = page.jpegtables

            def run() -> None:
                for b in blobs:
                    imagecodecs.jpeg8_decode(b, tables=tables, colorspace=cs, outcolorspace=ocs)

            return "jpeg8_decode", run
        if comp in (33003, 33005, 34712):

            def run2() -> None:
                for b in blobs:
                    imagecodecs.jpeg2k_decode(b)

            return "jpeg2k_decode", run2
    return None


def direct_pass(reader: BaseSlideReader, grid: TileGrid, idx: np.ndarray) -> None:
    """Before: every tile read on its own."""
    for k in idx:
        read_tile(reader, grid, int(k))


def cached_pass(
    reader: BaseSlideReader, grid: TileGrid, idx: np.ndarray, cache: BlockCache
) -> None:
    """After: batches of 32 through one shared block cache (as the slide job reads)."""
    for s in range(0, len(idx), 32):
        read_tiles(reader, grid, idx[s : s + 32], cache=cache)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call."""
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def bench_slide(path: Path, mpp: float | None, args: argparse.Namespace) -> None:
    opened = []
    for backend in BACKENDS:
        try:
            opened.append(open_slide(path, backend=backend, mpp=mpp))
        except WsiSaliencyError as exc:
            print(f"# {path.name}: {backend}: {str(exc)[:110]}...")
    if not opened:
        return
    with open_slide(path, mpp=mpp) as r:
        auto = r.info.backend
        mask = detect_tissue(r)
    first = opened[0]
    print(
        f"\n## {path.name}: {first.info.dimensions[0]}x{first.info.dimensions[1]} px, "
        f"mpp {first.info.mpp.x if first.info.mpp else '?'}; auto -> {auto}"
    )
    print(
        f"{'backend':9} {'ovl':>4} {'tiles':>5} {'lvl':>3} {'f':>6} | {'direct':>7} {'cached':>7} "
        f"{'x':>5} | {'raw':>7} {'cached/raw':>10} | wall: {'direct':>6} {'cached':>6} | "
        f"decoded direct/cached"
    )
    for overlap in (0.0, 0.5):
        grid = make_grid(first.info, mask, tile_size=224, spacing=args.spacing, overlap=overlap)
        n = min(len(grid), args.max_tiles)
        idx = np.arange(n)
        tiles = native_tiles(first, grid, n)
        raw = raw_decoder(path, grid.level, tiles)
        for reader in opened:
            best = {"direct": (1e9, 1e9), "cached": (1e9, 1e9), "raw": (1e9, 1e9)}
            stats = None
            for _ in range(args.repeats):
                d = timed(partial(direct_pass, reader, grid, idx))
                cache = tile_cache(grid)
                c = timed(partial(cached_pass, reader, grid, idx, cache))
                stats = cache.stats
                best["direct"] = min(best["direct"], d)
                best["cached"] = min(best["cached"], c)
                if raw is not None:
                    best["raw"] = min(best["raw"], timed(raw[1]))
            rate = {k: n / v[0] for k, v in best.items()}
            wall = {k: n / v[1] for k, v in best.items()}
            f = grid.size_level0[0] / grid.level_downsample / grid.tile_size
            raw_txt = (
                f"{rate['raw']:7.0f} {rate['cached'] / rate['raw']:10.2f}"
                if raw
                else (f"{'n/a':>7} {'n/a':>10}")
            )
            assert stats is not None
            print(
                f"{reader.info.backend:9} {overlap:4.1f} {n:5d} {grid.level:3d} {f:6.3f} | "
                f"{rate['direct']:7.0f} {rate['cached']:7.0f} {rate['cached'] / rate['direct']:5.2f} | "
                f"{raw_txt} | wall: {wall['direct']:6.0f} {wall['cached']:6.0f} | "
                f"{len(tiles)} distinct, cache read {stats.reads} blocks, "
                f"peak {stats.peak_bytes / 2**20:.0f} MiB of {cache.max_bytes / 2**20:.0f}"
            )
        if raw is not None:
            print(f"#   raw = {raw[0]} of the {len(tiles)} compressed tiles under the {n} tiles")
    for reader in opened:
        reader.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slides", nargs="*", help="SLIDE or SLIDE:MPP")
    ap.add_argument("--spacing", type=float, default=0.5)
    ap.add_argument("--max-tiles", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=8192, help="width of the generated slides")
    ap.add_argument("--no-generated", action="store_true")
    args = ap.parse_args()
    print(
        f"# bench_read: spacing {args.spacing} um/px, 224 px tiles, one thread, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    slides: list[tuple[Path, float | None]] = []
    for s in args.slides:
        p, _, m = s.partition(":")
        slides.append((Path(p), float(m) if m else None))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.slides:
            if not args.no_generated:
                slides += generated_slides(Path(tmp), args.size)
            data = Path(
                os.environ.get("WSI_TEST_DATA", Path(__file__).parents[2] / "shared" / "data")
            )
            if (data / "slides").is_dir():
                slides += [
                    (data / "slides" / "CMU-1-Small-Region.svs", None),
                    (data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs", 0.25),
                ]
        for path, mpp in slides:
            bench_slide(path, mpp, args)


if __name__ == "__main__":
    main()
