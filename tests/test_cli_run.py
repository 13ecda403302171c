"""`wsi-saliency run` and `demo` through click, with a fake model and per-slide function."""

from __future__ import annotations

import io
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from wsi_saliency.batch import SUMMARY_NAME, BatchSummary, SlideRecord
from wsi_saliency.cli import cli
from wsi_saliency.cli._logging import JsonFormatter, ProgressReporter, progress_enabled
from wsi_saliency.config import RunConfig
from wsi_saliency.errors import InvalidModelError

# the tests folder is on sys.path (pytest's default "prepend" import mode)
from test_batch import (  # isort: skip
    FakeModel,
    FakeWorker,
    make_slides,
    make_small_slides,
)


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> FakeWorker:
    fake = FakeWorker()
    seen: list[RunConfig] = []

    def wrapped(path: Path, model: Any, config: RunConfig, out_dir: Path, **kw: Any) -> Any:
        seen.append(config)
        return fake(path, model, config, out_dir, **kw)

    fake.configs = seen  # type: ignore[attr-defined]
    monkeypatch.setattr("wsi_saliency.batch.slide.default_run_slide", lambda: wrapped)
    monkeypatch.setattr("wsi_saliency.batch.prepare.load_batch_model", lambda config: FakeModel())
    # the fake model has no network for the pre-flight check (tested with the real model
    # in test_bad_model_dependent_values_are_usage_errors_before_any_work)
    monkeypatch.setattr("wsi_saliency.batch.prepare.check_batch", lambda *a, **kw: None)
    return fake


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    root, pkg = logging.getLogger(), logging.getLogger("wsi_saliency")
    saved = (list(root.handlers), root.level, pkg.level, pkg.propagate)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    pkg.setLevel(saved[2])
    pkg.propagate = saved[3]
    logging.captureWarnings(False)


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def slides_folder(tmp_path: Path) -> Path:
    make_slides(tmp_path / "in", {"a.svs": b"A", "b.svs": b"B", "c.svs": b"BAD"})
    return tmp_path / "in"


def test_run_exit_status_and_summary(tmp_path: Path, worker: FakeWorker) -> None:
    make_slides(tmp_path / "in", {"a.svs": b"A", "b.svs": b"B"})
    out = tmp_path / "out"
    res = invoke("run", tmp_path / "in", "--out", out)
    assert res.exit_code == 0, res.output
    assert "2 slides: 2 done, 0 skipped, 0 failed" in res.stdout
    assert f"summary: {out / SUMMARY_NAME}" in res.stdout
    assert json.loads((out / SUMMARY_NAME).read_text())["counts"]["done"] == 2
    # again: skipped, nothing recomputed
    res = invoke("run", tmp_path / "in", "--out", out)
    assert res.exit_code == 0
    assert "2 slides: 0 done, 2 skipped, 0 failed" in res.stdout
    assert worker.calls == ["a.svs", "b.svs"]


def test_run_exit_1_when_a_slide_fails(tmp_path: Path, worker: FakeWorker) -> None:
    res = invoke("run", slides_folder(tmp_path), "--out", tmp_path / "out")
    assert res.exit_code == 1
    assert "1 failed" in res.stdout
    assert "failed" in res.stdout and "SlideOpenError: cannot open" in res.stdout
    assert worker.calls == ["a.svs", "b.svs", "c.svs"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "{tmp}/nope.svs", "--out", "{tmp}/out"], "nope.svs does not exist"),
        (["run", "{tmp}/empty", "--out", "{tmp}/out"], "contains no slide files"),
        (["run", "{tmp}/in", "--out", "{tmp}/file"], "is a file"),
        (["run", "{tmp}/in", "--out", "{tmp}/file/sub"], "cannot be created"),
        (
            ["run", "{tmp}/in", "--out", "{tmp}/out", "--overlap", "1.5"],
            "--overlap: 1.5 must be in [0, 1)",
        ),
        (
            ["run", "{tmp}/in", "--out", "{tmp}/out", "--batch-size", "0"],
            "--batch-size: 0 must be >= 1",
        ),
        (["run", "{tmp}/in", "--out", "{tmp}/out", "--device", "gpu"], "unknown device 'gpu'"),
        (["run", "{tmp}/in", "--out", "{tmp}/out", "--method", "bogus"], "'bogus' is not one of"),
        (
            ["run", "{tmp}/in", "--out", "{tmp}/out", "--set", "tiling.overlap"],
            "expected section.key=value",
        ),
        (
            ["run", "{tmp}/in", "--out", "{tmp}/out", "--set", "tiling.ovelap=1"],
            "did you mean 'tiling.overlap'",
        ),
        (
            ["run", "{tmp}/in", "--out", "{tmp}/out", "--config", "{tmp}/bad.yaml"],
            "bad.yaml: unknown key",
        ),
        (
            ["run", "{tmp}/in", "--out", "{tmp}/out", "--config", "{tmp}/none.yaml"],
            "none.yaml: cannot be read",
        ),
        (["run", "{tmp}/in"], "Missing option '--out'"),
        (["run", "--out", "{tmp}/out"], "Missing argument 'INPUT...'"),
    ],
)
def test_usage_errors_exit_2_before_any_work(
    tmp_path: Path, worker: FakeWorker, args: list[str], expected: str
) -> None:
    make_slides(tmp_path / "in", {"a.svs": b"A"})
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "bad.yaml").write_text("tiling:\n  tilesize: 3\n")
    res = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert worker.calls == []
    assert not (tmp_path / "out" / SUMMARY_NAME).exists()


def test_model_that_cannot_load_is_a_usage_error(
    tmp_path: Path, worker: FakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad(config: RunConfig) -> Any:
        raise InvalidModelError(
            f"model folder {config.model.path} has no config.json; check --model"
        )

    monkeypatch.setattr("wsi_saliency.batch.prepare.load_batch_model", bad)
    make_slides(tmp_path / "in", {"a.svs": b"A"})
    res = invoke("run", tmp_path / "in", "--out", tmp_path / "out", "--model", tmp_path / "m")
    assert res.exit_code == 2
    assert "has no config.json" in res.output
    assert worker.calls == []


def test_precedence_options_over_yaml_over_defaults(tmp_path: Path, worker: FakeWorker) -> None:
    make_slides(tmp_path / "in", {"a.svs": b"A"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tiling:\n  overlap: 0.5\n  tile_size: 64\nmodel:\n  method: grad-cam\n")
    res = invoke(
        "run", tmp_path / "in", "--out", tmp_path / "out", "--config", cfg,
        "--overlap", "0.25", "--set", "output.blend=hann", "--set", "tiling.min_tissue=0.5",
        "--target", "1", "--layer", "layer3", "--mpp", "0.25", "--workers", "0",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (c,) = worker.configs  # type: ignore[attr-defined]
    assert c.tiling.overlap == 0.25  # option beats YAML
    assert c.tiling.tile_size == 64  # YAML beats default
    assert c.tiling.spacing == 1.0  # from the model
    assert c.model.method == "grad-cam" and c.model.layer == "layer3"
    assert c.output.blend == "hann" and c.tiling.min_tissue == 0.5
    assert c.model.target == 1 and c.slide.mpp == 0.25 and c.inference.workers == 0
    summary = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert summary["config"]["tiling"]["overlap"] == 0.25


def test_changing_method_on_the_command_line_redoes(tmp_path: Path, worker: FakeWorker) -> None:
    make_slides(tmp_path / "in", {"a.svs": b"A"})
    assert invoke("run", tmp_path / "in", "--out", tmp_path / "o").exit_code == 0
    assert (
        invoke("run", tmp_path / "in", "--out", tmp_path / "o", "--method", "grad-cam").exit_code
        == 0
    )
    assert (
        invoke("run", tmp_path / "in", "--out", tmp_path / "o", "--method", "grad-cam").exit_code
        == 0
    )
    assert (
        invoke(
            "run", tmp_path / "in", "--out", tmp_path / "o", "--overwrite", "--method", "grad-cam"
        ).exit_code
        == 0
    )
    assert worker.calls == ["a.svs", "a.svs", "a.svs"]


def test_json_logs_one_object_per_line(tmp_path: Path, worker: FakeWorker) -> None:
    res = invoke("run", slides_folder(tmp_path), "--out", tmp_path / "out", "--log-format", "json")
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines
    records = [json.loads(ln) for ln in lines]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    events = {(r.get("event"), r.get("slide")) for r in records}
    assert ("slide_done", "a") in events and ("slide_failed", "c") in events
    failed = next(r for r in records if r.get("event") == "slide_failed")
    assert failed["level"] == "error" and "SlideOpenError" in failed["message"]
    assert "\r" not in res.stderr


def test_quiet_and_log_level(tmp_path: Path, worker: FakeWorker) -> None:
    res = invoke("run", slides_folder(tmp_path), "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 1
    assert res.stdout == ""
    assert "done" not in res.stderr  # info lines hidden
    assert "failed" in res.stderr  # the error is still logged
    res = invoke("run", slides_folder(tmp_path), "--out", tmp_path / "o2", "--log-level", "debug")
    assert "DEBUG" in res.stderr and "traceback" in res.stderr


def test_no_progress_bars_when_not_a_terminal(tmp_path: Path, worker: FakeWorker) -> None:
    res = invoke("run", slides_folder(tmp_path), "--out", tmp_path / "out")
    assert "\r" not in res.stderr and "it/s" not in res.stderr and "tile/s" not in res.stderr
    assert "INFO" in res.stderr


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_enabled_rules() -> None:
    assert progress_enabled(quiet=False, log_format="text", stream=FakeTTY())
    assert not progress_enabled(quiet=True, log_format="text", stream=FakeTTY())
    assert not progress_enabled(quiet=False, log_format="json", stream=FakeTTY())
    assert not progress_enabled(quiet=False, log_format="text", stream=io.StringIO())


def test_progress_reporter_draws_batch_and_slide_bars() -> None:
    stream = FakeTTY()
    rep = ProgressReporter(enabled=True, stream=stream)
    records = [SlideRecord(input="/x/a.svs", name="a"), SlideRecord(input="/x/b.svs", name="b")]
    summary = BatchSummary(Path("/o"), records, "h", {}, {})
    rep.batch_started(summary)
    for i, r in enumerate(records):
        rep.slide_started(i, r)
        for k in range(1, 101):
            rep.slide_progress(k, 100)
        bar = rep._slide
        assert bar is not None and (bar.n, bar.total) == (100, 100)
        bar.refresh()
        r.status = "done"
        rep.slide_finished(i, r)
        assert rep._slide is None
    rep.batch_finished(summary)
    text = stream.getvalue()
    assert "slides" in text and "2/2" in text
    assert "100/100" in text and "tile/s" in text  # rate; ETA shown as [elapsed<remaining]
    silent = FakeTTY()
    rep = ProgressReporter(enabled=False, stream=silent)
    rep.batch_started(summary)
    rep.slide_started(0, records[0])
    rep.slide_progress(1, 2)
    rep.slide_finished(0, records[0])
    rep.batch_finished(summary)
    assert silent.getvalue() == ""


def test_json_formatter_carries_extra_fields() -> None:
    rec = logging.LogRecord("wsi_saliency.batch", logging.INFO, "f", 1, "hello %s", ("x",), None)
    rec.slide = "a"
    data = json.loads(JsonFormatter().format(rec))
    assert data["message"] == "hello x" and data["slide"] == "a" and data["level"] == "info"


def test_ctrl_c_exits_130_and_cleans_up(tmp_path: Path, worker: FakeWorker) -> None:
    make_slides(tmp_path / "in", {"a.svs": b"A", "b.svs": b"KBD", "c.svs": b"C"})
    out = tmp_path / "out"
    res = invoke("run", tmp_path / "in", "--out", out)
    assert res.exit_code == 130
    assert "interrupted" in res.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["status"] == "interrupted"
    assert [s["status"] for s in summary["slides"]] == ["done", "interrupted", "pending"]


def test_demo_generates_the_slide_and_runs_the_batch(tmp_path: Path, worker: FakeWorker) -> None:
    out = tmp_path / "demo-out"
    res = invoke("demo", "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    slide = out / "slides" / "demo.svs"
    assert slide.is_file() and slide.stat().st_size > 100_000
    assert worker.calls == ["demo.svs"]
    (c,) = worker.configs  # type: ignore[attr-defined]
    assert c.inference.device == "cpu" and c.model.path is None
    assert f"demo slide: {slide}" in res.stdout
    assert f"outputs (done): {out / 'demo'}" in res.stdout
    assert str(out / "demo" / "overlay.png") in res.stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # a second demo reuses the slide and skips the complete outputs
    mtime = slide.stat().st_mtime_ns
    res = invoke("demo", "--out", out, "--device", "cpu")
    assert res.exit_code == 0 and "outputs (skipped)" in res.stdout
    assert slide.stat().st_mtime_ns == mtime and worker.calls == ["demo.svs"]


def test_json_logs_cover_other_libraries_and_warnings(tmp_path: Path, worker: FakeWorker) -> None:
    import warnings

    def noisy(path: Path, out_dir: Path) -> None:
        warnings.warn("a library warning", UserWarning, stacklevel=1)
        logging.getLogger("somelib").warning("somelib says %d", 42)
        logging.getLogger("somelib").info("hidden: below warning")

    worker.on_call = noisy
    make_slides(tmp_path / "in", {"a.svs": b"A"})
    res = invoke("run", tmp_path / "in", "--out", tmp_path / "out", "--log-format", "json")
    assert res.exit_code == 0
    records = [json.loads(ln) for ln in res.stderr.splitlines() if ln.strip()]
    messages = " ".join(r["message"] for r in records)
    assert "somelib says 42" in messages and "a library warning" in messages
    assert "hidden" not in messages


# ============================================================================ end to end
# With the real per-slide worker and the bundled demo model, the CLI run as a subprocess.

OUTPUT_FILES = (
    "heatmaps.ome.zarr",
    "probability.ome.tif",
    "saliency.ome.tif",
    "tiles.geojson",
    "regions.geojson",
    "tiles.csv",
    "overlay.png",
    "run.json",
)
_MAIN = "from wsi_saliency.cli import main; main()"


def cli_process(*args: str | Path) -> list[str]:
    return [sys.executable, "-c", _MAIN, *map(str, args)]


def temp_items(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".trash-")))


@pytest.fixture(scope="module")
def small_slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small generated slides with planted tumour."""
    return make_small_slides(tmp_path_factory.mktemp("e2e_slides"), 3)


def assert_same_outputs(a: Path, b: Path) -> None:
    """CSV and GeoJSON byte-identical, every array of the OME-Zarr and OME-TIFFs equal."""
    import numpy as np
    import tifffile
    import zarr

    for name in ("tiles.csv", "tiles.geojson", "regions.geojson"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name}/{name} differs"
    za, zb = (
        zarr.open_group(a / "heatmaps.ome.zarr", mode="r"),
        zarr.open_group(b / "heatmaps.ome.zarr", mode="r"),
    )
    keys = sorted(k for k, _ in za.arrays())
    assert keys and keys == sorted(k for k, _ in zb.arrays())
    for k in keys:
        np.testing.assert_array_equal(
            np.asarray(za[k]), np.asarray(zb[k]), err_msg=f"{a.name} zarr {k}"
        )
    for name in ("probability.ome.tif", "saliency.ome.tif"):
        with tifffile.TiffFile(a / name) as ta, tifffile.TiffFile(b / name) as tb:
            la, lb = ta.series[0].levels, tb.series[0].levels
            assert len(la) == len(lb)
            for x, y in zip(la, lb, strict=True):
                np.testing.assert_array_equal(x.asarray(), y.asarray(), err_msg=f"{a.name}/{name}")


@pytest.mark.slow
def test_e2e_real_slides_folder(tmp_path: Path, cmu_slide: Path, tcga_slide: Path) -> None:
    """Two real slides (TCGA given its MPP by a sidecar), a corrupt file, a text file named .svs."""
    src = tmp_path / "in"
    src.mkdir()
    (src / cmu_slide.name).symlink_to(cmu_slide)
    # copied, not linked: the reader resolves symlinks and looks for the sidecar beside
    # the link's target (a read-only folder here)
    shutil.copyfile(tcga_slide, src / tcga_slide.name)
    (src / f"{tcga_slide.stem}.mpp.json").write_text('{"mpp": 0.25}')
    (src / "corrupt.svs").write_bytes(cmu_slide.read_bytes()[:20000])  # truncated SVS
    (src / "notes.svs").write_text("this is a text file, not a slide\n")
    out = tmp_path / "out"
    res = invoke("run", src, "--out", out, "--device", "cpu", "--log-format", "json")
    assert res.exit_code == 1, res.output[-3000:]
    summary = json.loads((out / SUMMARY_NAME).read_text())
    status = {Path(s["input"]).name: s for s in summary["slides"]}
    assert summary["counts"] == {"done": 2, "skipped": 0, "failed": 2}
    for name in (cmu_slide.name, tcga_slide.name):
        entry = status[name]
        assert entry["status"] == "done" and entry["error"] is None
        folder = Path(entry["output"])
        assert folder == out / Path(name).stem
        for f in OUTPUT_FILES:
            assert (folder / f).exists(), f"{name}: {f} missing"
        assert entry["n_tiles"] > 0 and entry["timings"]["total"] > 0
    run = json.loads((out / tcga_slide.stem / "run.json").read_text())
    assert "sidecar" in json.dumps(run)  # the MPP came from the sidecar
    for name in ("corrupt.svs", "notes.svs"):
        entry = status[name]
        assert entry["status"] == "failed" and entry["output"] is None
        assert entry["error"] and "\n" not in entry["error"] and name in entry["error"]
        assert not (out / Path(name).stem).exists()
    assert temp_items(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [SUMMARY_NAME, cmu_slide.stem, tcga_slide.stem]
    )
    for line in res.stderr.splitlines():
        if line.strip():
            json.loads(line)


@pytest.mark.slow
def test_e2e_sigkill_at_several_points_then_resume(
    tmp_path: Path, small_slides: list[Path]
) -> None:
    names = [p.stem for p in small_slides]
    ref = tmp_path / "ref"
    res = invoke("run", *small_slides, "--out", ref, "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output[-3000:]

    out = tmp_path / "out"

    def in_progress(name: str) -> Any:
        return lambda: any(p.is_file() for p in out.glob(f".tmp-{name}-*/{name}/**/*"))

    # (label, condition to wait for (None: sleep), delay, slides finished after the kill)
    kill_points = [
        ("while starting up", None, 0.5, set()),
        ("during slide 1", in_progress(names[0]), 0.0, set()),
        ("right after slide 1 is committed", lambda: (out / names[0]).is_dir(), 0.0, {0}),
        ("during slide 2", in_progress(names[1]), 0.0, {0}),
        ("during slide 3", in_progress(names[2]), 0.0, {0, 1}),
    ]
    finished: dict[str, tuple[int, int]] = {}
    for label, condition, delay, expect_finished in kill_points:
        proc = subprocess.Popen(
            cli_process("run", *small_slides, "--out", out, "--device", "cpu", "--quiet"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 240
            if condition is None:
                time.sleep(delay)
            else:
                while not condition() and proc.poll() is None:
                    assert time.monotonic() < deadline, f"kill point {label!r} never reached"
                    time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        # finished slides from earlier attempts were not recomputed
        for name, ident in finished.items():
            st = (out / name / "run.json").stat()
            assert (st.st_ino, st.st_mtime_ns) == ident, f"{name} recomputed ({label})"
        # no folder looks finished unless it is
        if out.exists():
            for child in out.iterdir():
                if not child.name.startswith(".") and child.is_dir():
                    assert (child / "run.json").is_file(), f"half-written {child.name} ({label})"
                    st = (child / "run.json").stat()
                    finished.setdefault(child.name, (st.st_ino, st.st_mtime_ns))
            if (out / SUMMARY_NAME).exists():
                json.loads((out / SUMMARY_NAME).read_text())  # always valid JSON
        assert proc.returncode == -signal.SIGKILL, f"process ended by itself ({label})"
        assert set(finished) == {names[k] for k in expect_finished}, label
    res = invoke("run", *small_slides, "--out", out, "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output[-3000:]
    summary = json.loads((out / SUMMARY_NAME).read_text())
    statuses = {s["name"]: s["status"] for s in summary["slides"]}
    for name in names:
        assert statuses[name] == ("skipped" if name in finished else "done")
    for name, ident in finished.items():
        st = (out / name / "run.json").stat()
        assert (st.st_ino, st.st_mtime_ns) == ident
    assert temp_items(out) == []
    for name in names:
        assert_same_outputs(ref / name, out / name)


@pytest.mark.slow
def test_e2e_demo_writes_every_output_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket


    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    out = tmp_path / "demo-out"
    res = invoke("demo", "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output[-3000:]
    for name in OUTPUT_FILES:
        assert (out / "demo" / name).exists(), name
        assert str(out / "demo" / name) in res.stdout
    assert (out / "slides" / "demo.svs").is_file()
    assert temp_items(out) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--overlap", "0.3"], "use e.g. --overlap"),
        (["--layer", "layer9"], "layer9"),
        (["--target", "cancer"], "cancer"),
        (["--device", "cuda"], "CUDA is not available"),
    ],
)
def test_bad_model_dependent_values_are_usage_errors_before_any_work(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Values only the model can check stop the run once, before any slide is read and
    before the output folder exists (not once per slide)."""
    slide = tmp_path / "in" / "a.svs"
    slide.parent.mkdir()
    slide.write_bytes(b"not read: the run stops before")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["run", str(slide), "--out", str(out), "-q", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert len([ln for ln in res.output.strip().splitlines() if ln.strip()]) == 1
    assert not out.exists()


def test_usage_errors_leave_no_output_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for inputs in ([str(tmp_path / "empty")], [str(tmp_path / "missing.svs")]):
        out = tmp_path / "out"
        res = CliRunner().invoke(cli, ["run", *inputs, "--out", str(out), "-q"])
        assert res.exit_code == 2, res.output
        assert not out.exists()
