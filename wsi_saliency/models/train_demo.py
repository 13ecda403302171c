"""Train the bundled demo model on patches of generated slides (CPU, deterministic).

Run ``python -m wsi_saliency.models.train_demo`` to regenerate
``wsi_saliency/models/demo/model.safetensors`` (``--out DIR`` writes elsewhere). The
data are patches of :mod:`wsi_saliency.synthetic` slides whose layouts and texture seeds
differ from the demo slide (:func:`~wsi_saliency.synthetic.demo_slide_spec`); accuracy
is measured on further held-out generated slides and on the demo slide itself.

This is a toy for demonstrating and testing the pipeline. It is not a medical model.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from wsi_saliency.models.architectures import DemoCNN
from wsi_saliency.models.loader import demo_model_dir
from wsi_saliency.models.weights import sha256_file

if TYPE_CHECKING:
    from wsi_saliency.synthetic import SyntheticSlide

__all__ = ["evaluate", "layout", "main", "make_dataset", "train"]

PATCH_PX = 224
SPACING = 0.5
TRAIN_SEEDS: tuple[int, ...] = (101, 102, 103, 104, 105, 106)
HELDOUT_SEEDS: tuple[int, ...] = (201, 202)
MEAN = (0.77, 0.55, 0.74)
STD = (0.23, 0.19, 0.12)

Polygon = tuple[tuple[float, float], ...]


def _blob(cx: float, cy: float, r: float, rng: np.random.Generator, n: int = 60) -> Polygon:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 5):
        rad += 0.2 * rng.uniform(0.2, 1.0) / (k - 1) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    xs = cx + r * rad * np.cos(t)
    ys = cy + r * rad * np.sin(t)
    return tuple((round(float(a), 2), round(float(b), 2)) for a, b in zip(xs, ys, strict=True))


def layout(seed: int, size: int = 4096) -> SyntheticSlide:
    """A generated slide with a random layout (2-3 tissue pieces, 1-3 tumours) and seed.

    Parameters
    ----------
    seed
        Seeds both the layout and the texture.
    size
        Level-0 width = height in pixels at 0.5 um/px.

    Returns
    -------
    wsi_saliency.synthetic.SyntheticSlide
    """
    from wsi_saliency.synthetic import SyntheticSlide

    rng = np.random.default_rng(seed)
    tissue: list[Polygon] = []
    tumour: list[Polygon] = []
    n_pieces = int(rng.integers(2, 4))
    for i in range(n_pieces):
        r = float(rng.uniform(0.16, 0.24)) * size
        cx = (i + 0.5) / n_pieces * size + float(rng.uniform(-0.05, 0.05)) * size
        cy = float(rng.uniform(0.35, 0.65)) * size
        tissue.append(_blob(cx, cy, r, rng))
        if i == 0 or rng.uniform() < 0.6:
            tr = r * float(rng.uniform(0.3, 0.55))
            ang = float(rng.uniform(0, 2 * np.pi))
            off = (r - tr) * float(rng.uniform(0.0, 0.6))
            tumour.append(_blob(cx + off * math.cos(ang), cy + off * math.sin(ang), tr, rng))
    return SyntheticSlide(width=size, height=size, mpp=SPACING, tissue=tuple(tissue),
                          tumour=tuple(tumour), seed=seed)


def _jpeg(patches: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """Round-trip every other patch through JPEG (the demo slide is a JPEG SVS)."""
    from PIL import Image

    out = patches.copy()
    for i in range(0, len(out), 2):
        buf = io.BytesIO()
        Image.fromarray(out[i]).save(buf, format="JPEG", quality=int(rng.integers(70, 96)))
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def make_dataset(
    seeds: Sequence[int], per_slide: int, *, jpeg: bool = True
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Labelled 224 px patches at 0.5 um/px from the generated slides ``seeds``.

    Half of each slide's patches are tumour (label 1), half normal tissue (label 0);
    with ``jpeg`` every other patch is JPEG-compressed.
    """
    from wsi_saliency.synthetic import sample_patches

    xs, ys = [], []
    for seed in seeds:
        spec = layout(seed)
        p, y = sample_patches(spec, per_slide, PATCH_PX, SPACING, seed=seed)
        if jpeg:
            p = _jpeg(p, np.random.default_rng(seed + 1000))
        xs.append(p)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _to_input(patches: npt.NDArray[np.uint8] | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(patches).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips, 90-degree rotations and a mild brightness/contrast jitter."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    scale = 1.0 + 0.1 * (torch.rand(x.shape[0], 1, 1, 1, generator=gen) - 0.5)
    shift = 0.2 * (torch.rand(x.shape[0], 3, 1, 1, generator=gen) - 0.5)
    return x * scale + shift


@torch.no_grad()
def evaluate(model: torch.nn.Module, patches: npt.NDArray[np.uint8],
             labels: npt.NDArray[np.int64], batch: int = 64) -> float:
    """Accuracy of ``model`` on uint8 patches (argmax of the logits)."""
    model.eval()
    correct = 0
    for i in range(0, len(patches), batch):
        logits = model(_to_input(patches[i:i + batch]))
        correct += int((logits.argmax(1).numpy() == labels[i:i + batch]).sum())
    return correct / max(1, len(patches))


def train(
    patches: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    *,
    epochs: int = 4,
    batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> DemoCNN:
    """Train :class:`~wsi_saliency.models.architectures.DemoCNN` from scratch (Adam, cosine)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DemoCNN(num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(patches) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    y_all = torch.from_numpy(labels)
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(patches), generator=gen)
        total = 0.0
        for i in range(0, len(patches), batch):
            idx = order[i:i + batch]
            x = _augment(_to_input(patches[idx.numpy()]), gen)
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(patches):.4f}", flush=True)
    model.eval()
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``python -m wsi_saliency.models.train_demo --help``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=demo_model_dir(),
                        help="directory to write model.safetensors into (default: the "
                             "bundled demo model directory)")
    parser.add_argument("--per-slide", type=int, default=256,
                        help="training patches per generated slide (default 256)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads; fixed for bitwise reproducibility")
    args = parser.parse_args(argv)

    from safetensors.torch import save_file

    from wsi_saliency.synthetic import demo_slide_spec, sample_patches

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    x_train, y_train = make_dataset(TRAIN_SEEDS, args.per_slide)
    x_val, y_val = make_dataset(HELDOUT_SEEDS, 256)
    x_demo, y_demo = sample_patches(demo_slide_spec(), 256, PATCH_PX, SPACING, seed=99)
    print(f"data: {len(x_train)} train patches from slides {TRAIN_SEEDS}, {len(x_val)} "
          f"held-out from {HELDOUT_SEEDS} ({time.perf_counter() - t0:.1f} s)", flush=True)
    model = train(x_train, y_train, epochs=args.epochs)
    acc_train = evaluate(model, x_train, y_train)
    acc_val = evaluate(model, x_val, y_val)
    acc_demo = evaluate(model, x_demo, y_demo)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "model.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(target), metadata={"architecture": "demo_cnn"})
    report = {
        "train_accuracy": round(acc_train, 4),
        "heldout_accuracy": round(acc_val, 4),
        "heldout_patches": len(x_val),
        "demo_slide_accuracy": round(acc_demo, 4),
        "demo_slide_patches": len(x_demo),
        "weights_bytes": target.stat().st_size,
        "weights_sha256": sha256_file(target),
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
