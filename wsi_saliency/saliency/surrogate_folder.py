"""The surrogate model folder: original config and weights, surrogates, card.

``config.json`` (verbatim), the classifier weights (copied, or referenced by absolute
path and SHA-256), an in-house architecture's ``.py`` file, ``surrogate.safetensors``,
``loss_curve.png``, ``SURROGATE_CARD.md`` and, written last and atomically,
``surrogate.json`` (the card as JSON, which :mod:`wsi_saliency.models.surrogate_ref`
reads when the folder is loaded).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency import __version__
from wsi_saliency.errors import OutputError
from wsi_saliency.models import LoadedModel
from wsi_saliency.models.surrogate_ref import SURROGATE_MANIFEST, SURROGATE_WEIGHTS
from wsi_saliency.models.weights import sha256_file
from wsi_saliency.saliency.surrogate import TrainResult, save_surrogates

__all__ = ["CARD_MD", "LOSS_PNG", "write_card", "write_surrogate_folder"]

#: The card as markdown.
CARD_MD = "SURROGATE_CARD.md"
#: The loss curve picture.
LOSS_PNG = "loss_curve.png"


def _plot_loss(result: TrainResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    steps = np.arange(1, len(result.step_losses) + 1)
    ax.plot(steps, result.step_losses, lw=0.6, alpha=0.5, label="step")
    if result.epoch_losses:
        per = len(result.step_losses) / len(result.epoch_losses)
        ax.plot(per * np.arange(1, len(result.epoch_losses) + 1), result.epoch_losses, "o-",
                ms=3, label="epoch mean")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("L1 summed over layers")
    ax.set_title("surrogate training loss", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _card_markdown(card: dict[str, Any]) -> str:
    fid = card["fidelity"]
    tr = card["training"]
    lines = [
        f"# Bilinear surrogate for {card['model']['name']}",
        "",
        "Learned stand-ins for the strided convolutions after the stem (Smooth Deep "
        "Saliency's `bilinear` variant): `Conv3x3 -> bilinear resize -> Conv3x3`, trained "
        "with the classifier frozen to reproduce each convolution's output (L1, Adam). "
        "Use it with `wsi-saliency run --model THIS_FOLDER --smoothing bilinear`.",
        "",
        f"- classifier weights: `{card['base_weights']['file']}` (SHA-256 "
        f"`{card['base_weights']['sha256']}`)",
        f"- replaced convolutions: {', '.join(f'`{n}`' for n in card['surrogate']['layers'])}",
        f"- tiles: {tr['tiles']} training + {fid['tiles']} held-out from "
        f"{len(card['sampling']['per_slide'])} slide(s), seed {tr['seed']}"
        + (f", by predicted class {card['sampling']['per_class']}"
           if card["sampling"]["per_class"] else ""),
        f"- epochs: {tr['epochs']}, batch {tr['batch_size']}, lr {tr['lr']}, "
        f"{tr['device']} {tr['precision']}, {tr['seconds']:.1f} s "
        f"({tr['tiles_per_s']:.1f} tiles/s)",
        f"- final epoch loss: {tr['epoch_losses'][-1]:.5f}",
        "",
        "## Fidelity on held-out tiles",
        "",
        f"- top-class agreement: {100 * fid['top_class_agreement']:.2f} %",
        f"- |dp| (largest class-probability change per tile): mean {fid['mean_abs_dp']:.4f}, "
        f"max {fid['max_abs_dp']:.4f}",
        "",
        "| replaced convolution | L1 | relative L1 |",
        "|---|---|---|",
        *[f"| `{n}` | {v['l1']:.4g} | {v['relative_l1']:.3f} |"
          for n, v in fid["layers"].items()],
        "",
    ]
    if card.get("tv"):
        tv = card["tv"]
        lines += ["## Smoothness (normalised TV of `gradient` maps, held-out tiles)", "",
                  "| none | backward-hook | bilinear |", "|---|---|---|",
                  f"| {tv['none']:.4f} | {tv['backward-hook']:.4f} | {tv['bilinear']:.4f} |",
                  ""]
    lines += [f"![loss curve]({LOSS_PNG})", ""]
    return "\n".join(lines)


def _base_weights_path(model: LoadedModel) -> Path:
    if model.surrogate is not None and model.surrogate.base_weights is not None:
        return model.surrogate.base_weights
    return Path(model.spec.source) / model.spec.weights_file


def write_surrogate_folder(
    out: Path,
    model: LoadedModel,
    result: TrainResult,
    card: dict[str, Any],
    *,
    copy_weights: bool = True,
) -> dict[str, Any]:
    """Write the surrogate model folder (everything but ``surrogate.json``'s ``tv``).

    Writes ``config.json`` (the original, verbatim), the classifier weights (copied,
    or referenced by absolute path and SHA-256 with ``copy_weights=False``), an
    in-house architecture's ``.py`` file, ``surrogate.safetensors``,
    ``loss_curve.png``, ``SURROGATE_CARD.md`` and, last, ``surrogate.json``.

    Parameters
    ----------
    out
        The folder (created if needed).
    model
        The classifier the surrogates were trained for.
    result
        The training result.
    card
        Card entries so far (``sampling``, ``training``, ``fidelity``, ``tv``).
    copy_weights
        Copy the classifier weights into the folder (else reference them).

    Returns
    -------
    dict
        The card as written to ``surrogate.json``.
    """
    src = Path(model.spec.source)
    out.mkdir(parents=True, exist_ok=True)
    config_text = (src / "config.json").read_text(encoding="utf-8")
    config = json.loads(config_text)
    weights = _base_weights_path(model)
    if copy_weights:
        rel = str(config.get("weights") or weights.name)
        if rel == SURROGATE_WEIGHTS:
            raise OutputError(f"{weights}: the classifier weights may not be called "
                              f"{SURROGATE_WEIGHTS}; rename them")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if weights.resolve() != target.resolve():
            shutil.copyfile(weights, target)
        base_file = rel
    else:
        base_file = str(weights.resolve())
    arch = str(config.get("architecture", ""))
    if ":" in arch and arch.split(":", 1)[0].endswith(".py"):
        code = arch.split(":", 1)[0]
        if (src / code).resolve() != (out / code).resolve():
            (out / code).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / code, out / code)
    if (src / "config.json").resolve() != (out / "config.json").resolve():
        (out / "config.json").write_text(config_text, encoding="utf-8")
    save_surrogates(result.surrogates, out / SURROGATE_WEIGHTS,
                    {"base_weights_sha256": model.spec.weights_sha256})
    _plot_loss(result, out / LOSS_PNG)
    full = {
        "format": "wsi-saliency-surrogate-card/1",
        "wsi_saliency_version": __version__,
        "model": {"name": model.spec.name, "architecture": model.spec.architecture,
                  "source": str(src)},
        "base_weights": {"file": base_file, "sha256": model.spec.weights_sha256},
        "surrogate": {"file": SURROGATE_WEIGHTS,
                      "sha256": sha256_file(out / SURROGATE_WEIGHTS),
                      "layers": list(result.surrogates.names),
                      "design": "Conv3x3 -> bilinear resize (align_corners=False) -> Conv3x3, "
                                "same groups as the replaced convolution",
                      "parameters": int(sum(p.numel() for p in result.surrogates.parameters()))},
        **card,
        "loss_curve": LOSS_PNG,
    }
    write_card(out, full)
    return full


def write_card(out: Path, card: dict[str, Any]) -> None:
    """Write ``SURROGATE_CARD.md`` and, atomically and last, ``surrogate.json``."""
    (out / CARD_MD).write_text(_card_markdown(card), encoding="utf-8")
    tmp = out / (SURROGATE_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / SURROGATE_MANIFEST)
