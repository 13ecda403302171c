"""Picture: one demo-slide tile's layer map with no smoothing, the backward hook and a surrogate.

Usage::

    python benchmarks/plot_surrogate_maps.py SURROGATE_DIR docs/images/surrogate-maps.png

Generates the demo slide, picks the tissue tiles whose predicted tumour probability is
nearest 0.5 (tumour borders), and draws each tile and its channel-mean ``gradient`` map
at the model's layer, titled with the normalised TV of the channel maps.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from wsi_saliency.models import load_model
from wsi_saliency.readers import open_slide
from wsi_saliency.saliency import SaliencyEngine, total_variation
from wsi_saliency.synthetic import write_demo_slide
from wsi_saliency.tiling import make_grid, read_tiles
from wsi_saliency.tissue import detect_tissue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("surrogate", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tiles", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        slide = write_demo_slide(Path(tmp) / "demo.svs")
        model = load_model(args.surrogate)
        with open_slide(slide) as reader:
            grid = make_grid(reader.info, detect_tissue(reader), tile_size=224, spacing=0.5,
                             min_tissue=0.9)
            tiles = read_tiles(reader, grid, np.arange(len(grid)))
    probs = SaliencyEngine(model, method=None, smoothing="none").predict(tiles)[:, 1]
    pick = np.argsort(np.abs(probs - 0.5))[: args.tiles]
    modes = ("none", "backward-hook", "bilinear")
    maps = {}
    tvs = {}
    for mode in modes:
        eng = SaliencyEngine(load_model(args.surrogate), method="gradient", smoothing=mode)
        _, attr = eng.attributions(tiles[pick])
        maps[mode] = attr.mean(dim=1).numpy()
        tvs[mode] = total_variation(attr)
    fig, axes = plt.subplots(len(pick), 1 + len(modes), figsize=(2.2 * (1 + len(modes)),
                                                                 2.3 * len(pick)), dpi=80)
    axes = np.atleast_2d(axes)
    for r, k in enumerate(pick):
        axes[r, 0].imshow(tiles[k])
        axes[r, 0].set_title(f"tile, p(tumour) {probs[k]:.2f}", fontsize=8)
        for c, mode in enumerate(modes, start=1):
            m = maps[mode][r]
            v = float(np.abs(m).max()) or 1.0
            axes[r, c].imshow(m, cmap="RdBu_r", vmin=-v, vmax=v)
            axes[r, c].set_title(f"{mode}\nTV {tvs[mode][r]:.2f}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}; TV per tile: " + "; ".join(
        f"{m} {', '.join(f'{t:.3f}' for t in tvs[m])}" for m in modes))


if __name__ == "__main__":
    main()
