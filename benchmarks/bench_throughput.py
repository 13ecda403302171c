"""Throughput of the whole job against a plain fp32 prediction loop, and the accuracy guard.

For each model (a torchvision ResNet-18 with random weights, seed 0, in a WSInfer-style
model folder, and the bundled demo model) on the generated demo slide, with the same
batch size and torch threads, prints in one run:

* ``baseline``: a plain fp32 NCHW prediction-only loop under ``torch.inference_mode``
  over the slide's tiles decoded beforehand (uint8 -> float, normalise, contiguous NCHW
  as a ``ToTensor`` data loader stacks them, model, softmax); also, for reference, the
  same loop fed the permuted view of the ``(B, H, W, 3)`` tiles, whose channels-last
  strides make PyTorch run the whole network channels-last (the figure this script
  printed as its baseline before 2026-11-30);
* ``engine <precision>``: prediction + saliency of the engine alone on the same tiles,
  for fp32 NCHW, fp32 channels-last and bf16 channels-last (when bf16 is usable);
* ``job saliency``: the whole :func:`wsi_saliency.worker.run_slide` call with saliency
  (read, tissue, model, stitch, every writer) at ``--precision`` (default auto), in
  patches/s of wall time, and its ratio to the baseline (goal >= 1.8x);
* ``job predict``: the same with ``--method none`` (goal >= 2.5x);
* the accuracy guard of the precision used against fp32 NCHW on the same tiles:
  max |dp| (goal <= 0.01) and Pearson correlation of the saliency maps (goal >= 0.99).

On a CUDA device each job also prints how busy the GPU was (``nvidia-smi``'s
``utilization.gpu`` sampled every 100 ms, :mod:`gpu_busy`; goal >= 90 %).
For the jobs it also prints where the time went (``SlideResult.timings``: ``model`` is
the engine's calls in the main thread, ``inference`` the whole tile loop, so
``inference - model - stitch`` is time spent waiting for the reader threads), the reader
threads and the decode path used. ``--slide-scale SX,SY`` scales the demo slide (and its
tissue) so that the fixed per-slide costs do not dominate (``2.6667,3`` gives the
16,384 x 12,288 px slide of issue 12).

Usage::

    .venv/bin/python benchmarks/bench_throughput.py [--batch-size 32] [--workers auto]
        [--device cpu] [--precision auto] [--models resnet18,demo] [--max-tiles 256]
        [--slide-scale 1,1]
"""

from __future__ import annotations

import os

# as the CLI does: passive OpenMP waiting so reader threads and PyTorch share the cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from wsi_saliency import synthetic
from wsi_saliency.config import InferenceConfig, ModelConfig, RunConfig, resolve_model_defaults
from wsi_saliency.models import LoadedModel, demo_model_dir, load_model
from wsi_saliency.plan import plan_slide
from wsi_saliency.readers import open_slide
from wsi_saliency.saliency import SaliencyEngine
from wsi_saliency.saliency.engine import resolve_device
from wsi_saliency.saliency.precision import cpu_has_native_bf16, resolve_precision
from wsi_saliency.tiling import read_tiles
from wsi_saliency.worker import check_run, heatmap_map_shape, run_slide

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_worker import resnet18_dir  # noqa: E402
from gpu_busy import GpuBusy  # noqa: E402


def slide_tiles(model: LoadedModel, cfg: RunConfig, slide: Path) -> npt.NDArray[np.uint8]:
    """Every tile of the slide's grid, decoded (the job's grid)."""
    cfg = resolve_model_defaults(cfg, model.spec)
    map_shape = heatmap_map_shape(check_run(model, cfg))  # the job's grid, overlap resolved
    with open_slide(slide) as reader:
        grid = plan_slide(reader, cfg, map_shape=map_shape).grid
        return read_tiles(reader, grid, np.arange(len(grid)))


def baseline(model: LoadedModel, tiles: npt.NDArray[np.uint8], bs: int,
             device: torch.device, *, nchw: bool = True) -> float:
    """Patches/s of a plain fp32 prediction loop under inference_mode.

    ``nchw=True``: the input is a contiguous NCHW tensor, as a ``ToTensor`` + stacking
    data loader gives it (the issue's baseline). ``nchw=False``: the ``(B, 3, H, W)``
    permuted view of the ``(B, H, W, 3)`` tiles, which has channels-last strides, so
    PyTorch runs every convolution channels-last (a faster loop than the issue's).
    """
    net = model.module.eval().to(device=device, memory_format=torch.contiguous_format)
    mean = torch.tensor(model.spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.spec.std, device=device).view(1, 3, 1, 1)

    def step(batch: npt.NDArray[np.uint8]) -> None:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - mean) / std
            torch.softmax(net(x.contiguous() if nchw else x).float(), dim=1).cpu()

    step(tiles[:bs])  # warm-up
    t = time.perf_counter()
    for s in range(0, len(tiles), bs):
        step(tiles[s : s + bs])
    return len(tiles) / (time.perf_counter() - t)


def engine_run(engine: SaliencyEngine, tiles: npt.NDArray[np.uint8], bs: int
               ) -> tuple[float, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Patches/s of prediction + saliency, and the outputs."""
    engine.run(tiles[:bs])  # warm-up
    probs, maps = [], []
    t = time.perf_counter()
    for s in range(0, len(tiles), bs):
        p, m = engine.run(tiles[s : s + bs])
        probs.append(p)
        maps.append(m)
    rate = len(tiles) / (time.perf_counter() - t)
    return rate, np.concatenate(probs), np.concatenate(maps)


def job(model: LoadedModel, cfg: RunConfig, slide: Path, root: Path) -> tuple[float, int, str]:
    """Whole-job patches/s (wall time of run_slide), tiles, precision used; prints where
    the time went."""
    import json

    out = Path(tempfile.mkdtemp(dir=root))
    device = resolve_device(cfg.inference.device)
    with GpuBusy(index=device.index or 0) if device.type == "cuda" else nullcontext() as busy:
        t = time.perf_counter()
        res = run_slide(slide, model, cfg, out)
        total = time.perf_counter() - t
    if busy is not None:
        print(f"    {busy.describe()}")
    inf = json.loads((out / "run.json").read_text())["inference"]
    tm = res.timings
    wait = tm.get("inference", 0.0) - tm.get("model", 0.0) - tm.get("stitch", 0.0)
    rest = {k: v for k, v in tm.items() if k not in ("model", "stitch", "inference", "total")}
    print(f"    time {total:.1f} s: model {tm.get('model', 0.0):.1f}, stitch "
          f"{tm.get('stitch', 0.0):.2f}, waiting for tiles {wait:.2f}, "
          + ", ".join(f"{k} {v:.2f}" for k, v in rest.items())
          + f"; {inf['workers']} reader threads, decode {inf['decode']['used']}, "
          f"{inf['batchnorms_folded']} batch norms folded")
    return res.n_tiles / total, res.n_tiles, str(inf["precision"])


def scaled_demo_slide(path: Path, sx: float, sy: float) -> Path:
    """The demo slide with its size and tissue scaled by ``(sx, sy)``."""
    spec = synthetic.demo_slide_spec()

    def scale(polys: tuple[tuple[tuple[float, float], ...], ...]
              ) -> tuple[tuple[tuple[float, float], ...], ...]:
        return tuple(tuple((x * sx, y * sy) for x, y in p) for p in polys)

    spec = dataclasses.replace(spec, width=round(spec.width * sx),
                               height=round(spec.height * sy), tissue=scale(spec.tissue),
                               tumour=scale(spec.tumour))
    return synthetic.write_slide(spec, path, kind="svs", compression="jpeg")


def engine_run_predict(engine: SaliencyEngine, tiles: npt.NDArray[np.uint8], bs: int) -> float:
    """Patches/s of prediction only."""
    engine.predict(tiles[:bs])  # warm-up
    t = time.perf_counter()
    for s in range(0, len(tiles), bs):
        engine.predict(tiles[s : s + bs])
    return len(tiles) / (time.perf_counter() - t)


def guard(p_ref: npt.NDArray[np.float32], m_ref: npt.NDArray[np.float32],
          p: npt.NDArray[np.float32], m: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Max |dp| of the probabilities and Pearson r of the saliency maps."""
    dp = float(np.abs(p.astype(np.float64) - p_ref).max())
    r = float(np.corrcoef(m.ravel().astype(np.float64), m_ref.ravel().astype(np.float64))[0, 1])
    return dp, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="auto", help="reader threads or auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--models", default="resnet18,demo")
    ap.add_argument("--max-tiles", type=int, default=256,
                    help="tiles for the in-memory loops (baseline, engine, guard)")
    ap.add_argument("--slide-scale", default="1,1",
                    help="SX,SY: scale the demo slide (2.6667,3: 16,384 x 12,288 px)")
    args = ap.parse_args()
    sx, sy = (float(v) for v in args.slide_scale.split(","))
    workers: int | str = int(args.workers) if args.workers.isdigit() else args.workers

    device = resolve_device(args.device)
    used = resolve_precision(args.precision, device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, "
          f"batch {args.batch_size}, reader threads {args.workers}, precision {args.precision} "
          f"-> {used} (native CPU bf16: {cpu_has_native_bf16()})")
    bs = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        slide = (synthetic.write_demo_slide(root / "demo.svs") if (sx, sy) == (1.0, 1.0)
                 else scaled_demo_slide(root / "demo.svs", sx, sy))
        with open_slide(slide) as r:
            print(f"slide {r.info.dimensions[0]} x {r.info.dimensions[1]} px")
        dirs = {"demo": demo_model_dir()}
        if "resnet18" in args.models:
            dirs["resnet18"] = resnet18_dir(root)
        cfg = RunConfig(
            inference=InferenceConfig(device=args.device, batch_size=bs, workers=workers,  # type: ignore[arg-type]
                                      precision=args.precision)
        )
        for name in args.models.split(","):
            model = load_model(dirs[name])
            tiles = slide_tiles(model, cfg, slide)[: args.max_tiles]
            base = baseline(model, tiles, bs, device)
            base_cl = baseline(model, tiles, bs, device, nchw=False)
            print(f"\n[{name}] {len(tiles)} pre-decoded tiles")
            print(f"  baseline fp32 NCHW predict, inference_mode : {base:8.1f} patches/s")
            print(f"  (the same loop on the permuted HWC view, channels-last strides: "
                  f"{base_cl:.1f} patches/s)")
            ref = SaliencyEngine(model, method="gradient-x-activation", device=device,
                                 precision="fp32", channels_last=False)
            r_ref, p_ref, m_ref = engine_run(ref, tiles, bs)
            print(f"  engine fp32 NCHW   predict + saliency      : {r_ref:8.1f} patches/s "
                  f"({r_ref / base:.2f}x)")
            variants = [("fp32", True)]
            if used != "fp32":
                variants.append((used, True))
            elif args.device == "cpu" or device.type == "cuda":
                try:
                    resolve_precision("bf16", device)
                    variants.append(("bf16", True))
                except ValueError:
                    pass
            for prec, cl in variants:
                for fold in (True, False):
                    eng = SaliencyEngine(model, method="gradient-x-activation", device=device,
                                         precision=prec, channels_last=cl, fold_bn=fold)
                    r, p, m = engine_run(eng, tiles, bs)
                    dp, pr = guard(p_ref, m_ref, p, m)
                    ok = "holds" if dp <= 0.01 and pr >= 0.99 else "FAILS"
                    layout = "channels-last" if eng.channels_last else "NCHW"
                    bn = "BN folded" if fold else "BN kept  "
                    print(f"  engine {prec} {layout:13s} {bn} predict + saliency : {r:8.1f} "
                          f"patches/s ({r / base:.2f}x)  guard: max|dp| {dp:.2e}, saliency r "
                          f"{pr:.5f} ({ok})")
                    if prec == "fp32":
                        break  # fp32 channels-last: folded only
            pe = SaliencyEngine(model, method=None, device=device, precision=used)
            r = engine_run_predict(pe, tiles, bs)
            print(f"  engine {used} predict only (inference_mode)      : {r:8.1f} patches/s "
                  f"({r / base:.2f}x)")
            model.module.to(memory_format=torch.contiguous_format)
            sal, n, prec_used = job(model, cfg, slide, root)
            print(f"  whole job, saliency ({prec_used}, {n} tiles)       : {sal:8.1f} patches/s "
                  f"= {sal / base:.2f}x baseline (goal >= 1.8x); {sal / base_cl:.2f}x the "
                  "channels-last-strided loop")
            none_cfg = dataclasses.replace(cfg, model=ModelConfig(method="none"))
            pred, n, prec_used = job(model, none_cfg, slide, root)
            print(f"  whole job, --method none ({prec_used})        : {pred:8.1f} patches/s "
                  f"= {pred / base:.2f}x baseline (goal >= 2.5x); {pred / base_cl:.2f}x the "
                  "channels-last-strided loop")
            base2 = baseline(model, tiles, bs, device)
            base2_cl = baseline(model, tiles, bs, device, nchw=False)
            print(f"  baseline again (load drift check)             : {base2:8.1f} patches/s "
                  f"(channels-last strides {base2_cl:.1f})")
            mean, mean_cl = (base + base2) / 2, (base_cl + base2_cl) / 2
            print(f"  against the mean of both baselines ({mean:.1f}; channels-last strides "
                  f"{mean_cl:.1f}): job with saliency {sal / mean:.2f}x (goal >= 1.8x; "
                  f"{sal / mean_cl:.2f}x), --method none {pred / mean:.2f}x (goal >= 2.5x; "
                  f"{pred / mean_cl:.2f}x)")


if __name__ == "__main__":
    main()
