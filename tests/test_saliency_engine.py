"""SaliencyEngine: batching, methods, smoothing on real architectures, hook hygiene."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _spec import tiny_spec
from torch import nn

from wsi_saliency.errors import (
    ConfigError,
    LayerNotFoundError,
    SaliencyUnsupportedError,
    WsiSaliencyError,
)
from wsi_saliency.models import DemoCNN, LoadedModel, load_model
from wsi_saliency.saliency import (
    METHODS,
    SaliencyEngine,
    default_layer,
    list_layers,
    total_variation,
    tv_reduction,
)
from wsi_saliency.synthetic import demo_slide_spec, sample_patches


def _no_hooks(module: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        and not m._backward_pre_hooks
        for m in module.modules()
    )


@pytest.fixture(scope="module")
def demo() -> LoadedModel:
    return load_model(None)


@pytest.fixture(scope="module")
def demo_tiles() -> tuple[np.ndarray, np.ndarray]:
    """8 patches (4 tumour, 4 normal) of the demo slide at the model's spacing."""
    return sample_patches(demo_slide_spec(), 8, 224, 0.5, seed=5)



@pytest.fixture(scope="module")
def resnet18() -> LoadedModel:
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    net = tvm.resnet18(weights=None, num_classes=2).eval()
    return LoadedModel(spec=tiny_spec(224, architecture="resnet18"), module=net)


# ------------------------------------------------------------------ contract


def test_demo_engine_shapes_and_defaults(demo: LoadedModel, demo_tiles: tuple) -> None:
    tiles, labels = demo_tiles
    eng = SaliencyEngine(demo)
    assert eng.layer == "layer3" and eng.map_shape == (14, 14)
    assert eng.method == "gradient" and eng.smoothing == "backward-hook"
    assert eng.target == 1 and eng.device.type == "cpu"
    probs, maps = eng.run(tiles)
    assert probs.dtype == np.float32 and probs.shape == (8, 2)
    assert maps.dtype == np.float32 and maps.shape == (8, 14, 14)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == labels).mean() >= 0.85
    assert (maps < 0).any()  # raw and signed: no abs / ReLU / rescaling
    gxa = SaliencyEngine(demo, method="gradient-x-activation").run(tiles)[1]
    assert (gxa < 0).any() and (gxa > 0).any()
    np.testing.assert_allclose(eng.predict(tiles), probs, rtol=1e-4, atol=1e-6)
    # torch input gives the same
    p2, m2 = eng.run(torch.from_numpy(tiles))
    np.testing.assert_allclose(m2, maps, rtol=1e-5, atol=1e-8)
    # callers running under no_grad or inference_mode still get gradients
    with torch.inference_mode():
        np.testing.assert_allclose(eng.run(tiles)[1], maps, rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        np.testing.assert_allclose(eng.run(tiles)[1], maps, rtol=1e-5, atol=1e-8)
    # empty batch
    p0, m0 = eng.run(tiles[:0])
    assert p0.shape == (0, 2) and m0.shape == (0, 14, 14)


def test_batched_equals_one_at_a_time(demo: LoadedModel, demo_tiles: tuple) -> None:
    tiles, _ = demo_tiles
    for method in ("gradient", "gradient-x-activation", "grad-cam"):
        eng = SaliencyEngine(demo, method=method)
        probs, maps = eng.run(tiles)
        for i in range(len(tiles)):
            p1, m1 = eng.run(tiles[i:i + 1])
            np.testing.assert_allclose(p1[0], probs[i], rtol=1e-4, atol=1e-6)
            scale = np.abs(maps[i]).max()
            np.testing.assert_allclose(m1[0], maps[i], rtol=1e-4, atol=1e-5 * scale)


def test_gradient_matches_autograd_reference(demo: LoadedModel, demo_tiles: tuple) -> None:
    """Map = channel mean of dlogit_tumour/dA at layer3, computed here without the engine."""
    tiles, _ = demo_tiles
    eng = SaliencyEngine(demo, smoothing="none")
    _, maps = eng.run(tiles[:2])
    x = eng.preprocess(tiles[:2])
    net = demo.module
    assert isinstance(net, DemoCNN)
    acts: list[torch.Tensor] = []
    h = net.layer3.register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            logits = net(xg)
            (g,) = torch.autograd.grad(logits[:, 1].sum(), acts[0])
    finally:
        h.remove()
    np.testing.assert_allclose(maps, g.mean(1).numpy(), rtol=1e-4, atol=1e-7)


def test_resize_when_tile_size_differs(demo: LoadedModel, demo_tiles: tuple) -> None:
    tiles, _ = demo_tiles
    eng = SaliencyEngine(demo)
    big = np.repeat(np.repeat(tiles[:2], 2, axis=1), 2, axis=2)  # 448 px, same content
    p, m = eng.run(big)
    assert m.shape == (2, 14, 14)
    p_ref = eng.predict(tiles[:2])
    np.testing.assert_allclose(p, p_ref, atol=0.05)


def test_all_methods_and_smoothings_run(demo: LoadedModel, demo_tiles: tuple) -> None:
    tiles, _ = demo_tiles
    plain = SaliencyEngine(demo, smoothing="none").predict(tiles[:2])
    for method in METHODS:
        for smoothing in ("none", "backward-hook", "forward-hook"):
            eng = SaliencyEngine(demo, method=method, smoothing=smoothing, ig_steps=4)
            probs, maps = eng.run(tiles[:2])
            assert maps.shape == (2, 14, 14) and np.isfinite(maps).all(), (method, smoothing)
            if method == "grad-cam":
                assert (maps >= 0).all()
            if smoothing != "forward-hook":
                np.testing.assert_allclose(probs, plain, rtol=1e-4, atol=1e-6)
            assert _no_hooks(eng.module) and _no_hooks(demo.module)
    # forward-hook smoothing changes the network, hence the predictions
    fwd = SaliencyEngine(demo, smoothing="forward-hook").predict(tiles[:2])
    assert not np.allclose(fwd, plain, atol=1e-6)


def test_integrated_gradients_completeness(demo: LoadedModel, demo_tiles: tuple) -> None:
    """Sum of layer IG attributions ~ logit(x) - logit(baseline) (Captum, Gauss-Legendre)."""
    tiles, _ = demo_tiles
    eng = SaliencyEngine(demo, method="integrated-gradients", smoothing="none", ig_steps=64)
    logits, attr = eng.attributions(tiles[:2])
    with torch.no_grad():
        base = demo.module(torch.zeros(1, 3, 224, 224))[0, 1]
    delta = logits[:, 1] - base
    np.testing.assert_allclose(attr.sum(dim=(1, 2, 3)).numpy(), delta.numpy(), rtol=0.05,
                               atol=0.05 * float(delta.abs().max()))


def test_target_by_name_and_index(demo: LoadedModel, demo_tiles: tuple) -> None:
    tiles, _ = demo_tiles
    m_t = SaliencyEngine(demo, target="tumor").run(tiles[:2])[1]
    m_1 = SaliencyEngine(demo, target=1).run(tiles[:2])[1]
    m_0 = SaliencyEngine(demo, target="normal").run(tiles[:2])[1]
    np.testing.assert_array_equal(m_t, m_1)
    # two classes: d(l0)/dA and d(l1)/dA differ
    assert not np.allclose(m_0, m_1)
    with pytest.raises(ConfigError, match="tumour"):
        SaliencyEngine(demo, target="tumour")
    with pytest.raises(ConfigError):
        SaliencyEngine(demo, target=2)


def test_bad_arguments(demo: LoadedModel) -> None:
    with pytest.raises(ConfigError, match="did you mean 'gradient'"):
        SaliencyEngine(demo, method="gradients")
    with pytest.raises(ConfigError, match="smoothing"):
        SaliencyEngine(demo, smoothing="bilinear")
    with pytest.raises(ConfigError, match="runs 2 times|feature map"):
        SaliencyEngine(demo, layer="fc")
    eng = SaliencyEngine(demo)
    with pytest.raises(ValueError, match="uint8"):
        eng.run(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        eng.run(np.zeros((1, 224, 224), np.uint8))
    with pytest.raises(ConfigError, match="fp16 is for CUDA"):
        SaliencyEngine(demo, precision="fp16")
    with pytest.raises(ConfigError, match="precision 'half'"):
        SaliencyEngine(demo, precision="half")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            SaliencyEngine(demo, device="cuda")
    assert _no_hooks(demo.module)


def test_layer_by_path_and_unknown_layer(demo: LoadedModel, resnet18: LoadedModel) -> None:
    assert SaliencyEngine(demo, layer="layer2").map_shape == (28, 28)
    assert SaliencyEngine(demo, layer="layer3.1.conv").map_shape == (14, 14)
    assert SaliencyEngine(resnet18, layer="layer3.1").map_shape == (14, 14)
    assert SaliencyEngine(resnet18).layer == "layer3"
    with pytest.raises(LayerNotFoundError, match="layer3") as info:
        SaliencyEngine(demo, layer="layer_3")
    assert isinstance(info.value, KeyError) and isinstance(info.value, WsiSaliencyError)
    assert "'layer_3' not found" in str(info.value)
    # DeepLift cannot handle torchvision's shared ReLU modules: refused up front
    with pytest.raises(SaliencyUnsupportedError, match="deeplift.*relu.*runs 2 times"):
        SaliencyEngine(resnet18, method="deeplift")
    # a module that runs twice (torchvision BasicBlock.relu) is refused
    with pytest.raises(ConfigError, match="runs 2 times"):
        SaliencyEngine(resnet18, layer="layer3.0.relu")
    assert _no_hooks(demo.module) and _no_hooks(resnet18.module)


def test_list_layers(demo: LoadedModel, resnet18: LoadedModel) -> None:
    infos = {i.name: i for i in list_layers(demo)}
    assert infos["layer3"].shape == (64, 14, 14) and infos["layer3"].stride == 16
    assert infos["layer3"].strided_convs_after == 1
    assert infos["layer1"].stride == 4 and infos["layer4"].strided_convs_after == 0
    assert "fc" not in infos  # not a feature map
    all_infos = list_layers(resnet18, candidates_only=False)
    assert default_layer(all_infos) == "layer3"
    relu = next(i for i in all_infos if i.name == "layer1.0.relu")
    assert relu.calls == 2 and not relu.is_candidate
    # outermost stride-16 block with a strided (depthwise) convolution after it
    tvm = pytest.importorskip("torchvision.models")
    mobilenet = tvm.mobilenet_v2(weights=None, num_classes=2).eval()
    assert default_layer(list_layers(mobilenet, 224, candidates_only=False)) == "features.13"
    with pytest.raises(ValueError, match="input_size"):
        list_layers(mobilenet)


# ------------------------------------------------------------------ smoothing on networks


def _tv(model: LoadedModel, layer: str, smoothing: str, tiles: np.ndarray) -> float:
    eng = SaliencyEngine(model, layer=layer, smoothing=smoothing)
    _, attr = eng.attributions(tiles)
    return float(total_variation(attr).mean())


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer3"])
def test_backward_hook_reduces_tv_demo(demo: LoadedModel, demo_tiles: tuple, layer: str) -> None:
    tiles, _ = demo_tiles
    plain = _tv(demo, layer, "none", tiles)
    hooked = _tv(demo, layer, "backward-hook", tiles)
    assert hooked < plain, (layer, plain, hooked)
    assert tv_reduction(hooked, plain) > 0.1


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer3"])
def test_backward_hook_reduces_tv_resnet18(resnet18: LoadedModel, demo_tiles: tuple,
                                           layer: str) -> None:
    tiles, _ = demo_tiles
    plain = _tv(resnet18, layer, "none", tiles[:4])
    hooked = _tv(resnet18, layer, "backward-hook", tiles[:4])
    assert hooked < plain, (layer, plain, hooked)


def test_backward_hook_logits_bitwise_equal(demo: LoadedModel, resnet18: LoadedModel,
                                            demo_tiles: tuple) -> None:
    tiles, _ = demo_tiles
    for model in (demo, resnet18):
        eng_plain = SaliencyEngine(model, smoothing="none")
        eng_hook = SaliencyEngine(model, smoothing="backward-hook")
        x = eng_plain.preprocess(tiles[:2])
        with torch.no_grad():
            ref = eng_plain.module(x)  # batch norms folded: bitwise against the engine's net
            torch.testing.assert_close(ref, model.module(x), rtol=1e-4, atol=1e-4)
        l_plain, a_plain = eng_plain.attributions(tiles[:2])
        l_hook, a_hook = eng_hook.attributions(tiles[:2])
        assert torch.equal(l_plain, ref) and torch.equal(l_hook, ref)
        assert not torch.allclose(a_plain, a_hook)


# ------------------------------------------------------------------ hook hygiene


class Exploding(nn.Module):
    """Raises inside the model after the explained layer when asked to."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("exploded inside the model")
        return x


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.body = nn.Conv2d(4, 8, 3, stride=1, padding=1)
        self.boom = Exploding()
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.down(self.boom(self.body(self.stem(x)))))
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return out


def test_no_hooks_left_after_success_error_and_unknown_layer() -> None:
    torch.manual_seed(0)
    net = TinyNet().eval()
    model = LoadedModel(spec=tiny_spec(32), module=net)
    tiles = np.full((2, 32, 32, 3), 128, np.uint8)
    for smoothing in ("none", "backward-hook", "forward-hook"):
        for method in ("gradient", "integrated-gradients"):
            eng = SaliencyEngine(model, layer="body", method=method, smoothing=smoothing,
                                 ig_steps=2)
            _, maps = eng.run(tiles)
            assert maps.shape == (2, 16, 16)
            assert _no_hooks(eng.module)
            eng.module.boom.armed = True
            try:
                with pytest.raises(RuntimeError, match="exploded"):
                    eng.run(tiles)
                with pytest.raises(RuntimeError, match="exploded"):
                    eng.predict(tiles)
            finally:
                eng.module.boom.armed = False
            assert _no_hooks(eng.module) and _no_hooks(net)
    with pytest.raises(LayerNotFoundError):
        SaliencyEngine(model, layer="bodyy")
    assert _no_hooks(net)


def test_torchscript_model_refuses_saliency(tmp_path: object) -> None:
    torch.manual_seed(0)
    net = TinyNet().eval()
    with pytest.warns(FutureWarning):  # torch.jit.trace is deprecated in torch >= 2.9
        traced = torch.jit.trace(net, torch.zeros(1, 3, 32, 32))
    model = LoadedModel(spec=dataclasses.replace(tiny_spec(32), torchscript=True,
                                                 source="/m", weights_file="ts.pt"),
                        module=traced)
    with pytest.raises(SaliencyUnsupportedError, match="config.json.*safetensors"):
        SaliencyEngine(model)
    eng = SaliencyEngine(model, method=None, smoothing="none")
    probs = eng.predict(np.zeros((2, 32, 32, 3), np.uint8))
    assert probs.shape == (2, 2)
    with pytest.raises(SaliencyUnsupportedError):
        eng.run(np.zeros((1, 32, 32, 3), np.uint8))


def test_strided_convs_after_follow_the_gradient_path() -> None:
    """ResNet's downsample branch runs after conv1 but is parallel to it: the hooks that
    act on a layer's gradient are the strided convolutions fed by that layer."""
    tvm = pytest.importorskip("torchvision.models")
    from wsi_saliency.saliency.layers import trace_layers

    after = {i.name: i.strided_convs_after for i in trace_layers(tvm.resnet18().eval(), 224)}
    # strided: conv1, and conv1 + downsample.0 of layer2.0, layer3.0 and layer4.0
    assert after["conv1"] == 6 and after["layer1"] == 6
    assert after["layer2.0.conv1"] == 4  # layer3/4 convs only, not its own downsample
    assert after["layer2.0.downsample.0"] == 4
    assert after["layer2"] == 4 and after["layer3"] == 2 and after["layer4"] == 0


def test_engine_leaves_the_callers_model_untouched() -> None:
    """Training flag, requires_grad and device of the caller's module stay as they were."""
    torch.manual_seed(0)
    net = TinyNet().train()
    model = LoadedModel(spec=tiny_spec(32), module=net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    tiles = np.full((2, 32, 32, 3), 128, np.uint8)
    for smoothing in ("none", "backward-hook", "forward-hook"):
        eng = SaliencyEngine(model, layer="body", method="gradient", smoothing=smoothing)
        eng.run(tiles)
        eng.predict(tiles)
        assert eng.module is not net and not eng.module.training
        assert not any(p.requires_grad for p in eng.module.parameters())
    assert net.training and all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
    assert all(p.grad is None for p in net.parameters())
    assert _no_hooks(net)
