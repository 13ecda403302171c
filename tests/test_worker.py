"""End-to-end per-slide job: alignment of the written heatmaps with planted tumour.

The slide is generated with :mod:`wsi_saliency.synthetic` (planted tumour polygons); the
model is the colour model of ``tests/_colour_model.py`` (tumour logit a known function
of colour).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from _colour_model import write_colour_model

from wsi_saliency import synthetic
from wsi_saliency.config import (
    InferenceConfig,
    ModelConfig,
    RunConfig,
    TilingConfig,
    resolve_model_defaults,
)
from wsi_saliency.errors import (
    MissingMppError,
    NoTissueError,
    SlideOpenError,
    SlideTooSmallError,
)
from wsi_saliency.models import load_model
from wsi_saliency.worker import run_slide

TILE = 64  # px at 0.5 um/px; 4 stride-2 convolutions give a 4 x 4 map (16 px cells)


@pytest.fixture(scope="module")
def colour_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_model(tmp_path_factory.mktemp("colour_model"), TILE)


PLANTED = synthetic.SyntheticSlide(
    width=3000,
    height=2600,
    mpp=0.5,
    tissue=(((150.0, 150.0), (2850.0, 200.0), (2800.0, 2450.0), (200.0, 2400.0)),),
    tumour=(
        ((500.0, 500.0), (1400.0, 520.0), (1380.0, 1300.0), (520.0, 1250.0)),
        ((1700.0, 1200.0), (2600.0, 1500.0), (2300.0, 2200.0), (1650.0, 2100.0)),
    ),
    seed=7,
)


@pytest.fixture(scope="module")
def planted_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("planted")
    return synthetic.write_slide(PLANTED, d / "planted.svs", kind="svs", compression="jpeg")


@pytest.fixture(scope="module")
def planted_run(
    planted_slide: Path, colour_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("planted_out")
    cfg = RunConfig(inference=InferenceConfig(device="cpu", batch_size=16, workers=2))
    result = run_slide(planted_slide, load_model(colour_model_dir, trust_code=True), cfg, out)
    assert result.n_tiles > 100
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def planted_mask_on_grid(shape: tuple[int, int], s: float) -> np.ndarray:
    """Planted tumour sampled at heatmap pixel centres: pixel (i, j) covers
    level-0 [j*s, (j+1)*s) x [i*s, (i+1)*s)."""
    m = synthetic.tumour_mask(PLANTED, s)
    out = np.zeros(shape, bool)
    h, w = min(shape[0], m.shape[0]), min(shape[1], m.shape[1])
    out[:h, :w] = m[:h, :w]
    return out


def test_zarr_probability_matches_planted_tumour(planted_run: Path) -> None:
    root = zarr.open_group(str(planted_run / "heatmaps.ome.zarr"), mode="r")
    attrs = root.attrs.asdict()
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    # the translation only moves pixel centres for NGFF viewers (tests/test_qupath.py)
    assert [t["type"] for t in ms["datasets"][0]["coordinateTransformations"]] == [
        "scale", "translation"
    ]
    px_um = scale[-1]
    assert px_um == pytest.approx(0.5 * TILE / 4)  # 8 um/px
    labels = [c["label"] for c in attrs["omero"]["channels"]]
    prob = np.asarray(root[ms["datasets"][0]["path"]][0])
    assert labels[0].startswith("probability")
    # map the heatmap to level 0 through the NGFF scale and the slide's MPP
    s = px_um / PLANTED.mpp
    truth = planted_mask_on_grid(prob.shape, s)
    pred = np.nan_to_num(prob, nan=0.0) >= 0.5
    d = dice(pred, truth)
    assert d >= 0.9, d


def test_ome_tiff_probability_matches_planted_tumour(planted_run: Path) -> None:
    with tifffile.TiffFile(planted_run / "probability.ome.tif") as tif:
        assert tif.is_ome
        series = tif.series[0]
        prob = series.levels[0].asarray()
        assert len(series.levels) >= 1
        pixels = tif.ome_metadata
    import xml.etree.ElementTree as ET

    root = ET.fromstring(pixels)
    px = next(el for el in root.iter() if el.tag.endswith("Pixels"))
    px_um = float(px.attrib["PhysicalSizeX"])
    assert px.attrib.get("PhysicalSizeXUnit", "µm") in ("µm", "um")
    truth = planted_mask_on_grid(prob.shape, px_um / PLANTED.mpp)
    assert dice(np.nan_to_num(prob, nan=0.0) >= 0.5, truth) >= 0.9


def test_every_output_and_run_json(planted_run: Path, colour_model_dir: Path) -> None:
    names = {p.name for p in planted_run.iterdir()}
    for expected in (
        "heatmaps.ome.zarr",
        "probability.ome.tif",
        "saliency.ome.tif",
        "tiles.geojson",
        "regions.geojson",
        "tiles.csv",
        "overlay.png",
        "run.json",
        "tissue.png",
    ):
        assert expected in names
    assert not any(n.startswith(".scratch") for n in names)
    run = json.loads((planted_run / "run.json").read_text())
    model = load_model(colour_model_dir, trust_code=True)
    cfg = resolve_model_defaults(
        RunConfig(inference=InferenceConfig(device="cpu", batch_size=16, workers=2)), model.spec
    )
    from wsi_saliency.config import config_hash
    from wsi_saliency.inputs import model_fingerprint

    assert run["config_hash"] == config_hash(cfg, model_fingerprint(model.spec))
    assert run["inputs"]["size"] > 0 and run["inputs"]["roi_sha256"] is None
    assert run["model"]["weights_sha256"] == model.spec.weights_sha256
    assert run["saliency"]["layer"] == "down4"
    assert run["saliency"]["smoothing"] == "backward-hook"
    assert run["slide"]["mpp"]["source"] == "aperio"
    assert run["tiling"]["tile_size"] == TILE
    assert set(run["timings_s"]) >= {"open", "tissue", "grid", "model", "write", "total"}
    # regions: the two planted tumours come back as two annotation polygons
    regions = json.loads((planted_run / "regions.geojson").read_text())
    assert len(regions["features"]) == 2


def test_workers_zero_gives_identical_tables(
    planted_slide: Path, colour_model_dir: Path, planted_run: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(inference=InferenceConfig(device="cpu", batch_size=7, workers=0))
    run_slide(planted_slide, load_model(colour_model_dir, trust_code=True), cfg, tmp_path)
    for name in ("tiles.csv", "tiles.geojson", "regions.geojson"):
        assert (tmp_path / name).read_bytes() == (planted_run / name).read_bytes(), name


def test_progress_reports_every_batch(
    planted_slide: Path, colour_model_dir: Path, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    cfg = RunConfig(
        tiling=TilingConfig(min_tissue=0.9),
        inference=InferenceConfig(device="cpu", batch_size=64, workers=1),
        model=ModelConfig(smoothing="none"),
    )
    res = run_slide(
        planted_slide, load_model(colour_model_dir, trust_code=True), cfg, tmp_path,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (res.n_tiles, res.n_tiles)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_bad_slide_errors(colour_model_dir: Path, tmp_path: Path) -> None:
    model = load_model(colour_model_dir, trust_code=True)
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SlideOpenError, match="bad.svs"):
        run_slide(bad, model, RunConfig(), out)
    white = synthetic.write_slide(
        synthetic.SyntheticSlide(width=1024, height=1024), tmp_path / "white.svs"
    )
    with pytest.raises(NoTissueError, match="white.svs"):
        run_slide(white, model, RunConfig(), out)
    # smaller than one tile: said before tissue detection could call it "no tissue"
    tiny = synthetic.write_slide(
        synthetic.SyntheticSlide(width=40, height=30, tissue=(((0.0, 0.0), (40.0, 0.0),
                                 (40.0, 30.0), (0.0, 30.0)),)),
        tmp_path / "tiny.svs",
    )
    with pytest.raises(SlideTooSmallError, match="tiny.svs.*smaller than one tile"):
        run_slide(tiny, model, RunConfig(), out)
    assert list(out.iterdir()) == []


def _real(name: str) -> Path:
    root = Path(os.environ.get("WSI_TEST_DATA", Path(__file__).parents[2] / "shared" / "data"))
    p = root / "slides" / name
    if not p.exists():
        pytest.skip(f"real slide {p} not available (set WSI_TEST_DATA to ../shared/data)")
    return p


@pytest.mark.real_data
def test_real_slides_end_to_end_with_demo_model(tmp_path: Path) -> None:
    model = load_model(None)
    cmu = _real("CMU-1-Small-Region.svs")
    out = tmp_path / "cmu"
    out.mkdir()
    res = run_slide(cmu, model, RunConfig(inference=InferenceConfig(device="cpu")), out)
    assert res.n_tiles > 20
    tcga = _real("TCGA-CR-7395-01A-01-TS1.svs")
    out2 = tmp_path / "tcga"
    out2.mkdir()
    with pytest.raises(MissingMppError, match="--mpp"):
        run_slide(tcga, model, RunConfig(), out2)
    from wsi_saliency.config import SlideConfig

    res2 = run_slide(
        tcga, model, RunConfig(slide=SlideConfig(mpp=0.25),
                               inference=InferenceConfig(device="cpu")), out2
    )
    assert res2.n_tiles > 10
    for d in (out, out2):
        run = json.loads((d / "run.json").read_text())
        assert len(run["outputs"]) >= 8
        for name in run["outputs"]:
            assert (d / name).exists()
        text = (d / "run.json").read_text()
        # no patient-identifying or associated-image content leaks into run.json
        assert "label" not in json.dumps(run["slide"]).lower()
        assert "macro" not in text.lower()
    assert json.loads((out2 / "run.json").read_text())["slide"]["mpp"]["source"] == "override"
