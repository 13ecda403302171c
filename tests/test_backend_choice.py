"""Backend choice end to end: ``auto`` picks per file in one batch and records it in
``run.json``; pyvips gives the same outputs as tiffslide; a forced pyvips on a file it
cannot read fails that slide alone with a one-line reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _colour_model import write_colour_model

from wsi_saliency import synthetic
from wsi_saliency.batch import run_batch
from wsi_saliency.config import InferenceConfig, RunConfig, SlideConfig
from wsi_saliency.models import LoadedModel, load_model

TILE = 64
SPEC = synthetic.SyntheticSlide(
    width=1024,
    height=768,
    mpp=0.5,
    tissue=(((100.0, 80.0), (950.0, 100.0), (930.0, 700.0), (90.0, 680.0)),),
    tumour=(((300.0, 250.0), (600.0, 260.0), (590.0, 520.0), (310.0, 500.0)),),
    seed=5,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    d = write_colour_model(tmp_path_factory.mktemp("colour_model"), TILE)
    return load_model(d, trust_code=True)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same content as a JPEG SVS and as a JPEG 2000 tiled TIFF."""
    d = tmp_path_factory.mktemp("slides")
    svs = synthetic.write_slide(SPEC, d / "jpeg.svs", kind="svs", compression="jpeg", tile=128)
    j2k = d / "j2k.tiff"
    tifffile.imwrite(
        j2k,
        synthetic.render_region(SPEC, 0, 0, SPEC.width, SPEC.height),
        tile=(128, 128),
        photometric="rgb",
        compression="jpeg2000",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    return svs, j2k


def _cfg(backend: str) -> RunConfig:
    return RunConfig(
        slide=SlideConfig(backend=backend),
        inference=InferenceConfig(device="cpu", batch_size=8, workers=2),
    )


def test_auto_chooses_per_file_and_records_it(
    slides: tuple[Path, Path], model: LoadedModel, tmp_path: Path
) -> None:
    svs, j2k = slides
    summary = run_batch([svs, j2k], tmp_path, _cfg("auto"), model)
    assert [r.status for r in summary.records] == ["done", "done"]
    used = {
        r.name: json.loads((Path(r.output) / "run.json").read_text())["slide"]["backend"]
        for r in summary.records
        if r.output
    }
    assert used["jpeg"] == "pyvips"
    assert used["j2k"] in ("tiffslide", "openslide")  # pyvips has no JPEG 2000 here


def test_pyvips_outputs_equal_tiffslide_outputs(
    slides: tuple[Path, Path], model: LoadedModel, tmp_path: Path
) -> None:
    svs, _ = slides
    for backend in ("pyvips", "tiffslide"):
        summary = run_batch([svs], tmp_path / backend, _cfg(backend), model)
        assert summary.records[0].status == "done"
    a, b = (tmp_path / x / "jpeg" for x in ("pyvips", "tiffslide"))
    for name in ("tiles.csv", "tiles.geojson", "regions.geojson"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert json.loads((a / "run.json").read_text())["slide"]["backend"] == "pyvips"


def test_forced_pyvips_fails_only_the_unreadable_slide(
    slides: tuple[Path, Path], model: LoadedModel, tmp_path: Path
) -> None:
    svs, j2k = slides
    summary = run_batch([svs, j2k], tmp_path, _cfg("pyvips"), model)
    status = {r.name: r for r in summary.records}
    assert status["jpeg"].status == "done"
    bad = status["j2k"]
    assert bad.status == "failed" and bad.error is not None
    assert "\n" not in bad.error and "j2k.tiff" in bad.error
    assert "pyvips" in bad.error and "--backend auto" in bad.error
    assert not (tmp_path / "j2k").exists()
    assert np.isfinite(status["jpeg"].n_tiles or np.nan)
