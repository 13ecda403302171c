"""Peak memory of the whole job is flat in slide size (goal: <= 1.5 GB on Camelyon16 size).

Writes two sparse generated slides at 0.243 um/px with the same tissue (two pieces near
the top-left corner): a small one and one of Camelyon16 size (97,792 x 221,184 px), then
runs the whole per-slide job (tissue, tiles, model + saliency, stitch, every writer) on
each in a fresh process and prints that process's peak RSS (``ru_maxrss``). Tiles that
hold no tissue are one cached background JPEG tile in the file, so the big slide is
written in a minute or two.

Usage::

    .venv/bin/python benchmarks/bench_memory.py [--model demo|resnet18] [--precision auto]
        [--sizes 8192x8192,97792x221184]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MPP = 0.243
CAMELYON16 = (97_792, 221_184)


def _blob(cx: float, cy: float, r: float) -> tuple[tuple[float, float], ...]:
    import math

    return tuple(
        (round(cx + r * math.cos(2 * math.pi * k / 48), 1),
         round(cy + r * (0.8 + 0.2 * math.sin(3 * k)) * math.sin(2 * math.pi * k / 48), 1))
        for k in range(48)
    )


def write(path: Path, width: int, height: int) -> Path:
    from wsi_saliency import synthetic

    spec = synthetic.SyntheticSlide(
        width=width, height=height, mpp=MPP,
        tissue=(_blob(2600.0, 2600.0, 2200.0), _blob(6000.0, 5600.0, 1500.0)),
        tumour=(_blob(2400.0, 2400.0, 900.0),),
        seed=11,
    )
    return synthetic.write_slide(spec, path, kind="svs", compression="jpeg")


def child(slide: Path, out: Path, model_name: str, precision: str) -> None:
    """Run the job in this process; print JSON with the peak RSS."""
    import tempfile as tf

    from wsi_saliency.config import InferenceConfig, RunConfig
    from wsi_saliency.models import demo_model_dir, load_model
    from wsi_saliency.worker import run_slide

    if model_name == "demo":
        model = load_model(demo_model_dir())
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_worker import resnet18_dir

        model = load_model(resnet18_dir(Path(tf.mkdtemp())))
    cfg = RunConfig(inference=InferenceConfig(device="cpu", precision=precision))
    t = time.perf_counter()
    res = run_slide(slide, model, cfg, out)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n_tiles": res.n_tiles, "seconds": round(time.perf_counter() - t, 1),
                      "peak_rss_mb": round(peak_kb / 1024, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--sizes", default=f"8192x8192,{CAMELYON16[0]}x{CAMELYON16[1]}")
    ap.add_argument("--child", nargs=2, metavar=("SLIDE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.model, args.precision)
        return
    print(f"model {args.model}, precision {args.precision}, {MPP} um/px, same tissue in each")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            t = time.perf_counter()
            slide = write(root / f"s{w}x{h}.svs", w, h)
            made = time.perf_counter() - t
            out = root / f"out{w}x{h}"
            out.mkdir()
            res = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--precision", args.precision,
                 "--child", str(slide), str(out)],
                capture_output=True, text=True, check=True,
            )
            info = json.loads(res.stdout.strip().splitlines()[-1])
            mb = slide.stat().st_size / 2**20
            print(f"{w:>7d} x {h:<7d} px ({mb:7.1f} MB file, written in {made:5.1f} s): "
                  f"{info['n_tiles']:5d} tiles in {info['seconds']:6.1f} s, "
                  f"peak RSS {info['peak_rss_mb']:7.1f} MB (goal <= 1536 MB)", flush=True)


if __name__ == "__main__":
    main()
