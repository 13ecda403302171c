"""Bilinear surrogates: shapes, exactness, training, folders, engine and CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from wsi_saliency import synthetic
from wsi_saliency.cli import cli
from wsi_saliency.errors import (
    ConfigError,
    InvalidModelError,
    SaliencyUnsupportedError,
    SurrogateError,
)
from wsi_saliency.models import DemoCNN, LoadedModel, load_model
from wsi_saliency.saliency import SaliencyEngine
from wsi_saliency.saliency.surrogate import (
    BilinearSurrogate,
    SurrogateSet,
    conv_output_size,
    load_surrogates,
    save_surrogates,
    surrogate_targets,
    surrogates_substituted,
)
from wsi_saliency.saliency.surrogate_fidelity import fidelity
from wsi_saliency.saliency.surrogate_train import TrainSettings, distill, train_surrogates

from conftest import rect_polygon  # isort: skip


# ----------------------------------------------------------------------------- helpers
def _io(module: nn.Module, names: tuple[str, ...], x: torch.Tensor
        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    got: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    mods = dict(module.named_modules())
    handles = [mods[n].register_forward_hook(
        lambda _m, a, o, n=n: got.__setitem__(n, (a[0], o))) for n in names]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return got


def _hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _tiny(size: int = 64, width: int = 4, seed: int = 0) -> LoadedModel:
    """The demo architecture, narrower and at 64 px, seeded random weights."""
    torch.manual_seed(seed)
    spec = dataclasses.replace(load_model(None).spec, patch_size=size, input_size=size,
                               weights_sha256="0" * 64)
    return LoadedModel(spec=spec, module=DemoCNN(width=width).eval())


def _tiles(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size // 8, size // 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(base, 8, axis=1), 8, axis=2) // 2 + rng.integers(
        0, 128, (n, size, size, 3), dtype=np.uint8)


def _resnet18() -> nn.Module:
    tv = pytest.importorskip("torchvision", reason="torchvision not installed")
    torch.manual_seed(0)
    return tv.models.resnet18(num_classes=2).eval()


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("arch", ["demo", "resnet18"])
@pytest.mark.parametrize("size", [224, 97, 161, 130])
def test_surrogate_output_shape_equals_conv_output_shape(arch: str, size: int) -> None:
    module = load_model(None).module if arch == "demo" else _resnet18()
    surrogates = SurrogateSet.for_module(module, 224)
    expected = (["layer1.0.conv", "layer2.0.conv", "layer3.0.conv", "layer4.0.conv"]
                if arch == "demo" else
                [f"layer{i}.0.{c}" for i in (2, 3, 4) for c in ("conv1", "downsample.0")])
    assert list(surrogates.names) == expected  # every strided conv but the stem
    got = _io(module, surrogates.names, torch.randn(2, 3, size, size))
    for name, (inp, out) in got.items():
        with torch.no_grad():
            y = surrogates[name](inp)
        assert y.shape == out.shape, (name, size)
        conv = dict(module.named_modules())[name]
        assert conv_output_size(conv, *inp.shape[-2:]) == tuple(out.shape[-2:])
    with torch.no_grad(), surrogates_substituted(module, surrogates):
        assert module(torch.randn(1, 3, size, size)).shape == (1, 2)
    assert _hook_count(module) == 0


def test_non_square_padding_dilation_shapes() -> None:
    for conv in (nn.Conv2d(4, 6, 3, stride=2, padding=0), nn.Conv2d(4, 6, 5, stride=2,
                 padding=2, dilation=2), nn.Conv2d(4, 6, 2, stride=2),
                 nn.Conv2d(4, 6, 3, stride=3, padding="valid")):
        s = BilinearSurrogate(conv)
        for h, w in ((31, 17), (32, 32), (9, 40)):
            x = torch.randn(1, 4, h, w)
            assert s(x).shape == conv(x).shape


# ----------------------------------------------------------------------------- exactness
class _Exact(nn.Module):
    """stem -> nearest 2x upsampling -> 1x1 stride-2 conv -> ReLU -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.down = nn.Conv2d(4, 6, 1, stride=2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.down(self.up(self.stem(x))))
        out: torch.Tensor = self.fc(self.pool(y).flatten(1))
        return out


def _reproduce_1x1(s: BilinearSurrogate, conv: nn.Conv2d) -> None:
    """conv1 = the 1x1 conv as the centre tap of a 3x3 kernel, conv2 = identity."""
    assert conv.bias is not None and s.conv1.bias is not None and s.conv2.bias is not None
    with torch.no_grad():
        s.conv1.weight.zero_()
        s.conv1.weight[:, :, 1, 1] = conv.weight[:, :, 0, 0]
        s.conv1.bias.copy_(conv.bias)
        s.conv2.weight.zero_()
        for c in range(conv.out_channels):
            s.conv2.weight[c, c, 1, 1] = 1.0
        s.conv2.bias.zero_()


def test_surrogate_reproducing_a_1x1_stride2_conv_gives_the_original_model() -> None:
    torch.manual_seed(0)
    model = _Exact().eval()
    surrogates = SurrogateSet.for_module(model, 16)
    assert surrogates.names == ("down",)
    _reproduce_1x1(surrogates["down"], model.down)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        feat = model.up(model.stem(x))
        with surrogates_substituted(model, surrogates):
            sub = model(x)
            sub_feat = model.down(feat)
    # the conv's input is constant on 2x2 blocks (nearest upsampling), so the bilinear
    # half-way resize equals the subsampling: the substituted model is the original
    torch.testing.assert_close(sub_feat, model.down(feat), rtol=0, atol=1e-6)
    torch.testing.assert_close(sub, ref, rtol=0, atol=1e-6)
    # where the input is not block-constant the two differ (the resize averages)
    rough = torch.randn(1, 4, 32, 32)
    with torch.no_grad(), surrogates_substituted(model, surrogates):
        assert not torch.allclose(model.down(rough), nn.functional.conv2d(
            rough, model.down.weight, model.down.bias, stride=2), atol=1e-3)
    assert _hook_count(model) == 0


def test_hooks_removed_after_an_exception() -> None:
    model = load_model(None).module
    surrogates = SurrogateSet.for_module(model, 224)
    with pytest.raises(RuntimeError), surrogates_substituted(model, surrogates):
        model(torch.randn(1, 5, 64, 64))  # wrong channel count inside the network
    assert _hook_count(model) == 0


# ----------------------------------------------------------------------------- discovery
class _Grouped(nn.Module):
    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)  # depthwise
        self.gc = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)
        self.shared = shared
        self.fc = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.dw(torch.relu(self.stem(x))))
        if self.shared:
            y = self.dw(y)
        y = self.gc(y)
        out: torch.Tensor = self.fc(y.mean(dim=(2, 3)))
        return out


def test_grouped_convolutions_get_grouped_surrogates() -> None:
    torch.manual_seed(0)
    model = _Grouped().eval()
    surrogates = SurrogateSet.for_module(model, 33, warm_start=False)
    assert surrogates.names == ("dw", "gc")
    assert surrogates["dw"].conv1.groups == 8 and surrogates["gc"].conv2.groups == 4
    x = torch.randn(2, 3, 33, 33)
    for name, (inp, out) in _io(model, surrogates.names, x).items():
        assert surrogates[name](inp).shape == out.shape
    opt = torch.optim.Adam(surrogates.parameters(), lr=1e-2)
    got = _io(model, surrogates.names, x)
    losses = []
    for _ in range(30):
        loss = sum(nn.functional.l1_loss(s(got[n][0]), got[n][1]) for n, s in surrogates.items())
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        losses.append(float(loss.detach()))  # type: ignore[union-attr]
    assert losses[-1] < 0.5 * losses[0]


def test_shared_strided_conv_and_no_strided_conv_are_refused() -> None:
    with pytest.raises(SaliencyUnsupportedError, match="'dw' runs 2 times"):
        surrogate_targets(_Grouped(shared=True).eval(), 33)
    flat = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3), nn.Flatten())
    with pytest.raises(SaliencyUnsupportedError, match="no strided convolution after the stem"):
        surrogate_targets(flat, 32)


# ----------------------------------------------------------------------------- training
def test_loss_falls_on_a_fixed_batch_and_the_classifier_is_untouched() -> None:
    model = _tiny()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    tiles = _tiles(8)
    res = train_surrogates(model, tiles, TrainSettings(epochs=15, batch_size=8, lr=3e-3,
                                                       device="cpu", warm_start=False))
    assert len(res.step_losses) == 15 and len(res.epoch_losses) == 15
    assert res.step_losses[-1] < 0.5 * res.step_losses[0]
    after = model.module.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # bitwise: parameters and buffers
        assert torch.equal(v, after[k]), k
    assert not any(p.requires_grad for p in model.module.parameters())
    assert not model.module.training


def test_training_is_deterministic_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    model = _tiny()
    tiles = _tiles(12)
    settings = TrainSettings(epochs=2, batch_size=4, seed=3, device="cpu")
    a = train_surrogates(model, tiles, settings)
    b = train_surrogates(model, tiles, settings)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_surrogates(model, tiles, settings, work_dir=work, key="k", stop_after_steps=4)
    assert (work / "checkpoint.pt").is_file()
    c = train_surrogates(model, tiles, settings, work_dir=work, key="k")
    assert c.resumed and not a.resumed
    assert c.step_losses == a.step_losses
    for k, v in a.surrogates.state_dict().items():
        assert torch.equal(v, b.surrogates.state_dict()[k]), k
        assert torch.equal(v, c.surrogates.state_dict()[k]), k
    # another seed gives other weights (the comparison above can fail)
    d = train_surrogates(model, tiles, dataclasses.replace(settings, seed=4))
    assert not torch.equal(d.surrogates.state_dict()["surrogates.layer2__0__conv.conv2.weight"],
                           a.surrogates.state_dict()["surrogates.layer2__0__conv.conv2.weight"])
    # a checkpoint of other settings is not resumed
    e = train_surrogates(model, tiles, settings, work_dir=work, key="other")
    assert not e.resumed


def test_tiles_are_split_evenly_across_slides() -> None:
    from wsi_saliency.saliency.surrogate_tiles import _quotas, _round_robin

    assert _quotas([3, 10, 10], 15) == [3, 6, 6]
    assert _quotas([10, 10, 10], 10) == [4, 3, 3]
    assert _quotas([0, 5], 5) == [0, 5]
    order = _round_robin(np.array([0, 0, 0, 0, 1, 1]), np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(6))
    assert sorted(np.array([0, 0, 0, 0, 1, 1])[order[:4]].tolist()) == [0, 0, 1, 1]


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="--epochs"):
        TrainSettings(epochs=0).check()
    with pytest.raises(ConfigError, match="bf16 needs a CUDA"):
        train_surrogates(_tiny(), _tiles(2), TrainSettings(device="cpu", precision="bf16"))


def test_saved_surrogates_round_trip_and_refuse_other_networks(tmp_path: Path) -> None:
    model = _tiny()
    s = SurrogateSet.for_module(model.module, 64)
    path = tmp_path / "surrogate.safetensors"
    save_surrogates(s, path)
    back = load_surrogates(path, model.module, 64)
    for k, v in s.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    with pytest.raises(InvalidModelError, match="train a surrogate for this model"):
        load_surrogates(path, DemoCNN(width=8), 64)
    with pytest.raises(InvalidModelError, match="not a bilinear surrogate"):
        load_surrogates(load_model(None).spec.source + "/model.safetensors", model.module, 64)


# ----------------------------------------------------------------------------- folders
@pytest.fixture(scope="module")
def small_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2048 x 1536 at 0.5 um/px: tissue with a tumour (about 30 tissue tiles of 224 px)."""
    spec = synthetic.SyntheticSlide(
        width=2048, height=1536, mpp=0.5, tissue=(rect_polygon(100, 100, 1950, 1450),),
        tumour=(rect_polygon(900, 300, 1700, 1200),), seed=5)
    path = tmp_path_factory.mktemp("surrogate_slides") / "small.svs"
    synthetic.write_slide(spec, path, kind="svs")
    return path


@pytest.fixture(scope="module")
def demo_surrogate(small_svs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickly trained surrogate folder for the demo model (copied weights)."""
    out = tmp_path_factory.mktemp("surrogate") / "demo-surrogate"
    distill(load_model(None), [str(small_svs)], out,
            TrainSettings(epochs=2, batch_size=8, device="cpu"), n_tiles=16, n_heldout=8)
    return out


def test_surrogate_folder_is_a_model_folder(demo_surrogate: Path) -> None:
    names = sorted(p.name for p in demo_surrogate.iterdir())
    assert names == ["SURROGATE_CARD.md", "config.json", "loss_curve.png", "model.safetensors",
                     "surrogate.json", "surrogate.safetensors"]
    demo = load_model(None)
    loaded = load_model(demo_surrogate)
    assert loaded.spec.weights_sha256 == demo.spec.weights_sha256
    assert loaded.surrogate is not None and loaded.surrogate.layers == (
        "layer1.0.conv", "layer2.0.conv", "layer3.0.conv", "layer4.0.conv")
    card = json.loads((demo_surrogate / "surrogate.json").read_text())
    assert card["training"]["tiles"] == 16 and card["training"]["epochs"] == 2
    assert card["fidelity"]["tiles"] == 8
    assert set(card["fidelity"]["layers"]) == set(loaded.surrogate.layers)
    assert set(card["tv"]) == {"none", "backward-hook", "bilinear"}
    assert card["tv"]["bilinear"] < card["tv"]["none"]  # no checkerboard
    assert card["sampling"]["per_slide"] and sum(card["sampling"]["per_class"].values()) == 24
    md = (demo_surrogate / "SURROGATE_CARD.md").read_text()
    assert "top-class agreement" in md and "loss_curve.png" in md
    # a surrogate changes the model fingerprint (resume redoes bilinear runs)
    from wsi_saliency.inputs import model_fingerprint

    assert model_fingerprint(loaded.spec) != model_fingerprint(demo.spec)


def test_engine_bilinear_uses_the_surrogate(demo_surrogate: Path, small_svs: Path) -> None:
    tiles = _tiles(4, size=224)
    model = load_model(demo_surrogate)
    eng = SaliencyEngine(model, method="gradient", smoothing="bilinear")
    probs, maps = eng.run(tiles)
    assert probs.shape == (4, 2) and maps.shape == (4, 14, 14)
    assert _hook_count(model.module) == 0
    plain = SaliencyEngine(load_model(demo_surrogate), method="gradient", smoothing="none")
    p0, m0 = plain.run(tiles)
    assert not np.allclose(maps, m0)  # the surrogate path, not the plain one
    # same as substituting by hand
    sur = load_surrogates(demo_surrogate / "surrogate.safetensors", model.module, 224)
    x = eng.preprocess(tiles)
    with torch.no_grad(), surrogates_substituted(model.module, sur):
        ref = torch.softmax(model.module(x), 1).numpy()
    np.testing.assert_allclose(eng.predict(tiles), ref, atol=1e-6)
    np.testing.assert_allclose(probs, ref, atol=1e-5)


def test_bilinear_without_surrogate_or_for_other_weights_is_one_line_error(
        demo_surrogate: Path, tmp_path: Path) -> None:
    with pytest.raises(SurrogateError, match="smoothing 'bilinear' needs a trained surrogate"):
        SaliencyEngine(load_model(None), smoothing="bilinear")
    other = tmp_path / "other"
    shutil.copytree(demo_surrogate, other)
    torch.manual_seed(1)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in DemoCNN().state_dict().items()},
              str(other / "model.safetensors"))
    with pytest.raises(SurrogateError, match="trained for classifier weights") as exc:
        SaliencyEngine(load_model(other), smoothing="bilinear")
    assert "\n" not in str(exc.value)
    SaliencyEngine(load_model(other), smoothing="backward-hook")  # other modes still load
    altered = tmp_path / "altered"
    shutil.copytree(demo_surrogate, altered)
    save_surrogates(SurrogateSet.for_module(load_model(None).module, 224),
                    altered / "surrogate.safetensors")  # untrained: another file
    with pytest.raises(SurrogateError, match="differs from the"):
        SaliencyEngine(load_model(altered), smoothing="bilinear")


def test_referenced_weights(small_svs: Path, tmp_path: Path) -> None:
    src = tmp_path / "model"
    shutil.copytree(load_model(None).spec.source, src)
    out = tmp_path / "linked"
    distill(load_model(src), [str(small_svs)], out, TrainSettings(epochs=1, batch_size=8,
            device="cpu"), n_tiles=8, n_heldout=4, copy_weights=False, with_tv=False)
    card = json.loads((out / "surrogate.json").read_text())
    assert card["base_weights"]["file"] == str((src / "model.safetensors").resolve())
    assert not (out / "model.safetensors").exists()
    SaliencyEngine(load_model(out), smoothing="bilinear")
    torch.manual_seed(2)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in DemoCNN().state_dict().items()},
              str(src / "model.safetensors"))
    with pytest.raises(SurrogateError, match="trained for classifier weights"):
        SaliencyEngine(load_model(out), smoothing="bilinear")
    (src / "model.safetensors").unlink()
    with pytest.raises(InvalidModelError, match="are missing"):
        load_model(out)


# ----------------------------------------------------------------------------- CLI
def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_surrogate_then_run_bilinear_writes_every_output_aligned(
        small_svs: Path, tmp_path: Path) -> None:
    sur = tmp_path / "sur"
    res = invoke("surrogate", "demo", small_svs, "--out", sur, "--epochs", "1", "--tiles", "8",
                 "--heldout", "4", "--batch-size", "8", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "top-class agreement" in res.output and "--smoothing bilinear" in res.output
    assert not (sur / ".surrogate-work").exists()
    res = invoke("surrogate", "demo", small_svs, "--out", sur, "--epochs", "1")
    assert res.exit_code == 2 and "already holds a surrogate" in res.output
    outs = {}
    for mode in ("backward-hook", "bilinear"):
        outs[mode] = tmp_path / f"run-{mode}"
        res = invoke("run", small_svs, "--out", outs[mode], "--model", sur, "--smoothing", mode,
                     "--device", "cpu", "-q")
        assert res.exit_code == 0, res.output
    a, b = (outs[m] / "small" for m in ("backward-hook", "bilinear"))
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in ("heatmaps.ome.zarr", "probability.ome.tif", "saliency.ome.tif", "tiles.geojson",
              "regions.geojson", "tiles.csv", "overlay.png", "tissue.png", "run.json"):
        assert (b / n).exists(), n
    import csv

    import zarr

    def boxes(folder: Path) -> list[tuple[str, ...]]:
        with open(folder / "tiles.csv", newline="") as fh:
            return [(r["x"], r["y"], r["width"], r["height"]) for r in csv.DictReader(fh)]

    assert boxes(a) == boxes(b) and len(boxes(a)) > 10
    za, zb = zarr.open_group(str(a / "heatmaps.ome.zarr"), mode="r"), zarr.open_group(
        str(b / "heatmaps.ome.zarr"), mode="r")
    assert za.attrs["multiscales"] == zb.attrs["multiscales"]
    sa, sb = np.asarray(za["0"]), np.asarray(zb["0"])
    assert sa.shape == sb.shape
    np.testing.assert_array_equal(np.isnan(sa), np.isnan(sb))  # same coverage
    assert not np.allclose(np.nan_to_num(sa[1]), np.nan_to_num(sb[1]))  # other saliency
    run = json.loads((b / "run.json").read_text())
    assert run["saliency"]["smoothing"] == "bilinear"


def test_run_bilinear_without_surrogate_is_a_usage_error_before_any_slide(
        small_svs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = invoke("run", small_svs, "--out", out, "--smoothing", "bilinear", "--device", "cpu")
    assert res.exit_code == 2
    assert "smoothing 'bilinear' needs a trained surrogate" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_surrogate_refusals(small_svs: Path, tmp_path: Path) -> None:
    res = invoke("surrogate", "demo", small_svs, "--out", tmp_path / "s", "--epochs", "0")
    assert res.exit_code == 2 and "--epochs must be >= 1" in res.output
    res = invoke("surrogate", "demo", tmp_path / "missing.svs", "--out", tmp_path / "s")
    assert res.exit_code == 2 and "missing.svs" in res.output
    res = invoke("surrogate", "demo", small_svs, "--out", tmp_path / "s", "--tiles", "5000")
    assert res.exit_code == 2 and "fewer than the" in res.output


def test_fidelity_of_a_reproducing_surrogate_is_perfect() -> None:
    torch.manual_seed(0)
    model = _Exact().eval()
    spec = dataclasses.replace(load_model(None).spec, patch_size=16, input_size=16)
    loaded = LoadedModel(spec=spec, module=model)
    s = SurrogateSet.for_module(model, 16)
    _reproduce_1x1(s["down"], model.down)
    fid = fidelity(loaded, s, _tiles(6, size=16))
    assert fid["top_class_agreement"] == 1.0 and fid["max_abs_dp"] < 1e-6
    assert fid["layers"]["down"]["l1"] < 1e-6


def test_evaluate_scores_bilinear_through_the_surrogate_network(
    demo_surrogate: Path, small_svs: Path
) -> None:
    """`evaluate --smoothing bilinear` scores perturbed tiles with the surrogate network (as
    a run reports its probabilities), randomises a copy that keeps the surrogate, and leaves
    the caller's model and the engine's hooks behind."""
    from wsi_saliency.config import RunConfig
    from wsi_saliency.evaluation.evaluate import evaluate
    from wsi_saliency.evaluation.settings import Setting

    model = load_model(demo_surrogate)
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    settings = [Setting(layer="layer3", method="gradient-x-activation", smoothing=s)
                for s in ("backward-hook", "bilinear")]
    result = evaluate(model, [small_svs], RunConfig(), settings, n_tiles=4, seed=0, steps=4,
                      baselines=False, sanity=True)
    by = {r.setting.smoothing: r for r in result.settings}
    assert by["backward-hook"].probability_change is None
    change = by["bilinear"].probability_change
    # a 2-epoch surrogate: p changes (scored through the surrogates), by how much is untested
    assert change is not None and 0 < change["max_abs_dp"] <= 1
    assert not np.allclose(by["bilinear"].maps, by["backward-hook"].maps)
    assert by["bilinear"].sanity is not None and len(by["bilinear"].sanity.steps) == 6
    for k, v in state.items():
        assert torch.equal(v, model.module.state_dict()[k]), k
    assert _hook_count(model.module) == 0
