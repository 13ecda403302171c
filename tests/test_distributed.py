"""Dask scale-out: the same per-slide function on worker processes gives the local outputs.

Three small generated slides (and one file that is not a slide) run through
:func:`wsi_saliency.batch.run_batch` in this process and on a ``LocalCluster`` of two
worker processes (and through ``wsi-saliency run --scheduler local:2``); the outputs,
the summary, resume and failure handling must be the same.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
from click.testing import CliRunner, Result

from wsi_saliency import synthetic
from wsi_saliency.batch import EXIT_FAILED, EXIT_OK, SUMMARY_NAME, BatchSummary, run_batch
from wsi_saliency.cli import cli
from wsi_saliency.config import (
    InferenceConfig,
    ModelConfig,
    RunConfig,
    build_config,
    config_hash,
)
from wsi_saliency.errors import ConfigError, InvalidModelError, MissingDependencyError
from wsi_saliency.models import LoadedModel, load_model

# the tests folder is on sys.path (pytest's default "prepend" import mode)
from _colour_model import write_colour_model  # isort: skip

distributed = pytest.importorskip("distributed")
from wsi_saliency.batch import dask as cluster_mod  # noqa: E402 - after the distributed check

SLIDES = {
    name: synthetic.SyntheticSlide(
        width=1500,
        height=1200,
        mpp=0.5,
        tissue=(((100.0, 100.0), (1400.0, 150.0), (1350.0, 1100.0), (150.0, 1050.0)),),
        tumour=(((300.0 + dx, 300.0), (800.0 + dx, 320.0), (760.0 + dx, 800.0), (320.0, 760.0)),),
        seed=seed,
    )
    for name, seed, dx in (("a", 1, 0.0), ("b", 2, 200.0), ("c", 3, 400.0))
}
COMPARED = ("tiles.csv", "tiles.geojson", "regions.geojson")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colour model (tumour logit a known function of colour), 64 px tiles."""
    return write_colour_model(tmp_path_factory.mktemp("colour_model"), 64)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """a.svs, b.svs, c.svs (generated) and bad.svs (not a slide), in that order."""
    d = tmp_path_factory.mktemp("slides")
    paths = [synthetic.write_slide(spec, d / f"{n}.svs") for n, spec in SLIDES.items()]
    (d / "bad.svs").write_bytes(b"this is not a slide")
    return [*paths, d / "bad.svs"]


def run_config(model_dir: Path, scheduler: str | None = None) -> RunConfig:
    return RunConfig(
        model=ModelConfig(path=str(model_dir), trust_code=True),
        inference=InferenceConfig(device="cpu", batch_size=16, workers=1, scheduler=scheduler),
    )


@pytest.fixture(scope="module")
def local_out(
    slides: list[Path], model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The reference: the three good slides run in this process."""
    out = tmp_path_factory.mktemp("local_out")
    model = load_model(model_dir, trust_code=True)
    summary = run_batch(slides[:3], out, run_config(model_dir), model)
    assert [r.status for r in summary.records] == ["done"] * 3
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    lc = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    try:
        yield lc
    finally:
        lc.close()


def statuses(summary: BatchSummary) -> list[str]:
    return [r.status for r in summary.records]


def zarr_arrays(path: Path) -> dict[str, np.ndarray]:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(arr) for name, arr in root.arrays()}


def assert_same_outputs(local: Path, other: Path, name: str) -> None:
    for file in COMPARED:
        assert (other / name / file).read_bytes() == (local / name / file).read_bytes(), file
    mine, ref = (
        zarr_arrays(other / name / "heatmaps.ome.zarr"),
        zarr_arrays(local / name / "heatmaps.ome.zarr"),
    )
    assert mine.keys() == ref.keys() and ref
    for key in ref:
        np.testing.assert_array_equal(mine[key], ref[key])
    run = json.loads((other / name / "run.json").read_text())
    assert run["config_hash"] == json.loads((local / name / "run.json").read_text())["config_hash"]


def assert_same_summary_shape(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    keys = {tuple(s) for s in a["slides"]} | {tuple(s) for s in b["slides"]}
    assert len(keys) == 1, keys
    assert a["config_hash"] == b["config_hash"] and a["model"] == b["model"]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".trash-")))


def test_cluster_batch_matches_local_isolates_failures_and_resumes(
    cluster: Any, slides: list[Path], model_dir: Path, local_out: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = run_config(model_dir, scheduler=cluster.scheduler_address)
    model = load_model(model_dir, trust_code=True)
    summary = run_batch(slides, out, cfg, model)

    assert summary.status == "complete"
    assert statuses(summary) == ["done", "done", "done", "failed"]
    assert summary.exit_code == EXIT_FAILED
    bad = summary.records[3]
    assert bad.error is not None and bad.error.startswith("SlideOpenError: ")
    assert "\n" not in bad.error and "bad.svs" in bad.error
    assert bad.output is None and not (out / "bad").exists()
    assert leftovers(out) == []
    for name in ("a", "b", "c"):
        assert_same_outputs(local_out, out, name)
    written = json.loads((out / SUMMARY_NAME).read_text())
    reference = json.loads((local_out / SUMMARY_NAME).read_text())
    assert_same_summary_shape(written, reference)
    assert written["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    assert [s["n_tiles"] for s in written["slides"][:3]] == [
        s["n_tiles"] for s in reference["slides"]
    ]

    # the model was loaded at most once per worker process for the three slides
    with distributed.Client(cluster.scheduler_address) as client:
        loads = client.run(lambda dask_worker: dask_worker.plugins[cluster_mod.PLUGIN_NAME].loads)
    assert 1 <= sum(loads.values()) <= 2 and max(loads.values()) == 1, loads

    # re-run: the good slides are skipped, the bad one is tried again and fails again
    stamp = (out / "a" / "run.json").stat().st_mtime_ns
    again = run_batch(slides, out, cfg, model)
    assert statuses(again) == ["skipped", "skipped", "skipped", "failed"]
    assert again.exit_code == EXIT_FAILED
    assert (out / "a" / "run.json").stat().st_mtime_ns == stamp
    # without the bad slide everything is skipped and the exit status is 0
    clean = run_batch(slides[:3], out, cfg, model)
    assert statuses(clean) == ["skipped"] * 3 and clean.exit_code == EXIT_OK
    # a local re-run accepts what the cluster wrote (same configuration hash)
    local = run_batch(slides[:3], out, run_config(model_dir), model)
    assert statuses(local) == ["skipped"] * 3


def test_worker_with_other_weights_fails_its_slides(
    cluster: Any, slides: list[Path], model_dir: Path, tmp_path: Path
) -> None:
    model = load_model(model_dir, trust_code=True)
    ref = cluster_mod.ModelRef(path=str(model_dir), weights_sha256="0" * 64, trust_code=True)
    with pytest.raises(InvalidModelError, match="same model folder"):
        ref.load()
    # a batch whose model hash no worker can match: every slide fails, nothing written
    fake = LoadedModel(replace(model.spec, weights_sha256="0" * 64), model.module)
    cfg = run_config(model_dir, scheduler=cluster.scheduler_address)
    summary = run_batch(slides[:1], tmp_path / "out", cfg, fake)
    assert statuses(summary) == ["failed"]
    assert "InvalidModelError" in (summary.records[0].error or "")
    assert not (tmp_path / "out" / "a").exists() and leftovers(tmp_path / "out") == []


class InterruptOnFirstFinish:
    """A reporter whose first slide_finished raises KeyboardInterrupt (Ctrl-C)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, method: str) -> Any:
        def record(*args: Any) -> None:
            self.events.append(method)
            if method == "slide_finished":
                raise KeyboardInterrupt

        return record


def test_interrupt_writes_the_summary_and_a_rerun_completes(
    cluster: Any, slides: list[Path], model_dir: Path, local_out: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = run_config(model_dir, scheduler=cluster.scheduler_address)
    model = load_model(model_dir, trust_code=True)
    reporter = InterruptOnFirstFinish()
    with pytest.raises(KeyboardInterrupt):
        run_batch(slides[:3], out, cfg, model, reporter=reporter)
    written = json.loads((out / SUMMARY_NAME).read_text())
    assert written["status"] == "interrupted" and written["exit_code"] == 130
    states = [s["status"] for s in written["slides"]]
    assert states.count("done") == 1 and states.count("interrupted") == 2, states
    assert reporter.events[-1] == "batch_finished"
    with distributed.Client(cluster.scheduler_address) as client:  # let cancelled tasks end
        for _ in range(200):
            if not any(client.processing().values()):
                break
            time.sleep(0.05)
    again = run_batch(slides[:3], out, cfg, model)
    assert again.exit_code == EXIT_OK
    assert set(statuses(again)) <= {"done", "skipped"} and "skipped" in statuses(again)
    assert leftovers(out) == []
    for name in ("a", "b", "c"):
        assert_same_outputs(local_out, out, name)


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_local_scheduler_runs_and_exit_codes(
    slides: list[Path], model_dir: Path, local_out: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    common: list[str | Path] = [
        "--model",
        model_dir,
        "--trust-model-code",
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--workers",
        "1",
    ]
    res = invoke("run", *slides, "--out", out, *common, "--scheduler", "local:2")
    assert res.exit_code == 1, res.output
    assert "4 slides: 3 done, 0 skipped, 1 failed" in res.stdout
    for name in ("a", "b", "c"):
        assert_same_outputs(local_out, out, name)
    assert leftovers(out) == []
    written = json.loads((out / SUMMARY_NAME).read_text())
    assert written["config"]["inference"]["scheduler"] == "local:2"
    # a re-run of the good slides skips them all (and needs no new result)
    res = invoke("run", *slides[:3], "--out", out, *common, "--scheduler", "local:1")
    assert res.exit_code == 0, res.output
    assert "3 slides: 0 done, 3 skipped, 0 failed" in res.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("local:0", "local:N needs N >= 1"),
        ("local:two", "not a Dask scheduler address"),
        ("http://host:8786", "not a Dask scheduler address"),
        ("tcp://host:8786 extra", "not a Dask scheduler address"),
    ],
)
def test_bad_scheduler_values_are_usage_errors(
    slides: list[Path], tmp_path: Path, value: str, expected: str
) -> None:
    res = invoke("run", slides[0], "--out", tmp_path / "out", "--scheduler", value)
    assert res.exit_code == 2, res.output
    assert "--scheduler" in res.output and expected in res.output
    with pytest.raises(ConfigError, match="inference.scheduler"):
        build_config({"inference": {"scheduler": value}})


def test_unreachable_scheduler_stops_before_any_work(
    slides: list[Path], model_dir: Path, tmp_path: Path
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        res = invoke(
            "run", slides[0], "--out", tmp_path / "out", "--model", model_dir,
            "--trust-model-code", "--scheduler", address,
        )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert f"cannot reach the Dask scheduler at {address}" in res.output
    assert not (tmp_path / "out" / SUMMARY_NAME).exists()


def test_without_distributed_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, slides: list[Path], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "wsi-saliency\[distributed\]"'):
        cluster_mod.require_distributed()
    res = invoke("run", slides[0], "--out", tmp_path / "out", "--scheduler", "local:2")
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if "distributed" in ln]
    assert len(lines) == 1 and 'pip install "wsi-saliency[distributed]"' in lines[0]
    # no scheduler: the local batch does not need the package
    assert build_config({}).inference.scheduler is None


def test_scheduler_key_does_not_change_the_configuration_hash() -> None:
    plain = build_config({})
    remote = build_config({"inference": {"scheduler": "tcp://10.0.0.5:8786"}})
    local = build_config({}, {"inference.scheduler": "local:4"})
    assert remote.inference.scheduler == "tcp://10.0.0.5:8786"
    assert local.inference.scheduler == "local:4"
    assert config_hash(plain, "w" * 64) == config_hash(remote, "w" * 64)
    assert config_hash(plain, "w" * 64) == config_hash(local, "w" * 64)
    for ok in ("tcp://host:8786", "tls://10.1.2.3:8786", "host:8786", "tcp://[::1]:8786"):
        assert build_config({}, {"inference.scheduler": ok}).inference.scheduler == ok


def test_gpu_for_worker() -> None:
    gpu = cluster_mod.gpu_for_worker
    assert [gpu(k, 4) for k in range(6)] == [0, 1, 2, 3, 0, 1]
    assert gpu("3", 2) == 1
    assert gpu(0, 1) is None and gpu(5, 0) is None  # one GPU or none: the current device
    assert gpu("tcp://10.0.0.5:40000", 4) is None  # a named remote worker: its own setup
