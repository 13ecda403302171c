"""Does tile reading overlap compute? Whole-slide job vs the model alone.

For each model (the bundled demo model and a torchvision ResNet-18 with random weights)
on the generated demo slide, at the same batch size and device, prints:

* ``model alone``: patches/s of prediction + saliency on tiles preloaded in memory;
* ``slide loop``: patches/s of the tile loop of :func:`wsi_saliency.worker.run_slide`
  (reading in reader threads + model + stitching);
* ``whole job``: patches/s of the whole :func:`run_slide` call (tissue detection and
  every writer included);
* the ratios of the last two to the first (goal: slide loop / model alone >= 0.85).

Usage::

    .venv/bin/python benchmarks/bench_worker.py [--batch-size 32] [--workers 2]
        [--device cpu] [--models demo,resnet18] [--repeats 1]
"""

from __future__ import annotations

import os

# as the CLI does: passive OpenMP waiting so reader threads and PyTorch share the cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsi_saliency import synthetic
from wsi_saliency.config import InferenceConfig, RunConfig, resolve_model_defaults
from wsi_saliency.models import LoadedModel, demo_model_dir, load_model
from wsi_saliency.plan import plan_slide
from wsi_saliency.readers import open_slide
from wsi_saliency.saliency import SaliencyEngine
from wsi_saliency.tiling import read_tiles
from wsi_saliency.worker import check_run, heatmap_map_shape, run_slide


def resnet18_dir(root: Path) -> Path:
    """A model directory: torchvision resnet18, 2 classes, seeded random weights."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2)
    d = root / "resnet18"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(
        json.dumps(
            {
                "spec_version": "1.0",
                "architecture": "resnet18",
                "num_classes": 2,
                "class_names": ["normal", "tumor"],
                "patch_size_pixels": 224,
                "spacing_um_px": 0.5,
                "transform": [
                    {"name": "Resize", "arguments": {"size": 224}},
                    {"name": "ToTensor"},
                    {
                        "name": "Normalize",
                        "arguments": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                    },
                ],
                "tumor_class": 1,
                "saliency_layer": "layer3",
            }
        )
    )
    return d


def model_alone(model: LoadedModel, cfg: RunConfig, slide: Path) -> tuple[float, int]:
    """Patches/s of engine.run on preloaded tiles (same grid as the slide job)."""
    cfg = resolve_model_defaults(cfg, model.spec)
    map_shape = heatmap_map_shape(check_run(model, cfg))  # the job's grid, overlap resolved
    with open_slide(slide) as reader:
        grid = plan_slide(reader, cfg, map_shape=map_shape).grid
        tiles = read_tiles(reader, grid, np.arange(len(grid)))
    engine = SaliencyEngine(
        model, layer=cfg.model.layer, method=cfg.model.method,
        smoothing=cfg.model.smoothing, device=cfg.inference.device,
    )
    bs = cfg.inference.batch_size
    engine.run(tiles[:bs])  # warm-up
    t = time.perf_counter()
    for s in range(0, len(tiles), bs):
        engine.run(tiles[s : s + bs])
    return len(tiles) / (time.perf_counter() - t), len(tiles)


def slide_job(model: LoadedModel, cfg: RunConfig, slide: Path, root: Path) -> tuple[float, float]:
    out = Path(tempfile.mkdtemp(dir=root))
    t = time.perf_counter()
    res = run_slide(slide, model, cfg, out)
    total = time.perf_counter() - t
    return res.n_tiles / res.timings["inference"], res.n_tiles / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="demo,resnet18")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"batch {args.batch_size}, reader threads {args.workers}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        slide = synthetic.write_demo_slide(root / "demo.svs")
        dirs = {"demo": demo_model_dir()}
        if "resnet18" in args.models:
            dirs["resnet18"] = resnet18_dir(root)
        cfg = RunConfig(
            inference=InferenceConfig(
                device=args.device, batch_size=args.batch_size, workers=args.workers
            )
        )
        print(f"{'model':10s} {'tiles':>6s} {'model alone':>12s} {'slide loop':>11s} "
              f"{'whole job':>10s} {'loop/alone':>11s} {'job/alone':>10s}")
        for name in args.models.split(","):
            model = load_model(dirs[name])
            for _ in range(args.repeats):
                alone, n = model_alone(model, cfg, slide)
                loop, job = slide_job(model, cfg, slide, root)
                print(f"{name:10s} {n:6d} {alone:12.1f} {loop:11.1f} {job:10.1f} "
                      f"{loop / alone:11.2f} {job / alone:10.2f}")


if __name__ == "__main__":
    main()
