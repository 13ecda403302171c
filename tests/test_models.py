"""Model directories: config.json, weights formats and safety, architectures, demo model."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from wsi_saliency.errors import InvalidModelError, UnsafeWeightsError, WsiSaliencyError
from wsi_saliency.models import (
    ARCHITECTURES,
    DemoCNN,
    build_architecture,
    demo_model_dir,
    load_model,
    parse_config,
    runs_model_code,
)
from wsi_saliency.models.train_demo import layout
from wsi_saliency.models.weights import sha256_file
from wsi_saliency.synthetic import sample_patches

WSINFER_CONFIG: dict[str, Any] = {
    "spec_version": "1.0",
    "architecture": "demo_cnn",
    "num_classes": 2,
    "class_names": ["notumor", "tumor"],
    "patch_size_pixels": 350,
    "spacing_um_px": 0.25,
    "transform": [
        {"name": "Resize", "arguments": {"size": 224}},
        {"name": "ToTensor"},
        {"name": "Normalize", "arguments": {"mean": [0.7, 0.5, 0.6], "std": [0.1, 0.2, 0.1]}},
    ],
}


def _model_dir(tmp_path: Path, config: dict[str, Any] | None = None,
               state: dict[str, torch.Tensor] | None = None, fmt: str = "safetensors",
               net: nn.Module | None = None) -> Path:
    d = tmp_path / "model"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config or WSINFER_CONFIG))
    if state is None:
        torch.manual_seed(0)
        state = (net or DemoCNN(num_classes=2)).state_dict()
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(d / "model.safetensors"))
    elif fmt == "pt":
        torch.save(state, d / "model.pt")
    return d


# ------------------------------------------------------------------ config.json


def test_wsinfer_config_with_resize(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    m = load_model(d)
    s = m.spec
    assert (s.architecture, s.num_classes, s.class_names) == ("demo_cnn", 2, ("notumor", "tumor"))
    assert (s.patch_size, s.spacing, s.input_size) == (350, 0.25, 224)
    assert s.mean == (0.7, 0.5, 0.6) and s.std == (0.1, 0.2, 0.1)
    assert s.tumor_class == 1 and s.saliency_layer is None and not s.torchscript
    assert s.weights_sha256 == sha256_file(d / "model.safetensors")
    assert s.source == str(d.resolve()) and s.weights_file == "model.safetensors"
    assert s.name == "model"
    assert not m.module.training
    assert not any(p.requires_grad for p in m.module.parameters())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"num_classes": None}, "missing required key"),
        ({"class_names": ["a"]}, "has 1 names but num_classes is 2"),
        ({"class_names": ["a", "a"]}, "unique"),
        ({"saliency_layers": "layer3"}, "did you mean 'saliency_layer'"),
        ({"spec_version": "2.0"}, "spec_version"),
        ({"patch_size_pixels": 0}, "patch_size_pixels"),
        ({"spacing_um_px": -1}, "spacing_um_px"),
        ({"transform": [{"name": "CenterCrop"}]}, "CenterCrop"),
        ({"transform": [{"name": "Resize", "arguments": {"size": [224, 200]}}]}, "square"),
        ({"transform": [{"name": "Normalize", "arguments": {"mean": [0.5]}}]}, "std"),
        ({"tumor_class": 5}, "tumor_class"),
        ({"tumor_class": "cancer"}, "cancer"),
        ({"weights": "../x.safetensors"}, "inside the model directory"),
    ],
)
def test_config_errors(change: dict[str, Any], match: str) -> None:
    cfg = dict(WSINFER_CONFIG)
    for k, v in change.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    with pytest.raises(InvalidModelError, match=match) as info:
        parse_config(cfg, where="m/config.json")
    assert "m/config.json" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_tumor_class_resolution() -> None:
    cfg = dict(WSINFER_CONFIG, class_names=["Tumour", "other"])
    assert parse_config(cfg).tumor_class == 0
    assert parse_config(dict(WSINFER_CONFIG, tumor_class="notumor")).tumor_class == 0
    three = dict(WSINFER_CONFIG, num_classes=3, class_names=["a", "b", "c"])
    with pytest.raises(InvalidModelError, match="tumor_class"):
        parse_config(three)
    assert parse_config(dict(three, tumor_class=2)).tumor_class == 2
    # unrelated extra keys are accepted (WSInfer allows them)
    assert parse_config(dict(WSINFER_CONFIG, license="CC0")).num_classes == 2


def test_missing_directory_config_and_weights(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="model directory not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModelError, match="config.json not found"):
        load_model(tmp_path / "empty")
    d = _model_dir(tmp_path, fmt="none")
    with pytest.raises(InvalidModelError, match="no weights file"):
        load_model(d)
    (d / "a.pth").write_bytes(b"x")
    (d / "b.pth").write_bytes(b"x")
    with pytest.raises(InvalidModelError, match="several weights files"):
        load_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(InvalidModelError, match="not valid JSON"):
        load_model(d)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, state=DemoCNN(num_classes=3).state_dict())
    with pytest.raises(InvalidModelError, match="fc.weight.*num_classes"):
        load_model(d)
    d2 = _model_dir(tmp_path / "x", state={"foo": torch.zeros(1)})
    with pytest.raises(InvalidModelError, match="missing"):
        load_model(d2)


def test_unknown_saliency_layer_lists_closest(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, dict(WSINFER_CONFIG, saliency_layer="layer_3"))
    with pytest.raises(InvalidModelError, match=r"closest: \['layer3'"):
        load_model(d)


# ------------------------------------------------------------------ weights formats


def test_state_dict_pt_and_checkpoint_wrappers(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = DemoCNN(num_classes=2)
    state = net.state_dict()
    x = torch.randn(1, 3, 224, 224)
    net.eval()
    with torch.no_grad():
        ref = net(x)
    for i, payload in enumerate([
        state,
        {"state_dict": state, "epoch": 3},
        {f"module.{k}": v for k, v in state.items()},
    ]):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps(WSINFER_CONFIG))
        torch.save(payload, d / "weights.pth")
        m = load_model(d)
        assert m.spec.weights_file == "weights.pth"
        with torch.no_grad():
            assert torch.equal(m.module(x), ref)


def test_safetensors_preferred_over_pt(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    torch.save({"junk": torch.zeros(1)}, d / "model.pt")
    assert load_model(d).spec.weights_file == "model.safetensors"
    d2 = _model_dir(tmp_path / "b", dict(WSINFER_CONFIG, weights="model.pt"))
    torch.save(DemoCNN().state_dict(), d2 / "model.pt")
    assert load_model(d2).spec.weights_file == "model.pt"


class _Payload:
    """Unpickling this calls open(path, 'w'): it creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_pickled_payload_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran.txt"
    d = _model_dir(tmp_path, fmt="none")
    state = dict(DemoCNN().state_dict())
    state["evil"] = _Payload(marker)
    torch.save(state, d / "model.pt")
    with pytest.raises(UnsafeWeightsError, match="model.pt: refused to load.*io.open") as info:
        load_model(d)
    assert isinstance(info.value, InvalidModelError) and isinstance(info.value, WsiSaliencyError)
    assert "\n" not in str(info.value) and "safetensors" in str(info.value)
    assert not marker.exists()
    # the payload is real: unpickling calls what __reduce__ names, which writes the marker
    fn, args = _Payload(marker).__reduce__()
    fn(*args).close()
    assert marker.exists()


def test_torchscript_is_prediction_only(tmp_path: Path) -> None:
    from wsi_saliency.errors import SaliencyUnsupportedError
    from wsi_saliency.saliency import SaliencyEngine

    d = _model_dir(tmp_path, fmt="none")
    torch.manual_seed(0)
    net = DemoCNN().eval()
    with pytest.warns(FutureWarning):
        traced = torch.jit.trace(net, torch.zeros(1, 3, 224, 224))
    traced.save(str(d / "torchscript_model.pt"))
    m = load_model(d)
    assert m.spec.torchscript and m.spec.weights_file == "torchscript_model.pt"
    with pytest.raises(SaliencyUnsupportedError, match="provide config.json.*safetensors"):
        SaliencyEngine(m)
    probs = SaliencyEngine(m, method=None, smoothing="none").predict(
        np.zeros((1, 350, 350, 3), np.uint8))
    assert probs.shape == (1, 2)


# ------------------------------------------------------------------ architectures


def test_torchvision_architecture(tmp_path: Path) -> None:
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    net = tvm.resnet18(weights=None, num_classes=2)
    d = _model_dir(tmp_path, dict(WSINFER_CONFIG, architecture="resnet18"), net=net)
    m = load_model(d)
    assert type(m.module).__name__ == "ResNet" and m.module.get_submodule("fc").out_features == 2
    d2 = _model_dir(tmp_path / "b", dict(WSINFER_CONFIG, architecture="torchvision/resnet18"),
                    net=net)
    assert type(load_model(d2).module).__name__ == "ResNet"


def test_file_and_module_callables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = (
        "import torch.nn as nn\n"
        "def build(num_classes, width=4):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(width, num_classes))\n"
    )
    d = tmp_path / "m"
    d.mkdir()
    (d / "arch.py").write_text(src)
    net = build_architecture("arch.py:build", 2, model_dir=d, kwargs={"width": 6},
                             trust_code=True)
    assert isinstance(net, nn.Sequential)
    assert net[3].out_features == 2 and net[0].out_channels == 6
    # package.module:callable
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "inhouse_arch_mod.py").write_text(src)
    monkeypatch.syspath_prepend(str(pkg))
    net2 = build_architecture("inhouse_arch_mod:build", 3, trust_code=True)
    assert isinstance(net2, nn.Sequential)
    assert net2[3].out_features == 3
    with pytest.raises(InvalidModelError, match="not found"):
        build_architecture("missing.py:build", 2, model_dir=d, trust_code=True)
    with pytest.raises(InvalidModelError, match="defines no 'nope'"):
        build_architecture("arch.py:nope", 2, model_dir=d, trust_code=True)
    with pytest.raises(InvalidModelError, match="cannot import module"):
        build_architecture("no_such_module_xyz:build", 2, trust_code=True)


def test_file_callable_model_dir_loads(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "arch.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes, width=4):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(width, num_classes))\n"
    )
    net = build_architecture("arch.py:build", 2, model_dir=d, kwargs={"width": 6},
                             trust_code=True)
    cfg = dict(WSINFER_CONFIG, architecture="arch.py:build", architecture_kwargs={"width": 6})
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(net.state_dict(), str(d / "model.safetensors"))
    m = load_model(d, trust_code=True)
    assert isinstance(m.module, nn.Sequential) and m.module[0].out_channels == 6


def test_unknown_architecture_and_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidModelError, match="not one of .*demo_cnn"):
        build_architecture("no_such_net", 2)
    with pytest.raises(InvalidModelError, match="prefix"):
        build_architecture("keras/resnet", 2)
    # timm is optional: without it the error says so
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(InvalidModelError, match=r"timm not installed \(pip install timm\)"):
        build_architecture("timm/vit_tiny_patch16_224", 2)
    # with a timm module, its names are built through timm.create_model(pretrained=False)
    calls: list[tuple[str, dict[str, Any]]] = []
    fake = types.ModuleType("timm")
    fake.is_model = lambda name: name == "fake_timm_net"  # type: ignore[attr-defined]

    def create_model(name: str, **kw: Any) -> nn.Module:
        calls.append((name, kw))
        return nn.Linear(3, kw["num_classes"])

    fake.create_model = create_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", fake)
    net = build_architecture("fake_timm_net", 5)
    assert isinstance(net, nn.Linear) and net.out_features == 5
    assert calls == [("fake_timm_net", {"pretrained": False, "num_classes": 5})]


# ------------------------------------------------------------------ code in model folders

PAYLOAD_SRC = '''
from pathlib import Path
Path({marker!r}).write_text("ran")
import torch.nn as nn


def build(num_classes, width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))
'''
TRUST_HINT = r"load it only if you trust it, with --trust-model-code \(config: model.trust_code"


def _payload_model(tmp_path: Path, architecture: str, **config: Any) -> Path:
    """A model folder whose architecture writes ``tmp_path/PWNED`` when imported or run."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "payload.py").write_text(PAYLOAD_SRC.format(marker=str(tmp_path / "PWNED")))
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    save_file(net.state_dict(), str(d / "model.safetensors"))
    cfg = dict(WSINFER_CONFIG, architecture=architecture, **config)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _user_modules(path: Path) -> list[str]:
    return [n for n, m in sys.modules.items()
            if str(getattr(m, "__file__", None) or "").startswith(str(path))]


def test_file_callable_refused_without_trust_and_never_imported(tmp_path: Path) -> None:
    d = _payload_model(tmp_path, "payload.py:build")
    config_json = re.escape(str(d.resolve() / "config.json"))
    message = (rf"^{config_json}: architecture 'payload\.py:build' runs Python code from the "
               rf"model folder; {TRUST_HINT}: true\)$")
    with pytest.raises(InvalidModelError, match=message):
        load_model(d)
    with pytest.raises(InvalidModelError, match=TRUST_HINT):
        build_architecture("payload.py:build", 2, model_dir=d)
    assert not (tmp_path / "PWNED").exists()
    assert _user_modules(d) == []
    # the user opts in: the file runs and the model loads
    m = load_model(d, trust_code=True)
    assert (tmp_path / "PWNED").read_text() == "ran"
    assert isinstance(m.module, nn.Sequential) and m.module[3].out_features == 2


def test_module_callable_refused_without_trust_and_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "wsi_payload_mod.py").write_text(
        PAYLOAD_SRC.format(marker=str(tmp_path / "PWNED")))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, "wsi_payload_mod", raising=False)
    d = _payload_model(tmp_path, "wsi_payload_mod:build")
    with pytest.raises(InvalidModelError,
                       match=r"'wsi_payload_mod:build' runs Python code from module "
                             rf"'wsi_payload_mod'; {TRUST_HINT}"):
        load_model(d)
    assert "wsi_payload_mod" not in sys.modules
    assert not (tmp_path / "PWNED").exists()
    assert load_model(d, trust_code=True).spec.architecture == "wsi_payload_mod:build"
    assert (tmp_path / "PWNED").exists()


def test_os_system_in_config_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    d = _payload_model(tmp_path, "os:system",
                       architecture_kwargs={"command": f"touch {marker}"})
    with pytest.raises(InvalidModelError, match=rf"'os:system' runs Python code from module "
                                                rf"'os'; {TRUST_HINT}"):
        load_model(d)
    assert not marker.exists()
    # trusted, it is called, and what it returns is still checked to be a network
    with pytest.raises(InvalidModelError, match="returned int, not a torch.nn.Module"):
        load_model(d, trust_code=True)
    assert marker.exists()


def test_checkpoint_kwargs_need_trust(tmp_path: Path) -> None:
    for kwargs in ({"checkpoint_path": "/tmp/evil.pth"}, {"pretrained": True},
                   {"pretrained_cfg_overlay": {"file": "/tmp/evil.pth"}}):
        with pytest.raises(InvalidModelError, match=f"{sorted(kwargs)}.*{TRUST_HINT}"):
            build_architecture("timm/vit_tiny_patch16_224", 2, kwargs=kwargs)
        with pytest.raises(InvalidModelError, match=TRUST_HINT):
            build_architecture("resnet18", 2, kwargs=kwargs)


def test_named_and_torchscript_models_need_no_trust(tmp_path: Path) -> None:
    assert runs_model_code("payload.py:build") and runs_model_code("os:system")
    assert not any(runs_model_code(n) for n in ("demo_cnn", "resnet18", "timm/resnet18"))
    assert load_model(None).spec.architecture == "demo_cnn"
    # a TorchScript archive never builds the named architecture, so it is not run
    marker = tmp_path / "PWNED"
    d = _payload_model(tmp_path, "os:system", architecture_kwargs={"command": f"touch {marker}"})
    (d / "model.safetensors").unlink()
    with pytest.warns(FutureWarning):
        traced = torch.jit.trace(DemoCNN().eval(), torch.zeros(1, 3, 224, 224))
    traced.save(str(d / "torchscript_model.pt"))
    assert load_model(d).spec.torchscript
    assert not marker.exists()


def _cli(*args: str | Path) -> Any:
    from click.testing import CliRunner

    from wsi_saliency.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def colour_payload(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(model dir of the colour model whose file writes PWNED, a small slide, PWNED)."""
    from _colour_model import write_colour_model

    from wsi_saliency import synthetic

    d = write_colour_model(tmp_path / "model", 64)
    marker = tmp_path / "PWNED"
    code = (d / "colour_model.py").read_text()
    (d / "colour_model.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n{code}")
    slide = synthetic.SyntheticSlide(
        width=768, height=512, mpp=0.5,
        tissue=(((50.0, 50.0), (700.0, 60.0), (690.0, 460.0), (60.0, 450.0)),),
        tumour=(((200.0, 150.0), (450.0, 160.0), (440.0, 380.0), (210.0, 370.0)),),
        seed=7,
    )
    (tmp_path / "in").mkdir()
    path = synthetic.write_slide(slide, tmp_path / "in" / "s.svs")
    return d, path, marker


def test_cli_run_refuses_model_code_without_the_flag(
    tmp_path: Path, colour_payload: tuple[Path, Path, Path]
) -> None:
    model, slide, marker = colour_payload
    out = tmp_path / "out"
    common = [slide, "--out", out, "--model", model, "--device", "cpu", "--workers", "0", "-q"]
    res = _cli("run", *common)
    assert res.exit_code == 2, res.output
    assert "architecture 'colour_model.py:build' runs Python code from the model folder" in (
        res.output)
    assert "--trust-model-code" in res.output
    assert not marker.exists()
    assert not out.exists() or list(out.rglob("*")) == []
    res = _cli("layers", model)
    assert res.exit_code == 1 and "--trust-model-code" in res.output and not marker.exists()
    # opting in runs it
    res = _cli("run", *common, "--trust-model-code")
    assert res.exit_code == 0, res.output
    assert marker.exists()
    assert (out / "s" / "run.json").is_file() and (out / "s" / "tiles.csv").is_file()
    res = _cli("layers", model, "--trust-model-code")
    assert res.exit_code == 0 and "* default layer: down4" in res.output


# ------------------------------------------------------------------ the demo model


def test_demo_model_spec_and_files() -> None:
    d = demo_model_dir()
    m = load_model(None)
    s = m.spec
    assert s.architecture == "demo_cnn" and "demo_cnn" in ARCHITECTURES
    assert (s.patch_size, s.spacing, s.input_size) == (224, 0.5, 224)
    assert s.class_names == ("normal", "tumor") and s.tumor_class == 1
    assert s.saliency_layer == "layer3"
    weights = d / "model.safetensors"
    assert weights.stat().st_size <= 2 * 1024 * 1024
    assert s.weights_sha256 == sha256_file(weights)
    card = (d / "MODEL_CARD.md").read_text()
    assert "not a medical model" in card
    assert "python -m wsi_saliency.models.train_demo" in card
    assert s.weights_sha256 in card
    # strided convolutions only (no pooling layer before the head)
    assert not any(isinstance(x, (nn.MaxPool2d, nn.AvgPool2d)) for x in m.module.modules())


def test_demo_model_accuracy_on_heldout_slide() -> None:
    m = load_model(None)
    from wsi_saliency.saliency import SaliencyEngine

    patches, labels = sample_patches(layout(203), 64, 224, 0.5, seed=11)
    probs = SaliencyEngine(m, method=None).predict(patches)
    acc = float((probs.argmax(1) == labels).mean())
    assert acc >= 0.9, acc
