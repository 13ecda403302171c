"""Precision (fp32 / bf16 / fp16 / auto), channels-last and prediction-only ``--method none``.

End to end on a generated slide with the demo model: every precision the CPU accepts
gives the same tile grid and outputs within the accuracy guard (max |dp| <= 0.01,
saliency Pearson r >= 0.99 against fp32), the precision used is recorded, and
``--method none`` writes every output except the saliency ones.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from wsi_saliency import synthetic
from wsi_saliency.cli import cli
from wsi_saliency.config import build_config
from wsi_saliency.errors import ConfigError, StitchError, WsiSaliencyWarning
from wsi_saliency.models import demo_model_dir, load_model
from wsi_saliency.saliency import SaliencyEngine
from wsi_saliency.saliency import precision as prec
from wsi_saliency.stitch import Stitcher
from wsi_saliency.types import BatchResult

CPU = torch.device("cpu")
SALIENCY_OUTPUTS = {"saliency.ome.tif"}
ALL_OUTPUTS = {
    "heatmaps.ome.zarr", "probability.ome.tif", "saliency.ome.tif", "tiles.geojson",
    "regions.geojson", "tiles.csv", "overlay.png", "tissue.png", "run.json",
}

SPEC = synthetic.SyntheticSlide(
    width=2400,
    height=1800,
    mpp=0.5,
    tissue=(((100.0, 100.0), (2300.0, 150.0), (2250.0, 1700.0), (150.0, 1650.0)),),
    tumour=(((700.0, 500.0), (1500.0, 520.0), (1450.0, 1200.0), (720.0, 1150.0)),),
    seed=3,
)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok].astype(np.float64), b[ok].astype(np.float64))[0, 1])


# ------------------------------------------------------------------ the auto rule


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return p


@pytest.mark.parametrize(
    ("flags", "native"),
    [("avx512f avx512_bf16", True), ("amx_tile amx_bf16", True), ("avx512f avx512_vnni", False)],
)
def test_native_bf16_is_read_from_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    if not torch.backends.mkldnn.is_available():
        pytest.skip("PyTorch built without oneDNN: bf16 is never native")
    assert prec.cpu_has_native_bf16(_cpuinfo(tmp_path, flags)) is native
    assert prec.cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: native)
    assert prec.resolve_precision("auto", CPU) == expected
    assert prec.resolve_precision("fp32", CPU) == "fp32"
    assert prec.resolve_precision("bf16", CPU) == "bf16"  # asked for: allowed either way


def test_bad_precisions_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="fp16 is for CUDA GPUs only.*bf16 or fp32"):
        prec.resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="'half' is not one of auto, fp32, bf16, fp16"):
        prec.resolve_precision("half", CPU)
    with pytest.raises(ConfigError, match="bf16 is not supported on MPS"):
        prec.resolve_precision("bf16", torch.device("mps"))
    assert prec.resolve_precision("auto", torch.device("mps")) == "fp32"
    assert prec.precision_record("fp16", "cpu") == {"requested": "fp16", "used": None}
    assert prec.precision_record("fp32", "cpu") == {"requested": "fp32", "used": "fp32"}


# ------------------------------------------------------------------ config


def test_precision_config_key_and_deprecated_autocast() -> None:
    assert build_config().inference.precision == "auto"
    assert build_config({"inference": {"precision": "bf16"}}).inference.precision == "bf16"
    with pytest.raises(ConfigError, match=r"x.yaml: inference.precision: unknown value 'bf32'"):
        build_config({"inference": {"precision": "bf32"}}, source="x.yaml")
    with pytest.warns(WsiSaliencyWarning, match="autocast is replaced by inference.precision"):
        cfg = build_config({"inference": {"autocast": True}}, source="old.yaml")
    assert cfg.inference.precision == "auto"
    with pytest.warns(WsiSaliencyWarning, match="--precision fp32"):
        cfg = build_config(None, {"inference.autocast": False})
    assert cfg.inference.precision == "fp32"
    with pytest.warns(WsiSaliencyWarning):  # an explicit precision wins over the old key
        cfg = build_config({"inference": {"autocast": False, "precision": "bf16"}})
    assert cfg.inference.precision == "bf16"
    with pytest.raises(ConfigError, match="autocast = 'yes' must be true or false"):
        build_config({"inference": {"autocast": "yes"}})
    # a run.json written before the change still resumes, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from wsi_saliency.config import config_from_dict

        assert config_from_dict({"inference": {"autocast": False}}).inference.precision == "fp32"


# ------------------------------------------------------------------ engine


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return synthetic.sample_patches(synthetic.demo_slide_spec(), 12, 224, 0.5, seed=5)[0]


def test_every_cpu_precision_within_the_guard_and_attributions_in_fp32(
    patches: np.ndarray,
) -> None:
    model = load_model(demo_model_dir())
    ref = SaliencyEngine(model, method="gradient-x-activation", precision="fp32",
                         channels_last=False)
    p_ref, m_ref = ref.run(patches)
    assert not ref.channels_last and ref.precision == "fp32"
    for precision, cl in (("fp32", True), ("bf16", False), ("bf16", True)):
        eng = SaliencyEngine(model, method="gradient-x-activation", precision=precision,
                             channels_last=cl)
        assert eng.precision == precision and eng.channels_last is cl
        _, attr = eng.attributions(patches)
        assert attr.dtype == torch.float32  # reduced and accumulated in fp32
        p, m = eng.run(patches)
        assert p.dtype == np.float32 and m.dtype == np.float32
        assert np.abs(p - p_ref).max() <= 0.01, precision
        assert _pearson(m, m_ref) >= 0.99, precision
        if precision == "fp32":
            np.testing.assert_allclose(p, p_ref, atol=1e-5)
            np.testing.assert_allclose(m, m_ref, rtol=1e-3, atol=1e-5 * np.abs(m_ref).max())
        else:  # bf16 really ran in bf16: not bit-identical to fp32
            assert not np.array_equal(m, m_ref)


def test_channels_last_switches_itself_off_for_a_model_that_cannot_run_it() -> None:
    import dataclasses

    from wsi_saliency.models import LoadedModel

    class Flatten(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(4 * 16 * 16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 16)
            return self.fc(y.view(y.shape[0], -1))  # view fails on channels-last

    base = load_model(demo_model_dir())
    spec = dataclasses.replace(base.spec, patch_size=32, saliency_layer="conv")
    eng = SaliencyEngine(LoadedModel(spec=spec, module=Flatten()), precision="fp32")
    assert not eng.channels_last
    probs, maps = eng.run(np.zeros((2, 32, 32, 3), np.uint8))
    assert probs.shape == (2, 2) and maps.shape == (2, *eng.map_shape)


# ------------------------------------------------------------------ stitcher


def test_stitcher_without_saliency_has_no_saliency_channel(
    tmp_path: Path,
) -> None:
    from wsi_saliency.tiling import full_grid
    from wsi_saliency.types import Mpp, SlideInfo

    info = SlideInfo(
        path="s.svs", backend="test", dimensions=(SPEC.width, SPEC.height),
        level_dimensions=((SPEC.width, SPEC.height),), level_downsamples=(1.0,),
        mpp=Mpp(0.5, 0.5, "override"),
    )
    grid = full_grid(info, tile_size=224, spacing=0.5)
    st = Stitcher(tmp_path / "s", grid, (14, 14), ("normal", "tumor"), saliency=False)
    assert st.channel_names == ("probability_tumor", "probability_normal")
    idx = np.arange(2, dtype=np.int64)
    probs = np.array([[0.2, 0.8], [0.9, 0.1]], np.float32)
    with pytest.raises(StitchError, match="without saliency.*maps=None"):
        st.add(BatchResult(indices=idx, probabilities=probs, maps=np.zeros((2, 14, 14),
                                                                             np.float32)))
    st.add(BatchResult(indices=idx, probabilities=probs, maps=None))
    hm = st.finalize()
    assert not hm.has_saliency
    assert np.isclose(hm.heatmap[0, 0, 0], 0.8) and np.isclose(hm.heatmap[1, 0, 0], 0.2)
    with_sal = Stitcher(tmp_path / "t", grid, (14, 14), ("normal", "tumor"))
    with pytest.raises(StitchError, match="no saliency maps.*saliency=False"):
        with_sal.add(BatchResult(indices=idx, probabilities=probs, maps=None))


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("precision_slide")
    return synthetic.write_slide(SPEC, d / "prec.svs", kind="svs", compression="jpeg")


def _run(slide: Path, out: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(
        cli,
        ["run", str(slide), "--out", str(out), "--device", "cpu", "--quiet", *args],
        catch_exceptions=False,
    )
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def runs(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, args in (
        ("fp32", ("--precision", "fp32")),
        ("bf16", ("--precision", "bf16")),
        ("none", ("--precision", "fp32", "--method", "none")),
    ):
        root = tmp_path_factory.mktemp(f"run_{name}")
        code, text = _run(slide, root, *args)
        assert code == 0, text
        out[name] = root
    return out


def _tiles(path: Path) -> list[dict[str, str]]:
    with open(path / "prec" / "tiles.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _heat(path: Path) -> tuple[list[str], np.ndarray]:
    root = zarr.open_group(str(path / "prec" / "heatmaps.ome.zarr"), mode="r")
    ms = root.attrs["multiscales"][0]
    labels = [c["label"] for c in root.attrs["omero"]["channels"]]
    return labels, np.asarray(root[ms["datasets"][0]["path"]])


def test_precisions_give_the_same_grid_and_outputs_within_the_guard(
    runs: dict[str, Path],
) -> None:
    t32, t16 = _tiles(runs["fp32"]), _tiles(runs["bf16"])
    assert len(t32) > 20
    assert [(r["x"], r["y"], r["width"], r["height"]) for r in t32] == [
        (r["x"], r["y"], r["width"], r["height"]) for r in t16
    ]
    dp = max(abs(float(a["prob_tumor"]) - float(b["prob_tumor"])) for a, b in zip(t32, t16, strict=True))
    assert dp <= 0.01
    (lab32, h32), (lab16, h16) = _heat(runs["fp32"]), _heat(runs["bf16"])
    assert lab32 == lab16 and h32.shape == h16.shape
    assert np.array_equal(np.isnan(h32[0]), np.isnan(h16[0]))
    assert _pearson(h32[1], h16[1]) >= 0.99
    for name in ("fp32", "bf16"):
        run = json.loads((runs[name] / "prec" / "run.json").read_text())
        assert run["inference"]["precision"] == name
        assert run["inference"]["precision_requested"] == name
        stem = run["inference"]["stem_slices"]  # the demo model's stem, sliced on the CPU
        assert stem["modules"][0] == "stem.conv" and stem["tiles_per_slice"] >= 1
        assert run["config"]["inference"]["precision"] == name
        summary = json.loads((runs[name] / "batch-summary.json").read_text())
        assert summary["precision"] == {"requested": name, "used": name}
    # precision decides outputs: it is part of the resume hash
    r32 = json.loads((runs["fp32"] / "prec" / "run.json").read_text())
    r16 = json.loads((runs["bf16"] / "prec" / "run.json").read_text())
    assert r32["config_hash"] != r16["config_hash"]


def test_method_none_writes_every_output_except_saliency(runs: dict[str, Path]) -> None:
    sal = runs["fp32"] / "prec"
    none = runs["none"] / "prec"
    assert {p.name for p in sal.iterdir()} == ALL_OUTPUTS
    assert {p.name for p in none.iterdir()} == ALL_OUTPUTS - SALIENCY_OUTPUTS
    # the same tiles and the same probabilities (same fp32 network, no backward pass)
    t_sal, t_none = _tiles(runs["fp32"]), _tiles(runs["none"])
    assert [r["x"] + "," + r["y"] for r in t_sal] == [r["x"] + "," + r["y"] for r in t_none]
    for a, b in zip(t_sal, t_none, strict=True):
        assert abs(float(a["prob_tumor"]) - float(b["prob_tumor"])) <= 1e-5
    assert not any(k.startswith("saliency") for k in t_none[0])
    assert {"saliency_mean", "saliency_max"} <= set(t_sal[0])
    # heatmaps: probability channels only, on the same grid as with saliency
    lab_s, h_s = _heat(runs["fp32"])
    lab_n, h_n = _heat(runs["none"])
    assert lab_n == [lab for lab in lab_s if lab != "saliency"]
    assert h_n.shape[1:] == h_s.shape[1:]
    np.testing.assert_allclose(h_n[0], h_s[0], atol=1e-5, equal_nan=True)
    feats = json.loads((none / "tiles.geojson").read_text())["features"]
    assert len(feats) == len(t_none)
    assert not any(k.startswith("saliency") for k in feats[0]["properties"]["measurements"])
    assert json.loads((none / "regions.geojson").read_text())["features"]
    run = json.loads((none / "run.json").read_text())
    assert run["saliency"]["method"] == "none"
    assert run["saliency"]["display_scaling"] is None
    assert "saliency.ome.tif" not in run["outputs"]


def test_fp16_on_cpu_is_a_usage_error_before_any_output(slide: Path, tmp_path: Path) -> None:
    code, text = _run(slide, tmp_path / "out", "--precision", "fp16")
    assert code == 2
    assert "fp16 is for CUDA GPUs only" in text
    assert not (tmp_path / "out").exists()


def test_torchscript_model_runs_prediction_only(slide: Path, tmp_path: Path) -> None:
    """A TorchScript model cannot explain, but ``--method none`` runs it: one heatmap
    pixel per tile stride, no saliency outputs."""
    from wsi_saliency.models.architectures import DemoCNN

    d = tmp_path / "ts_model"
    d.mkdir()
    cfg = json.loads((demo_model_dir() / "config.json").read_text())
    cfg.pop("saliency_layer", None)
    (d / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    with pytest.warns(FutureWarning):  # torch.jit.trace is deprecated in torch >= 2.9
        traced = torch.jit.trace(DemoCNN(num_classes=2).eval(), torch.zeros(1, 3, 224, 224))
    traced.save(str(d / "torchscript_model.pt"))
    out = tmp_path / "out"
    code, text = _run(slide, out, "--model", str(d), "--method", "grad-cam")
    assert code == 2 and "TorchScript" in text and not out.exists()
    code, text = _run(slide, out, "--model", str(d), "--method", "none", "--smoothing", "none")
    assert code == 0, text
    files = {p.name for p in (out / "prec").iterdir()}
    assert files == ALL_OUTPUTS - SALIENCY_OUTPUTS
    run = json.loads((out / "prec" / "run.json").read_text())
    assert run["saliency"]["map_shape"] == [1, 1]
    assert run["heatmap"]["pixel_size_um"] == pytest.approx(224 * 0.5)
