"""A tiny hand-built model whose tumour logit is a known function of colour.

``logit_tumour = K * (mean(B - R) - C)`` over the tile (pixels scaled to 0..1) and
``logit_normal = 0``: synthetic tumour is bluer than normal tissue (B - R about +0.1
against -0.12), so the model separates them with no training. Four 2x2 stride-2 box
convolutions give a ``TILE / 16`` square saliency map at layer ``down4``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

K = 50.0
C = 0.03

MODEL_PY = '''
import torch
from torch import nn


class ColourNet(nn.Module):
    """logit_tumour = K * (mean(B - R) - C); four 2x2 stride-2 box convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 1, 1, bias=False)
        self.down1 = nn.Conv2d(1, 1, 2, stride=2, bias=False)
        self.down2 = nn.Conv2d(1, 1, 2, stride=2, bias=False)
        self.down3 = nn.Conv2d(1, 1, 2, stride=2, bias=False)
        self.down4 = nn.Conv2d(1, 1, 2, stride=2, bias=False)
        self.head = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down4(self.down3(self.down2(self.down1(self.stem(x)))))
        return self.head(y.mean(dim=(2, 3)))


def build() -> nn.Module:
    return ColourNet()
'''


def colour_state(c: float = C) -> dict[str, torch.Tensor]:
    """Weights of the colour model with decision point ``mean(B - R) = c``."""
    box = torch.full((1, 1, 2, 2), 0.25)
    return {
        "stem.weight": torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1),
        "down1.weight": box.clone(),
        "down2.weight": box.clone(),
        "down3.weight": box.clone(),
        "down4.weight": box.clone(),
        "head.weight": torch.tensor([[0.0], [K]]),
        "head.bias": torch.tensor([0.0, -K * c]),
    }


def write_colour_model(d: Path, tile: int, spacing: float = 0.5, c: float = C) -> Path:
    """Write the colour model as a model directory (``file.py:callable`` architecture).

    ``c`` is the decision point: the default 0.03 keeps glass (B - R about 0) normal;
    -0.01 puts it at a tile half tumour, half normal tissue.
    """
    d.mkdir(parents=True, exist_ok=True)
    (d / "colour_model.py").write_text(MODEL_PY)
    save_file(colour_state(c), str(d / "model.safetensors"))
    config = {
        "spec_version": "1.0",
        "architecture": "colour_model.py:build",
        "num_classes": 2,
        "class_names": ["normal", "tumor"],
        "patch_size_pixels": tile,
        "spacing_um_px": spacing,
        "transform": [
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": [0, 0, 0], "std": [1, 1, 1]}},
        ],
        "tumor_class": 1,
        "saliency_layer": "down4",
    }
    (d / "config.json").write_text(json.dumps(config))
    return d
