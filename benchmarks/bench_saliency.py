"""Throughput of prediction alone vs prediction + saliency (SaliencyEngine).

For the demo model and a torchvision ResNet-18 (random weights) at batch 32 on the CPU:
patches/s for ``predict`` (one inference-mode forward), for ``run`` (probabilities +
backward-hook-smoothed gradient maps at the default layer: one forward + one backward),
and their time ratio (goal: saliency costs at most 2.5x prediction).

Usage: ``python benchmarks/bench_saliency.py [--batch 32] [--repeats 5] [--threads N]
[--method gradient] [--smoothing backward-hook] [--device cpu] [--layer NAME]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from wsi_saliency.models import LoadedModel, ModelSpec, load_model
from wsi_saliency.saliency import SaliencyEngine


def _resnet18() -> LoadedModel | None:
    try:
        import torchvision.models as tvm
    except ImportError:
        return None
    torch.manual_seed(0)
    net = tvm.resnet18(weights=None, num_classes=2).eval()
    spec = ModelSpec(name="resnet18 (random weights)", architecture="resnet18", num_classes=2,
                     class_names=("normal", "tumor"), patch_size=224, spacing=0.5,
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), tumor_class=1)
    return LoadedModel(spec=spec, module=net)


def _time_pair(predict: Callable[[], object], run: Callable[[], object],
               repeats: int) -> tuple[float, float, float]:
    """Median seconds of ``predict`` and ``run``, timed alternately, and the median ratio.

    Alternating the two keeps a change in machine load (shared CPUs) from favouring one.
    """
    predict()  # warm-up
    run()
    t_pred, t_run = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict()
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        t_pred.append(t1 - t0)
        t_run.append(t2 - t1)
    ratio = statistics.median(r / p for r, p in zip(t_run, t_pred, strict=True))
    return statistics.median(t_pred), statistics.median(t_run), ratio


def main() -> None:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--method", default="gradient")
    ap.add_argument("--smoothing", default="backward-hook")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layer", default=None, help="explained layer (default: the model's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tiles = np.random.default_rng(0).integers(0, 256, (args.batch, 224, 224, 3), dtype=np.uint8)
    models = [("demo_cnn", load_model(None)), ("resnet18", _resnet18())]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"batch {args.batch}, method {args.method}, smoothing {args.smoothing}")
    print(f"{'model':<10} {'layer':<8} {'map':<7} {'predict p/s':>12} {'run p/s':>10} "
          f"{'ratio':>6}")
    for name, model in models:
        if model is None:
            print(f"{name:<10} skipped (torchvision not installed)")
            continue
        eng = SaliencyEngine(model, layer=args.layer, method=args.method,
                             smoothing=args.smoothing, device=args.device)
        t_pred, t_run, ratio = _time_pair(partial(eng.predict, tiles), partial(eng.run, tiles),
                                          args.repeats)
        h, w = eng.map_shape
        print(f"{name:<10} {eng.layer:<8} {f'{h}x{w}':<7} {args.batch / t_pred:>12.1f} "
              f"{args.batch / t_run:>10.1f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
