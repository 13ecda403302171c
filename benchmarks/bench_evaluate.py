"""``evaluate`` on the demo slide: the README table and the time it takes.

Generates the demo slide (as ``wsi-saliency demo`` does), then evaluates
``--layers`` x ``--methods`` x ``--smoothings`` plus the Grad-CAM and random baselines on
``--tiles`` tissue tiles, for the demo model or a torchvision ResNet-18 with random
weights (``torch.manual_seed(0)``). Prints the summary table (``evaluation.md``), the wall
and CPU time, and writes every output into ``--out`` when given.

Usage: ``python benchmarks/bench_evaluate.py [--model demo|resnet18] [--tiles 64]
[--layers layer2,layer3] [--smoothings none,backward-hook,forward-hook] [--no-sanity]
[--no-baselines] [--out DIR] [--device cpu]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from wsi_saliency.config import build_config  # noqa: E402
from wsi_saliency.evaluation.evaluate import evaluate  # noqa: E402
from wsi_saliency.evaluation.report import markdown, write_report  # noqa: E402
from wsi_saliency.evaluation.settings import settings_product, split_list  # noqa: E402
from wsi_saliency.models import LoadedModel, ModelSpec, load_model  # noqa: E402
from wsi_saliency.synthetic import write_demo_slide  # noqa: E402


def _resnet18() -> LoadedModel:
    import torchvision.models as tvm

    torch.manual_seed(0)
    net = tvm.resnet18(weights=None, num_classes=2).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    spec = ModelSpec(name="resnet18 (random weights, seed 0)", architecture="resnet18",
                     num_classes=2, class_names=("normal", "tumor"), patch_size=224,
                     spacing=0.5, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     tumor_class=1, saliency_layer="layer3")
    return LoadedModel(spec=spec, module=net)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("demo", "resnet18"), default="demo")
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--layers", default="layer2,layer3")
    ap.add_argument("--methods", default="gradient-x-activation")
    ap.add_argument("--smoothings", default="none,backward-hook,forward-hook")
    ap.add_argument("--target", default=None)
    ap.add_argument("--no-sanity", action="store_true")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--slide", type=Path, default=None, help="a slide instead of the demo's")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    model = load_model(None) if args.model == "demo" else _resnet18()
    settings = settings_product(split_list(args.layers), split_list(args.methods),
                                split_list(args.smoothings))
    config = build_config({}, {"inference.device": args.device,
                               "inference.batch_size": args.batch_size})
    with tempfile.TemporaryDirectory() as tmp:
        slide = args.slide or write_demo_slide(Path(tmp) / "demo.svs")
        wall, cpu = time.perf_counter(), time.process_time()
        shown = [0]

        def progress(done: int, total: int) -> None:
            pct = 100 * done // max(total, 1)
            if pct >= shown[0] + 5:
                shown[0] = pct
                print(f"  {pct:3d} % after {time.perf_counter() - wall:.0f} s", flush=True)

        result = evaluate(model, [slide], config, settings, n_tiles=args.tiles,
                          target=args.target, baselines=not args.no_baselines,
                          sanity=not args.no_sanity, progress=progress)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(markdown(result))
    print(f"{len(result.targets)} tiles x {len(result.settings)} settings "
          f"({len(settings)} + baselines), sanity {'off' if args.no_sanity else 'on'}: "
          f"wall {wall:.1f} s, process CPU {cpu:.1f} s, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores; stages {result.timings}")
    for r in result.settings:
        print(f"  {r.setting.label}: {r.seconds:.1f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_report(result, args.out)
        print(f"outputs in {args.out}")


if __name__ == "__main__":
    main()
