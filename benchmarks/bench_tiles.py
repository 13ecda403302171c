"""Benchmark: ``wsi-saliency tiles`` on a generated 100,000 x 100,000 px sparse slide.

Writes the slide once (a few irregular tissue pieces covering ~1 % of the area; JPEG
Aperio SVS at 0.5 um/px with 4x pyramid levels), then runs the tiles job on it in a
fresh child process and prints its wall time and peak resident memory (VmHWM of the
child's /proc/self/status). Run::

    .venv/bin/python benchmarks/bench_tiles.py [--size 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wsi_saliency import synthetic

_CHILD = """
import sys, time, json
t0 = time.perf_counter()
from wsi_saliency.config import build_config
from wsi_saliency.preview import tile_slide
from pathlib import Path
t1 = time.perf_counter()
config = build_config(None, {"tiling.tile_size": 224, "tiling.spacing": 0.5})
n, folder = tile_slide(Path(sys.argv[1]), Path(sys.argv[2]), config)
t2 = time.perf_counter()
hwm = None
try:  # peak RSS of this process image (per exec, unlike ru_maxrss which spans the fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
except OSError:
    pass
if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"tiles": n, "import_s": t1 - t0, "job_s": t2 - t1, "peak_rss_mib": hwm}))
"""


def sparse_spec(size: int) -> synthetic.SyntheticSlide:
    """A size x size slide at 0.5 um/px with five tissue pieces (~1 % of the area)."""
    rng = np.random.default_rng(11)
    s = size / 100_000
    centres = [
        (20_000, 25_000, 2600),
        (62_000, 18_000, 1800),
        (45_000, 55_000, 3000),
        (80_000, 78_000, 2200),
        (15_000, 85_000, 1500),
    ]
    tissue = tuple(synthetic._blob(x * s, y * s, r * s, rng) for x, y, r in centres)
    tumour = (synthetic._blob(45_000 * s, 55_000 * s, 900 * s, rng),)
    return synthetic.SyntheticSlide(
        width=size, height=size, mpp=0.5, tissue=tissue, tumour=tumour, seed=1
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, default=None, help="write the slide here and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        spec = sparse_spec(args.size)
        slide = root / f"sparse{args.size}.svs"
        frac = float(synthetic.tissue_mask(spec, 64.0).mean())
        t0 = time.perf_counter()
        synthetic.write_slide(spec, slide, kind="svs", compression="jpeg")
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-c", _CHILD, str(slide), str(root / "out")],
            check=True,
            capture_output=True,
            text=True,
        )
        t_total = time.perf_counter() - t0
        stats = json.loads(res.stdout.strip().splitlines()[-1])
        out = root / "out" / slide.stem
        print(
            f"slide               : {args.size} x {args.size} px at 0.5 um/px, "
            f"tissue {100 * frac:.2f} % of the area"
        )
        print(
            f"slide file          : {slide.stat().st_size / 1e6:.1f} MB, written in {t_write:.1f} s"
        )
        print(f"tiles job           : {stats['tiles']} tiles (224 px at 0.5 um/px)")
        print(
            f"tiles job time      : {stats['job_s']:.2f} s (+ {stats['import_s']:.2f} s imports; "
            f"{t_total:.2f} s process wall time)"
        )
        print(
            f"tiles job peak RSS  : {stats['peak_rss_mib']:.0f} MiB (whole process, imports included)"
        )
        print(
            f"outputs             : tissue.png {(out / 'tissue.png').stat().st_size / 1e3:.0f} kB, "
            f"tiles.geojson {(out / 'tiles.geojson').stat().st_size / 1e3:.0f} kB"
        )


if __name__ == "__main__":
    main()
