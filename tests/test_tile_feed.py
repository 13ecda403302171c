"""How the job feeds tiles: reader threads (``--workers auto``) and the GPU JPEG decode
path (``--decode``), its selection and its per-slide / per-batch fallbacks.

No GPU here: the "GPU" decode is exercised by making ``gpu_jpeg_available`` say yes, so
that :mod:`wsi_saliency.jpeg_tiles` sends the level's spliced JPEG streams through
torchvision's batched ``decode_jpeg`` on the CPU (the nvJPEG call with another device).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _colour_model import write_colour_model
from click.testing import CliRunner

from wsi_saliency import jpeg_tiles, synthetic
from wsi_saliency.config import InferenceConfig, RunConfig, TilingConfig
from wsi_saliency.errors import ConfigError
from wsi_saliency.models import load_model
from wsi_saliency.prefetch import choose_decode, resolve_workers
from wsi_saliency.worker import run_slide

# torchvision 0.29 deprecates its image decoders (superseded by TorchCodec); they still work
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities:DeprecationWarning")

TILE = 64

SPEC = synthetic.SyntheticSlide(
    width=1600, height=1200, mpp=0.5,
    tissue=(((100.0, 100.0), (1500.0, 120.0), (1480.0, 1100.0), (120.0, 1080.0)),),
    tumour=(((400.0, 300.0), (900.0, 320.0), (880.0, 800.0), (420.0, 780.0)),),
    seed=5,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_model(tmp_path_factory.mktemp("colour_model"), TILE)


@pytest.fixture(scope="module")
def ycbcr_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("feed")
    return synthetic.write_slide(SPEC, d / "s.svs", kind="svs", compression="jpeg")


def _run(slide: Path, model_dir: Path, out: Path, **inference: object) -> dict:
    cfg = RunConfig(inference=InferenceConfig(device="cpu", batch_size=8, **inference))  # type: ignore[arg-type]
    out.mkdir()
    run_slide(slide, load_model(model_dir, trust_code=True), cfg, out)
    return json.loads((out / "run.json").read_text())


def _probs(out: Path) -> np.ndarray:
    import csv

    with (out / "tiles.csv").open() as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(v) for k, v in r.items() if k.startswith(("prob", "saliency"))]
                     for r in rows])


# ------------------------------------------------------------------ rules


@pytest.mark.parametrize(("device", "cores", "expected"), [
    ("cpu", 2, 1), ("cpu", 4, 1), ("cpu", 16, 2), ("cuda", 2, 1), ("cuda", 16, 8),
    ("cuda", 6, 5), ("mps", 10, 8),
])
def test_auto_workers_rule(device: str, cores: int, expected: int) -> None:
    assert resolve_workers("auto", device, cores) == expected
    assert resolve_workers(3, device, cores) == 3  # a number is taken as it is


def test_choose_decode_truth_table() -> None:
    ok = dict(gpu_decoder=True, level_is_ycbcr_jpeg=True, plain_crops=True)
    assert choose_decode("auto", **ok)[0] == "gpu"
    assert choose_decode("gpu", **ok)[0] == "gpu"
    assert choose_decode("cpu", **ok) == ("cpu", "requested")
    for missing, words in (("gpu_decoder", "no GPU JPEG decoder"),
                           ("level_is_ycbcr_jpeg", "not a tiled YCbCr JPEG"),
                           ("plain_crops", "resampled")):
        for req in ("auto", "gpu"):
            used, reason = choose_decode(req, **{**ok, missing: False})
            assert used == "cpu" and words in reason
    with pytest.raises(ValueError):
        choose_decode("nvjpeg", **ok)


def test_workers_and_decode_config_and_flags() -> None:
    assert InferenceConfig().workers == "auto" and InferenceConfig().decode == "auto"
    with pytest.raises(ConfigError, match="workers"):
        InferenceConfig(workers="many")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="decode"):
        InferenceConfig(decode="nvjpeg")  # type: ignore[arg-type]
    from wsi_saliency.cli import cli
    from wsi_saliency.cli.options import _click_kwargs, _field_hint

    workers = _click_kwargs(_field_hint("inference.workers"))["type"]
    assert workers.convert("3", None, None) == 3
    assert workers.convert("auto", None, None) == "auto"
    runner = CliRunner()
    for args in (["--workers", "nine"], ["--decode", "fpga"]):
        res = runner.invoke(cli, ["run", "x.svs", "--out", "o", *args])
        assert res.exit_code == 2 and args[0] in res.output, res.output


# ------------------------------------------------------------------ the job


def test_cpu_job_reads_on_the_cpu_with_the_auto_thread_count(
    ycbcr_svs: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsi_saliency.prefetch as prefetch

    monkeypatch.setattr(prefetch.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    run = _run(ycbcr_svs, model_dir, tmp_path / "o", decode="gpu")  # impossible on a CPU
    inf = run["inference"]
    assert inf["workers"] == 1 and inf["workers_requested"] == "auto"
    assert inf["decode"]["requested"] == "gpu" and inf["decode"]["used"] == "cpu"
    assert "no GPU JPEG decoder" in inf["decode"]["reason"]


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """nvJPEG 'available' on any device: jpeg_tiles then batch-decodes with torchvision
    on the CPU; returns a list that counts the batched decode calls."""
    pytest.importorskip("torchvision.io")
    calls: list[int] = []
    real = jpeg_tiles.JpegLevel._gpu_decode

    def counted(self: jpeg_tiles.JpegLevel, raws: list[bytes]) -> list:
        calls.append(len(raws))
        return real(self, raws)

    monkeypatch.setattr(jpeg_tiles, "gpu_jpeg_available", lambda _device: True)
    monkeypatch.setattr(jpeg_tiles.JpegLevel, "_gpu_decode", counted)
    return calls


def test_gpu_decode_path_gives_the_cpu_outputs(
    ycbcr_svs: Path, model_dir: Path, tmp_path: Path, fake_gpu: list[int]
) -> None:
    cpu = _run(ycbcr_svs, model_dir, tmp_path / "cpu", decode="cpu")
    gpu = _run(ycbcr_svs, model_dir, tmp_path / "gpu", decode="auto", workers=2)
    assert cpu["inference"]["decode"] == {"requested": "cpu", "used": "cpu",
                                          "reason": "requested"}
    assert gpu["inference"]["decode"]["used"] == "gpu"
    n_batches = -(-gpu["tiling"]["n_tiles"] // 8)
    assert len(fake_gpu) == n_batches  # one batched decode per tile batch
    np.testing.assert_allclose(_probs(tmp_path / "gpu"), _probs(tmp_path / "cpu"), atol=2e-3)


def test_failed_gpu_batches_fall_back_to_the_cpu_decoder(
    ycbcr_svs: Path, model_dir: Path, tmp_path: Path, fake_gpu: list[int],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: jpeg_tiles.JpegLevel, raws: list[bytes]) -> list:
        fake_gpu.append(len(raws))
        raise RuntimeError("nvjpeg: unsupported stream")

    monkeypatch.setattr(jpeg_tiles.JpegLevel, "_gpu_decode", broken)
    cpu = tmp_path / "cpu"
    _run(ycbcr_svs, model_dir, cpu, decode="cpu")
    run = _run(ycbcr_svs, model_dir, tmp_path / "gpu", decode="gpu")
    assert run["inference"]["decode"]["used"] == "gpu" and fake_gpu
    np.testing.assert_allclose(_probs(tmp_path / "gpu"), _probs(cpu), atol=2e-3)


def test_resampled_tiles_and_non_jpeg_levels_stay_on_the_cpu(
    ycbcr_svs: Path, model_dir: Path, tmp_path: Path, fake_gpu: list[int]
) -> None:
    cfg = RunConfig(inference=InferenceConfig(device="cpu", batch_size=8),
                    tiling=TilingConfig(spacing=0.6))
    out = tmp_path / "resampled"
    out.mkdir()
    run_slide(ycbcr_svs, load_model(model_dir, trust_code=True), cfg, out)
    dec = json.loads((out / "run.json").read_text())["inference"]["decode"]
    assert dec["used"] == "cpu" and "resampled" in dec["reason"]
    zlib = synthetic.write_slide(SPEC, tmp_path / "z.svs", kind="svs", compression="zlib")
    dec = _run(zlib, model_dir, tmp_path / "zlib")["inference"]["decode"]
    assert dec["used"] == "cpu" and "YCbCr JPEG" in dec["reason"]
    assert not fake_gpu
