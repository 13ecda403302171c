"""`wsi-saliency layers [MODEL_DIR]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from wsi_saliency.cli import cli


def _rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines()[2:]:
        parts = line.lstrip("* ").split()
        if len(parts) >= 5 and not line.startswith("* default"):
            rows[parts[0]] = parts
    return rows


def test_layers_default_demo_model() -> None:
    result = CliRunner().invoke(cli, ["layers"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "demo_cnn" in out and "input 224x224 px" in out and "0.5 um/px" in out
    rows = _rows(out)
    assert rows["layer3"][1:5] == ["Sequential", "64x14x14", "16", "1"]
    assert rows["layer1"][2:4] == ["16x56x56", "4"]
    assert rows["stem.conv"][2:4] == ["8x112x112", "2"]
    assert "fc" not in rows
    assert "* layer3 " in out and out.rstrip().endswith("* default layer: layer3")


def test_layers_torchvision_model_dir(tmp_path: Path) -> None:
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    net = tvm.resnet18(weights=None, num_classes=2)
    (tmp_path / "config.json").write_text(json.dumps({
        "spec_version": "1.0", "architecture": "resnet18", "num_classes": 2,
        "class_names": ["normal", "tumor"], "patch_size_pixels": 448, "spacing_um_px": 0.25,
        "transform": [{"name": "Resize", "arguments": {"size": 224}}, {"name": "ToTensor"}],
    }))
    save_file(net.state_dict(), str(tmp_path / "model.safetensors"))
    result = CliRunner().invoke(cli, ["layers", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert rows["layer3"][2:5] == ["256x14x14", "16", "2"]  # layer4.0 conv1 + downsample
    assert rows["layer3.1"][2:4] == ["256x14x14", "16"]
    assert "layer1.0.relu" not in rows  # runs twice per forward pass
    assert "(patch 448 px at 0.25 um/px)" in result.output
    assert result.output.rstrip().endswith("* default layer: layer3")
    everything = CliRunner().invoke(cli, ["layers", str(tmp_path), "--all"])
    assert "layer1.0.relu" in everything.output and "(runs 2x)" in everything.output


def test_layers_bad_model_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["layers", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert "model directory not found" in result.output
