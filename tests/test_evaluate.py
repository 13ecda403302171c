"""``wsi-saliency evaluate`` and :func:`wsi_saliency.evaluation.evaluate.evaluate` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import SlideFactory
from wsi_saliency import synthetic
from wsi_saliency.cli import cli
from wsi_saliency.config import RunConfig
from wsi_saliency.errors import ConfigError, LayerNotFoundError, NoTissueError
from wsi_saliency.evaluation.evaluate import evaluate, last_block
from wsi_saliency.evaluation.report import EVALUATION_FILES, write_report
from wsi_saliency.evaluation.sampling import sample_slide
from wsi_saliency.evaluation.settings import Setting, settings_product
from wsi_saliency.models import load_model

FAST = {"n_tiles": 2, "steps": 2}


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in module.modules())


def _settings() -> list[Setting]:
    return settings_product(["layer3"], ["gradient-x-activation"], ["none", "forward-hook"])


def test_evaluate_leaves_the_callers_model_untouched(rect_svs: Path) -> None:
    model = load_model(None)
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    flags = [p.requires_grad for p in model.module.parameters()]
    training = model.module.training
    result = evaluate(model, [rect_svs], RunConfig(), _settings(), **FAST)
    after = model.module.state_dict()
    assert state.keys() == after.keys()
    for k, v in state.items():  # bitwise: parameters and buffers (BatchNorm statistics)
        assert torch.equal(v, after[k]) and v.dtype == after[k].dtype, k
    assert [p.requires_grad for p in model.module.parameters()] == flags
    assert model.module.training == training
    assert _hooks(model.module) == 0
    assert all(p.device.type == "cpu" for p in model.module.parameters())
    # the randomisation really ran (on a copy): the last step decorrelates the maps
    for r in result.settings:
        if r.sanity is not None:
            assert r.sanity.steps == ("fc", "layer4", "layer3", "layer2", "layer1", "stem")
            assert r.sanity.spearman.shape == (6, 2)


def test_randomisation_recomputes_the_maps_at_every_step(demo_svs: Path) -> None:
    """Each cascade step explains the newly randomised network (an engine runs its own copy
    of the module, made when it is built: one kept across steps would see stale weights and
    report rank correlation 1 throughout)."""
    result = evaluate(load_model(None), [demo_svs], RunConfig(),
                      settings_product(["layer3"], ["gradient-x-activation"], ["none"]),
                      n_tiles=4, steps=2, baselines=False)
    rho = result.settings[0].sanity.spearman  # (steps, tiles)
    assert np.nanmean(rho[0]) > 0.95  # fc only: the layer3 maps hardly change
    assert np.nanmean(rho[-1]) < 0.5  # everything: decorrelated


def test_evaluate_result_shapes_and_determinism(rect_svs: Path) -> None:
    model = load_model(None)
    a = evaluate(model, [rect_svs], RunConfig(), _settings(), sanity=False, **FAST)
    b = evaluate(model, [rect_svs], RunConfig(), _settings(), sanity=False, **FAST)
    labels = [r.setting.label for r in a.settings]
    assert labels == ["layer3 / gradient-x-activation / none",
                      "layer3 / gradient-x-activation / forward-hook",
                      "grad-cam @ layer4 (baseline)", "random map"]
    assert a.slides[0].indices.tolist() == b.slides[0].indices.tolist()
    for ra, rb in zip(a.settings, b.settings, strict=True):
        np.testing.assert_array_equal(ra.maps, rb.maps)
        np.testing.assert_array_equal(ra.curves.deletion, rb.curves.deletion)
        assert ra.curves.insertion.shape == (2, 3)
        assert ra.seams[0] is not None
        # Grad-CAM of "tumour" on tumour-free tissue is ReLU(negative) = 0 everywhere: 0 / 0
        assert np.isfinite(ra.seams[0].magnitude) or ra.setting.method == "grad-cam"
    assert a.settings[2].map_shape == (7, 7)
    assert a.settings[1].probability_change is not None
    assert a.settings[0].probability_change is None
    # another seed draws other tiles
    c = evaluate(model, [rect_svs], RunConfig(), _settings()[:1], seed=5, sanity=False,
                 baselines=False, **FAST)
    assert c.slides[0].indices.tolist() != a.slides[0].indices.tolist() or \
        a.slides[0].n_grid <= 2


def test_sample_is_seeded_per_slide_and_block_is_adjacent(rect_svs: Path) -> None:
    cfg = RunConfig()
    from wsi_saliency.config import resolve_model_defaults

    cfg = resolve_model_defaults(cfg, load_model(None).spec)
    s1 = sample_slide(rect_svs, cfg, 3, seed=0)
    s2 = sample_slide(rect_svs, cfg, 3, seed=0)
    np.testing.assert_array_equal(s1.tiles, s2.tiles)
    assert s1.block is not None and s1.block_shape == (3, 3)
    assert len(s1.block) == 9
    everything = sample_slide(rect_svs, cfg, 10_000, seed=0)
    assert len(everything.indices) == everything.n_grid


def test_bad_inputs_fail_before_work(rect_svs: Path, slide_factory: SlideFactory) -> None:
    model = load_model(None)
    with pytest.raises(LayerNotFoundError):
        evaluate(model, [rect_svs], RunConfig(),
                 [Setting("layer9", "gradient-x-activation", "none")], **FAST)
    with pytest.raises(ConfigError, match="target"):
        evaluate(model, [rect_svs], RunConfig(), _settings(), target="mitosis", **FAST)
    blank = slide_factory(synthetic.SyntheticSlide(width=1024, height=1024, mpp=0.5),
                          kind="tiff")
    with pytest.raises(NoTissueError):
        evaluate(model, [blank], RunConfig(), _settings(), **FAST)
    assert last_block(model) == "layer4"


def _invoke(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["evaluate", *args])
    return res.exit_code, res.output


def test_cli_writes_every_output(rect_svs: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    code, text = _invoke([str(rect_svs), "--out", str(out), "--tiles", "2", "--steps", "2",
                          "--layer", "layer2,layer3", "--smoothing", "none,backward-hook",
                          "--no-sanity", "--device", "cpu", "-q"])
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == sorted(EVALUATION_FILES)
    data = json.loads((out / "evaluation.json").read_text())
    assert len(data["settings"]) == 4 + 2
    assert data["seed"] == 0 and data["protocol"]["steps"] == 2
    assert {"torch", "numpy"} <= set(data["versions"])
    first = data["settings"][0]
    assert len(first["per_tile"]["insertion_auc"]) == 2
    assert len(first["curves"]["deletion"]["mean"]) == 3
    assert "| layer2 / gradient-x-activation / none |" in (out / "evaluation.md").read_text()
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize(("args", "message"), [
    (["--layer", "layer9"], "layer9"),
    (["--target", "mitosis"], "mitosis"),
    (["--smoothing", "sideways"], "sideways"),
    (["--method", "magic"], "magic"),
    (["--tiles", "0"], "--tiles"),
])
def test_cli_bad_options_exit_2_without_output(rect_svs: Path, tmp_path: Path,
                                               args: list[str], message: str) -> None:
    out = tmp_path / "ev"
    code, text = _invoke([str(rect_svs), "--out", str(out), *args])
    assert code == 2, text
    assert message in text
    assert len([ln for ln in text.strip().splitlines() if ln.startswith("Error")]) == 1
    assert not out.exists()


def test_cli_no_tissue_and_bad_run_folder(slide_factory: SlideFactory, tmp_path: Path) -> None:
    blank = slide_factory(synthetic.SyntheticSlide(width=1024, height=1024, mpp=0.5),
                          kind="tiff")
    code, text = _invoke([str(blank), "--out", str(tmp_path / "a")])
    assert code == 2 and "tissue" in text.lower() and not (tmp_path / "a").exists()
    run = tmp_path / "runs" / "slide"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{not json")
    code, text = _invoke([str(run), "--out", str(tmp_path / "b")])
    assert code == 2 and "run.json" in text and not (tmp_path / "b").exists()
    (run / "run.json").write_text(json.dumps({"status": "done", "config": {}}))
    code, text = _invoke([str(run), "--out", str(tmp_path / "b")])
    assert code == 2 and "cannot find the slide" in text


def test_cli_refuses_non_empty_out(rect_svs: Path, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    code, text = _invoke([str(rect_svs), "--out", str(tmp_path)])
    assert code == 2 and "--overwrite" in text
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_cli_reads_a_run_folder(rect_svs: Path, tmp_path: Path) -> None:
    """A run folder stands for its slide and its settings (layer, method)."""
    batch = tmp_path / "runs"
    run = batch / "rect"
    run.mkdir(parents=True)
    config = {"model": {"layer": "layer2", "method": "gradient"},
              "tiling": {"min_tissue": 0.25}}
    (run / "run.json").write_text(json.dumps({"status": "done", "config": config,
                                              "model": {"weights_sha256": "x"}}))
    (batch / "batch-summary.json").write_text(json.dumps({"slides": [
        {"input": str(rect_svs), "name": "rect", "output": str(run), "status": "done"}]}))
    out = tmp_path / "ev"
    code, text = _invoke([str(batch), "--out", str(out), "--tiles", "1", "--steps", "2",
                          "--smoothing", "none", "--no-sanity", "--no-baselines", "-q"])
    assert code == 0, text
    data = json.loads((out / "evaluation.json").read_text())
    assert [s["label"] for s in data["settings"]] == ["layer2 / gradient / none"]
    assert data["slides"][0]["path"] == str(rect_svs)


def test_write_report_is_complete(rect_svs: Path, tmp_path: Path) -> None:
    model = load_model(None)
    result = evaluate(model, [rect_svs], RunConfig(), _settings()[:1], sanity=True, **FAST)
    paths = write_report(result, tmp_path)
    assert {p.name for p in paths.values()} == set(EVALUATION_FILES)
    for name in ("curves.png", "sanity.png", "gallery.png"):
        assert (tmp_path / name).stat().st_size < 300_000
    md = (tmp_path / "evaluation.md").read_text()
    assert md.count("\n| ") >= 3
