"""Bilinear surrogate of the demo model (or ResNet-18): training time, fidelity, map TV.

Generates training slides (random layouts, :func:`wsi_saliency.models.train_demo.layout`)
and the demo slide (held out entirely), trains the surrogates with
:func:`wsi_saliency.saliency.surrogate_train.distill` on the training slides, then
measures on tiles of the demo slide, which training never saw:

* fidelity of the surrogate-substituted network (top-class agreement, mean/max |dp|,
  L1 per layer);
* the normalised total variation of the layer maps (``gradient`` and
  ``gradient-x-activation``) with no smoothing, the backward hook and the surrogates.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_surrogate.py --epochs 5 --tiles 512
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_surrogate.py --model resnet18 \\
        --epochs 1 --tiles 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsi_saliency.models import load_model
from wsi_saliency.models.train_demo import layout
from wsi_saliency.readers import open_slide
from wsi_saliency.saliency import SaliencyEngine, total_variation
from wsi_saliency.saliency.surrogate import load_surrogates
from wsi_saliency.saliency.surrogate_fidelity import fidelity
from wsi_saliency.saliency.surrogate_train import TrainSettings, distill
from wsi_saliency.synthetic import write_demo_slide, write_slide
from wsi_saliency.tiling import make_grid, read_tiles
from wsi_saliency.tissue import detect_tissue


def _resnet_dir(root: Path) -> Path:
    """A ResNet-18 model folder with random (seeded) weights."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2)
    d = root / "resnet18"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(d / "model.safetensors"))
    cfg = json.loads((Path(load_model(None).spec.source) / "config.json").read_text())
    cfg.update(architecture="resnet18", name="resnet18 (random weights)")
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="'demo' or 'resnet18' (random weights)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--tiles", type=int, default=512)
    ap.add_argument("--heldout", type=int, default=64)
    ap.add_argument("--eval-tiles", type=int, default=128, help="demo-slide tiles measured")
    ap.add_argument("--slides", type=int, default=6, help="training slides generated")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warm-start", action="store_true", help="start from the conv weights")
    ap.add_argument("--keep", type=Path, default=None, help="write the surrogate folder here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        slides = []
        for seed in range(301, 301 + args.slides):
            slides.append(write_slide(layout(seed), root / f"train{seed}.svs", kind="svs",
                                      compression="jpeg"))
        demo_slide = write_demo_slide(root / "demo.svs")
        print(f"slides generated in {time.perf_counter() - t0:.1f} s")
        mdir = None if args.model == "demo" else _resnet_dir(root)
        model = load_model(mdir)
        out = args.keep or root / "surrogate"
        t0 = time.perf_counter()
        card = distill(model, [str(s) for s in slides], out,
                       TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                                     lr=args.lr, device="cpu",
                                     warm_start=args.warm_start),
                       n_tiles=args.tiles, n_heldout=args.heldout, with_tv=False)
        wall = time.perf_counter() - t0
        tr, fid = card["training"], card["fidelity"]
        print(f"model {model.spec.name}: {len(card['surrogate']['layers'])} surrogates "
              f"({card['surrogate']['parameters']:,} parameters): "
              f"{', '.join(card['surrogate']['layers'])}")
        print(f"training: {tr['tiles']} tiles x {tr['epochs']} epochs, {tr['steps']} steps, "
              f"{tr['seconds']:.1f} s training ({tr['tiles_per_s']:.1f} tiles/s), "
              f"{wall:.1f} s with sampling and fidelity; per_class "
              f"{card['sampling']['per_class']}")
        print("epoch losses: " + ", ".join(f"{v:.4f}" for v in tr["epoch_losses"]))
        print(f"held-out tiles of the training slides ({fid['tiles']}): agreement "
              f"{100 * fid['top_class_agreement']:.2f} %, mean |dp| {fid['mean_abs_dp']:.4f}, "
              f"max |dp| {fid['max_abs_dp']:.4f}")

        # tiles of the demo slide, never seen in training
        with open_slide(demo_slide) as reader:
            grid = make_grid(reader.info, detect_tissue(reader), tile_size=model.spec.patch_size,
                             spacing=model.spec.spacing, min_tissue=0.5)
            rng = np.random.default_rng(1)
            idx = np.sort(rng.choice(len(grid), size=min(args.eval_tiles, len(grid)),
                                     replace=False))
            tiles = read_tiles(reader, grid, idx)
        loaded = load_model(out)
        sur = load_surrogates(out / "surrogate.safetensors", loaded.module,
                              loaded.spec.input_size)
        f2 = fidelity(loaded, sur, tiles)
        print(f"demo slide ({f2['tiles']} tiles, not in training): agreement "
              f"{100 * f2['top_class_agreement']:.2f} %, mean |dp| {f2['mean_abs_dp']:.4f}, "
              f"max |dp| {f2['max_abs_dp']:.4f}")
        print("L1 per layer (relative): " + ", ".join(
            f"{n} {v['l1']:.4f} ({v['relative_l1']:.3f})" for n, v in f2["layers"].items()))
        for method in ("gradient", "gradient-x-activation"):
            tv = {}
            for mode in ("none", "backward-hook", "forward-hook", "bilinear"):
                eng = SaliencyEngine(load_model(out), method=method, smoothing=mode)
                tv[mode] = float(np.concatenate([
                    total_variation(eng.attributions(tiles[i:i + 16])[1])
                    for i in range(0, len(tiles), 16)]).mean())
            print(f"TV {method} at {eng.layer}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in tv.items())
                + f"; bilinear vs backward-hook {100 * (tv['bilinear'] / tv['backward-hook'] - 1):+.0f} %"
                + f", vs none {100 * (tv['bilinear'] / tv['none'] - 1):+.0f} %")


if __name__ == "__main__":
    main()
