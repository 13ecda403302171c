"""Batch logic with fake per-slide functions: discovery, names, resume, atomicity, failures."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from wsi_saliency.batch import (
    EXIT_FAILED,
    EXIT_OK,
    SUMMARY_NAME,
    BatchSummary,
    SlideRecord,
    assign_output_names,
    clean_stale_temp,
    completed_run,
    discover_slides,
    outdir,
    prepare_output_dir,
    run_batch,
    run_matches,
    slide_stem,
)
from wsi_saliency.config import (
    RunConfig,
    build_config,
    config_hash,
    config_to_dict,
    resolve_model_defaults,
)
from wsi_saliency.errors import InputError, OutputError, SlideOpenError
from wsi_saliency.inputs import model_fingerprint, slide_fingerprint
from wsi_saliency.run_record import (
    RUN_RECORD_VERSION,
    ModelRecord,
    RunRecord,
    RunRecordError,
    TilingRecord,
    read_run_record,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fakes


@dataclass(frozen=True)
class FakeSpec:
    name: str = "fake"
    weights_sha256: str = "a" * 64
    patch_size: int = 32
    spacing: float = 1.0
    saliency_layer: str | None = "layer2"
    mean: tuple[float, float, float] = (0.8, 0.6, 0.7)
    tumor_class: int = 1


@dataclass(frozen=True)
class FakeModel:
    spec: FakeSpec = field(default_factory=FakeSpec)


def fake_record(path: Path, model: FakeModel, config: RunConfig) -> RunRecord:
    """The run record a real worker would write, with the fake's 3 tiles and tiles.csv."""
    fingerprint = model_fingerprint(model.spec)
    return RunRecord(
        wsi_saliency_version="test",
        config_hash=config_hash(config, fingerprint),
        inputs=slide_fingerprint(path, mpp_sidecar=config.slide.mpp_sidecar, roi=config.tissue.roi),
        config=config_to_dict(config),
        model=ModelRecord(
            name=model.spec.name,
            architecture="fake",
            weights_file="model.safetensors",
            weights_sha256=model.spec.weights_sha256,
            fingerprint=fingerprint,
            class_names=("normal", "tumor"),
            tumor_class=model.spec.tumor_class,
            patch_size=model.spec.patch_size,
            spacing_um_px=model.spec.spacing,
        ),
        tiling=TilingRecord(
            tile_size=model.spec.patch_size,
            spacing_um_px=model.spec.spacing,
            overlap=0.0,
            stride=model.spec.patch_size,
            min_tissue=0.25,
            read_level=0,
            read_downsample=1.0,
            grid_shape=(1, 3),
            n_tiles=3,
        ),
        outputs=("tiles.csv",),
    )


@dataclass
class FakeWorker:
    """Writes deterministic outputs from the slide's bytes; fails on marked slides.

    A slide file starting with ``BAD`` raises SlideOpenError, ``OOM`` MemoryError,
    ``KBD`` KeyboardInterrupt, ``NORUN`` writes no run.json.
    """

    calls: list[str] = field(default_factory=list)
    progress_calls: list[tuple[int, int]] = field(default_factory=list)
    on_call: Any = None

    def __call__(
        self,
        path: Path,
        model: FakeModel,
        config: RunConfig,
        out_dir: Path,
        *,
        progress: Any = None,
    ) -> SimpleNamespace:
        assert out_dir.is_dir() and not any(out_dir.iterdir())
        self.calls.append(Path(path).name)
        if self.on_call is not None:
            self.on_call(Path(path), out_dir)
        data = Path(path).read_bytes()
        (out_dir / "partial.bin").write_bytes(b"half")  # written before any failure
        if data.startswith(b"BAD"):
            raise SlideOpenError(f"cannot open {path}: not a slide;\n check the file")
        if data.startswith(b"OOM"):
            raise MemoryError()
        if data.startswith(b"KBD"):
            raise KeyboardInterrupt
        for k in range(3):
            if progress is not None:
                progress(k + 1, 3)
                self.progress_calls.append((k + 1, 3))
        (out_dir / "tiles.csv").write_text(
            f"slide,layer,method\n{data[:16].decode('ascii', 'replace')},{config.model.layer},{config.model.method}\n"
        )
        if not data.startswith(b"NORUN"):
            fake_record(path, model, config).write(out_dir)
        return SimpleNamespace(n_tiles=3, timings={"read": 0.01, "model": 0.02}, outputs={})


def make_slides(root: Path, contents: dict[str, bytes]) -> list[Path]:
    paths = []
    for rel, data in contents.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths.append(p)
    return paths


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".trash-")))


def summary_of(out: Path) -> dict[str, Any]:
    return json.loads((out / SUMMARY_NAME).read_text())


# ----------------------------------------------------------------------------- discovery


def test_folder_discovery_is_recursive_sorted_and_skips_non_slides(tmp_path: Path) -> None:
    make_slides(
        tmp_path / "in",
        {
            "b.svs": b"x",
            "a.SVS": b"x",
            "sub/c.ndpi": b"x",
            "sub/deeper/d.tiff": b"x",
            "sub/e.tif": b"x",
            "notes.txt": b"x",
            "b.mpp.json": b"{}",
            "image.jpg": b"x",
            ".hidden.svs": b"x",
            ".cache/f.svs": b"x",
            # MIRAX: the .mrxs file is the slide; its data folder is not searched
            "m.mrxs": b"x",
            "m/Slidedat.ini": b"x",
            "m/Data0000.dat": b"x",
            "m/inner.tif": b"x",
            # DICOM: a folder of .dcm files is one slide
            "dicom/case7/1.2.3.dcm": b"x",
            "dicom/case7/1.2.4.dcm": b"x",
            "other/x.bif": b"x",
            "other/y.scn": b"x",
            "other/z.svslide": b"x",
            "other/v.vms": b"x",
            "other/w.vmu": b"x",
        },
    )
    found = discover_slides([tmp_path / "in"])
    rel = [p.relative_to(tmp_path / "in").as_posix() for p in found]
    assert rel == [
        "a.SVS",
        "b.svs",
        "m.mrxs",
        "dicom/case7/1.2.3.dcm",
        "other/v.vms",
        "other/w.vmu",
        "other/x.bif",
        "other/y.scn",
        "other/z.svslide",
        "sub/c.ndpi",
        "sub/e.tif",
        "sub/deeper/d.tiff",
    ]
    assert all(p.is_absolute() for p in found)


def test_globs_list_files_explicit_files_and_duplicates(tmp_path: Path) -> None:
    a, b, c, odd = make_slides(
        tmp_path,
        {"in/a.svs": b"x", "in/sub/b.tif": b"x", "in2/c.ndpi": b"x", "in2/odd.qptiff": b"x"},
    )
    # glob (recursive), keeps only slide extensions
    assert discover_slides([str(tmp_path / "in" / "**" / "*")]) == [a, b]
    assert discover_slides([str(tmp_path / "in*" / "*.ndpi")]) == [c]
    # explicitly named file: any extension is passed to the reader
    assert discover_slides([odd]) == [odd]
    # list file: comments, blank lines, relative paths relative to the list file
    lst = tmp_path / "slides.txt"
    lst.write_text(f"# cohort\n\nin/a.svs   # first\n{c}\nin/sub\n  # indented comment\nin/a.svs\n")
    assert discover_slides([lst]) == [a, c, b]
    # duplicates across inputs removed, input order kept
    assert discover_slides([c, tmp_path / "in", a]) == [c, a, b]


def test_symlinked_slides_keep_their_link_path(tmp_path: Path) -> None:
    (real,) = make_slides(tmp_path, {"store/real.svs": b"x"})
    (tmp_path / "in").mkdir()
    link = tmp_path / "in" / "case.svs"
    link.symlink_to(real)
    assert discover_slides([tmp_path / "in"]) == [link]


def test_output_folder_inside_an_input_folder_is_not_searched(tmp_path: Path) -> None:
    (a,) = make_slides(tmp_path / "in", {"a.svs": b"x"})
    make_slides(tmp_path / "in" / "out" / "a", {"probability.ome.tif": b"x"})
    assert discover_slides([tmp_path / "in"], exclude=[tmp_path / "in" / "out"]) == [a]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda t: [str(t / "missing.svs")], r"input .*missing\.svs does not exist"),
        (lambda t: [str(t / "empty")], r"folder .*empty contains no slide files"),
        (lambda t: [str(t / "only_txt")], r"folder .*only_txt contains no slide files"),
        (lambda t: [str(t / "*.ndpi")], r"pattern .*\*\.ndpi' matches no slide files"),
        (lambda t: [str(t / "empty.txt")], r"list file .*empty\.txt names no slides"),
        (lambda t: [str(t / "bad_list.txt")], r"input .*nothere\.svs does not exist"),
        (lambda t: [], r"no input given"),
    ],
)
def test_bad_inputs_fail_before_any_work(tmp_path: Path, make: Any, expected: str) -> None:
    (tmp_path / "empty").mkdir()
    make_slides(tmp_path, {"only_txt/readme.txt": b"x"})
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "bad_list.txt").write_text("nothere.svs\n")
    with pytest.raises(InputError, match=expected) as info:
        discover_slides(make(tmp_path))
    assert "\n" not in str(info.value)


def test_slide_stem() -> None:
    assert slide_stem("/d/CMU-1.svs") == "CMU-1"
    assert slide_stem("/d/x.ome.tif") == "x"
    assert slide_stem("/d/x.OME.TIFF") == "x"
    assert slide_stem("/d/a.b.tiff") == "a.b"
    assert slide_stem("/d/case7/1.2.3.dcm") == "case7"
    assert slide_stem("/d/.hidden.svs") == "_hidden"


def test_identical_stems_get_distinct_deterministic_names(tmp_path: Path) -> None:
    slides = [
        tmp_path / "siteA" / "s1.svs",
        tmp_path / "siteB" / "s1.svs",
        tmp_path / "siteC" / "S1.ndpi",  # same stem up to case and extension
        tmp_path / "siteA" / "unique.svs",
    ]
    names = assign_output_names(slides)
    assert names == ["s1__siteA", "s1__siteB", "S1__siteC", "unique"]
    # deterministic and independent of order
    assert assign_output_names(slides[::-1])[::-1] == names
    # parent folder names collide too: a short hash of the path decides
    more = [*slides, tmp_path / "x" / "siteA" / "s1.tif"]
    names2 = assign_output_names(more)
    assert names2[1:4] == names[1:4]
    assert names2[0].startswith("s1__") and names2[4].startswith("s1__")
    assert len(names2[0]) == len(names2[4]) == len("s1__") + 8
    assert len({n.casefold() for n in names2}) == len(names2)
    assert assign_output_names(more[::-1])[::-1] == names2


# ----------------------------------------------------------------------------- output dir


def test_unwritable_output_folder_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        prepare_output_dir(blocker)
    with pytest.raises(OutputError, match="cannot be created"):
        prepare_output_dir(blocker / "sub")


def test_read_only_output_folder_is_refused(tmp_path: Path) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # root ignores permission bits; sysfs refuses new files even to root
        ro = Path("/sys")
        if not ro.is_dir():
            pytest.fail("running as root without /sys: no read-only folder to test with")
        with pytest.raises(OutputError, match="not writable"):
            prepare_output_dir(ro)
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            prepare_output_dir(ro)
    finally:
        ro.chmod(0o755)


def test_run_batch_refuses_unwritable_output_before_calling_the_worker(tmp_path: Path) -> None:
    slides = make_slides(tmp_path, {"a.svs": b"A"})
    blocker = tmp_path / "file"
    blocker.write_text("x")
    worker = FakeWorker()
    with pytest.raises(OutputError):
        run_batch(slides, blocker / "out", RunConfig(), FakeModel(), run_slide=worker)
    assert worker.calls == []


# ----------------------------------------------------------------------------- running


def test_resolve_model_defaults() -> None:
    cfg = resolve_model_defaults(RunConfig(), FakeModel().spec)
    assert (cfg.tiling.tile_size, cfg.tiling.spacing, cfg.model.layer) == (32, 1.0, "layer2")
    explicit = build_config(
        {}, {"tiling.tile_size": 64, "tiling.spacing": 0.5, "model.layer": "l1"}
    )
    cfg = resolve_model_defaults(explicit, FakeModel().spec)
    assert (cfg.tiling.tile_size, cfg.tiling.spacing, cfg.model.layer) == (64, 0.5, "l1")


def test_all_done_summary_and_layout(tmp_path: Path) -> None:
    slides = make_slides(tmp_path / "in", {"a.svs": b"A", "sub/b.svs": b"B", "other/a.svs": b"A2"})
    out = tmp_path / "out"
    worker = FakeWorker()
    summary = run_batch(slides, out, RunConfig(), FakeModel(), run_slide=worker)
    assert summary.exit_code == EXIT_OK
    assert worker.calls == ["a.svs", "b.svs", "a.svs"]
    assert sorted(p.name for p in out.iterdir()) == ["a__in", "a__other", "b", SUMMARY_NAME]
    assert (out / "b" / "tiles.csv").read_text().splitlines()[1] == "B,layer2,gradient-x-activation"
    assert leftovers(out) == []
    data = summary_of(out)
    assert data["status"] == "complete" and data["exit_code"] == 0
    assert data["counts"] == {"done": 3, "skipped": 0, "failed": 0}
    assert data["config_hash"] == config_hash(
        resolve_model_defaults(RunConfig(), FakeModel().spec),
        model_fingerprint(FakeModel().spec),
    )
    assert data["model"] == {"name": "fake", "weights_sha256": "a" * 64}
    entry = data["slides"][1]
    assert entry["input"] == str(slides[1])
    assert entry["status"] == "done" and entry["error"] is None
    assert entry["output"] == str(out / "b")
    assert entry["n_tiles"] == 3
    assert entry["timings"]["total"] >= 0 and entry["timings"]["model"] == 0.02
    assert isinstance(summary, BatchSummary) and summary.path == out / SUMMARY_NAME


def test_failure_isolation_records_one_line_reasons_and_writes_nothing(tmp_path: Path) -> None:
    slides = make_slides(
        tmp_path,
        {
            "1ok.svs": b"A",
            "2bad.svs": b"BAD",
            "3oom.svs": b"OOM",
            "4norun.svs": b"NORUN",
            "5ok.svs": b"E",
        },
    )
    out = tmp_path / "out"
    worker = FakeWorker()
    summary = run_batch(slides, out, RunConfig(), FakeModel(), run_slide=worker)
    assert worker.calls == [p.name for p in slides]  # the batch went on after each failure
    assert summary.exit_code == EXIT_FAILED
    data = summary_of(out)
    status = {e["name"]: (e["status"], e["error"]) for e in data["slides"]}
    assert status["1ok"] == ("done", None) and status["5ok"] == ("done", None)
    assert status["2bad"][0] == "failed"
    assert status["2bad"][1].startswith("SlideOpenError: cannot open")
    assert "\n" not in status["2bad"][1] and "check the file" in status["2bad"][1]
    assert status["3oom"] == ("failed", "MemoryError: out of memory")
    assert status["4norun"][0] == "failed" and "no run.json" in status["4norun"][1]
    assert data["counts"] == {"done": 2, "skipped": 0, "failed": 3}
    for name in ("2bad", "3oom", "4norun"):
        assert not (out / name).exists()
        entry = next(e for e in data["slides"] if e["name"] == name)
        assert entry["output"] is None
    assert leftovers(out) == []


def test_resume_skips_complete_and_redoes_changed_or_missing(tmp_path: Path) -> None:
    slides = make_slides(tmp_path, {"a.svs": b"A", "b.svs": b"B", "c.svs": b"C"})
    out = tmp_path / "out"
    model = FakeModel()
    run_batch(slides, out, RunConfig(), model, run_slide=FakeWorker())
    mtimes = {n: (out / n / "run.json").stat().st_mtime_ns for n in "abc"}

    # same configuration: everything skipped, nothing recomputed
    worker = FakeWorker()
    summary = run_batch(slides, out, RunConfig(), model, run_slide=worker)
    assert worker.calls == []
    assert [r.status for r in summary.records] == ["skipped"] * 3
    assert [r.output for r in summary.records] == [str(out / n) for n in "abc"]
    assert summary.records[0].n_tiles == 3 and summary.exit_code == EXIT_OK
    assert {n: (out / n / "run.json").stat().st_mtime_ns for n in "abc"} == mtimes

    # batch size and workers do not change outputs: still skipped
    fast = build_config({}, {"inference.batch_size": 4, "inference.workers": 0})
    worker = FakeWorker()
    run_batch(slides, out, fast, model, run_slide=worker)
    assert worker.calls == []

    # a missing output folder and an incomplete one are redone, the others skipped
    import shutil

    shutil.rmtree(out / "a")
    (out / "b" / "run.json").unlink()
    worker = FakeWorker()
    summary = run_batch(slides, out, RunConfig(), model, run_slide=worker)
    assert worker.calls == ["a.svs", "b.svs"]
    assert [r.status for r in summary.records] == ["done", "done", "skipped"]
    assert completed_run(out / "b") is not None
    assert leftovers(out) == []

    # changed layer or method: everything redone and replaced
    for overrides in ({"model.layer": "layer3"}, {"model.method": "grad-cam"}):
        worker = FakeWorker()
        cfg = build_config({}, overrides)
        summary = run_batch(slides, out, cfg, model, run_slide=worker)
        assert worker.calls == ["a.svs", "b.svs", "c.svs"], overrides
        line = (out / "c" / "tiles.csv").read_text().splitlines()[1]
        assert line == f"C,{cfg.model.layer or 'layer2'},{cfg.model.method}"
        assert leftovers(out) == []

    # different model weights: redone
    worker = FakeWorker()
    other = FakeModel(FakeSpec(weights_sha256="b" * 64))
    run_batch(slides, out, build_config({}, {"model.method": "grad-cam"}), other, run_slide=worker)
    assert worker.calls == ["a.svs", "b.svs", "c.svs"]

    # --overwrite forces
    worker = FakeWorker()
    cfg = build_config({}, {"model.method": "grad-cam"})
    run_batch(slides, out, cfg, other, run_slide=worker, overwrite=True)
    assert worker.calls == ["a.svs", "b.svs", "c.svs"]


def test_config_change_redoes_only_the_affected_slides(tmp_path: Path) -> None:
    """Two batches share an output folder; changing one batch's method redoes only its slides."""
    slides = make_slides(tmp_path, {"a.svs": b"A", "b.svs": b"B"})
    out = tmp_path / "out"
    grad = build_config({}, {"model.method": "gradient"})
    cam = build_config({}, {"model.method": "grad-cam"})
    run_batch(slides[:1], out, grad, FakeModel(), run_slide=FakeWorker())
    run_batch(slides[1:], out, cam, FakeModel(), run_slide=FakeWorker())
    worker = FakeWorker()
    summary = run_batch(slides, out, cam, FakeModel(), run_slide=worker)
    assert worker.calls == ["a.svs"]
    assert [r.status for r in summary.records] == ["done", "skipped"]


def test_stale_temporary_folders_are_cleaned(tmp_path: Path) -> None:
    slides = make_slides(tmp_path, {"a.svs": b"A"})
    out = tmp_path / "out"
    out.mkdir()
    dead = 2**22 + 12345  # above pid_max on Linux: never a live process
    stale = [
        out / f".tmp-a-{dead}",
        out / f".trash-a-{os.getpid()}",  # our own pid: a leftover of an earlier process
        out / f".tmp-batch-summary.json-{dead}",
    ]
    (stale[0] / "a").mkdir(parents=True)
    (stale[0] / "a" / "half.zarr").write_text("x")
    stale[1].mkdir()
    stale[2].write_text("{")
    live = out / ".tmp-b-1"  # pid 1 is alive: another batch may be writing it
    live.mkdir()
    run_batch(slides, out, RunConfig(), FakeModel(), run_slide=FakeWorker())
    assert not any(p.exists() for p in stale)
    assert live.exists()
    assert clean_stale_temp(out) == []  # pid 1 still running


def test_temporary_entries_of_other_hosts_are_left_until_old(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = 2**22 + 12345
    ours = out / f".tmp-a-{dead}@{outdir.host_name()}"
    remote = out / f".tmp-b-{dead}@another-node"
    old_remote = out / f".trash-c-{dead}@another-node"
    for p in (ours, remote, old_remote):
        p.mkdir()
    age = outdir.FOREIGN_TEMP_MAX_AGE_S + 60
    os.utime(old_remote, (time.time() - age, time.time() - age))
    assert sorted(clean_stale_temp(out)) == sorted([ours, old_remote])
    assert remote.exists()  # a Dask worker on another host may still be writing it


def test_summary_is_valid_and_updated_while_the_batch_runs(tmp_path: Path) -> None:
    slides = make_slides(tmp_path, {"a.svs": b"A", "b.svs": b"B", "c.svs": b"C"})
    out = tmp_path / "out"
    seen: list[list[str]] = []

    def spy(path: Path, out_dir: Path) -> None:
        seen.append([e["status"] for e in summary_of(out)["slides"]])
        assert summary_of(out)["status"] == "running"
        assert summary_of(out)["exit_code"] is None

    run_batch(slides, out, RunConfig(), FakeModel(), run_slide=FakeWorker(on_call=spy))
    assert seen == [
        ["pending", "pending", "pending"],
        ["done", "pending", "pending"],
        ["done", "done", "pending"],
    ]


def test_keyboard_interrupt_cleans_up_and_writes_the_summary(tmp_path: Path) -> None:
    slides = make_slides(tmp_path, {"a.svs": b"A", "b.svs": b"KBD", "c.svs": b"C"})
    out = tmp_path / "out"
    worker = FakeWorker()
    with pytest.raises(KeyboardInterrupt):
        run_batch(slides, out, RunConfig(), FakeModel(), run_slide=worker)
    assert worker.calls == ["a.svs", "b.svs"]
    assert leftovers(out) == []
    assert (out / "a" / "run.json").is_file() and not (out / "b").exists()
    data = summary_of(out)
    assert data["status"] == "interrupted" and data["exit_code"] == 130
    assert [e["status"] for e in data["slides"]] == ["done", "interrupted", "pending"]
    # the next run finishes the job without redoing a
    worker = FakeWorker()
    make_slides(tmp_path, {"b.svs": b"B"})
    summary = run_batch(slides, out, RunConfig(), FakeModel(), run_slide=worker)
    assert worker.calls == ["b.svs", "c.svs"]
    assert summary.exit_code == EXIT_OK


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.fail = fail

    def batch_started(self, summary: BatchSummary) -> None:
        self.events.append(("batch_started", len(summary.records)))

    def slide_started(self, index: int, record: SlideRecord) -> None:
        self.events.append(("slide_started", index))

    def slide_progress(self, done: int, total: int) -> None:
        if self.fail:
            raise RuntimeError("broken bar")
        self.events.append(("progress", done, total))

    def slide_finished(self, index: int, record: SlideRecord) -> None:
        self.events.append(("slide_finished", index, record.status))

    def batch_finished(self, summary: BatchSummary) -> None:
        self.events.append(("batch_finished", summary.status))


def test_reporter_receives_events_and_cannot_break_the_batch(tmp_path: Path) -> None:
    slides = make_slides(tmp_path, {"a.svs": b"A", "b.svs": b"BAD"})
    rec = Recorder()
    run_batch(
        slides, tmp_path / "out", RunConfig(), FakeModel(), run_slide=FakeWorker(), reporter=rec
    )
    assert rec.events == [
        ("batch_started", 2),
        ("slide_started", 0),
        ("progress", 1, 3),
        ("progress", 2, 3),
        ("progress", 3, 3),
        ("slide_finished", 0, "done"),
        ("slide_started", 1),
        ("slide_finished", 1, "failed"),
        ("batch_finished", "complete"),
    ]
    broken = Recorder(fail=True)
    summary = run_batch(
        slides,
        tmp_path / "out2",
        RunConfig(),
        FakeModel(),
        run_slide=FakeWorker(),
        reporter=broken,
    )
    assert [r.status for r in summary.records] == ["done", "failed"]


def test_names_must_be_distinct(tmp_path: Path) -> None:
    slides = make_slides(tmp_path, {"a.svs": b"A", "b.svs": b"B"})
    with pytest.raises(ValueError, match="distinct"):
        run_batch(
            slides,
            tmp_path / "o",
            RunConfig(),
            FakeModel(),
            run_slide=FakeWorker(),
            names=["x", "X"],
        )


# ----------------------------------------------------------------------------- SIGKILL

_KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_batch import FakeModel, FakeWorker
    from wsi_saliency.batch import run_batch
    from wsi_saliency.config import RunConfig

    def slow(path, out_dir):
        if path.name == "b.svs":
            (out_dir / "started").write_text("x")
            time.sleep(60)

    slides = [Path(p) for p in sys.argv[2:]]
    run_batch(slides, Path(sys.argv[1]), RunConfig(), FakeModel(), run_slide=FakeWorker(on_call=slow))
    """
)


def test_sigkill_mid_slide_leaves_no_finished_looking_folder(tmp_path: Path) -> None:
    slides = make_slides(tmp_path, {"a.svs": b"A", "b.svs": b"B", "c.svs": b"C"})
    out = tmp_path / "out"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(out), *map(str, slides)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".tmp-b-*/b/started")):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "worker never reached slide b"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr is not None:
            proc.stderr.close()
    # a is finished, b is only a temporary folder, c not started
    assert completed_run(out / "a") is not None
    assert not (out / "b").exists() and not (out / "c").exists()
    assert leftovers(out) == [f".tmp-b-{proc.pid}@{outdir.host_name()}"]
    assert [e["status"] for e in summary_of(out)["slides"]] == ["done", "pending", "pending"]
    # re-run: stale temp removed, a not recomputed, b and c done
    worker = FakeWorker()
    summary = run_batch(slides, out, RunConfig(), FakeModel(), run_slide=worker)
    assert worker.calls == ["b.svs", "c.svs"]
    assert [r.status for r in summary.records] == ["skipped", "done", "done"]
    assert leftovers(out) == []


def test_resume_accepts_a_run_json_hashed_by_another_implementation(tmp_path: Path) -> None:
    """A run.json whose config_hash string differs but whose recorded config matches is reused."""
    slides = make_slides(tmp_path, {"a.svs": b"A"})
    out = tmp_path / "out"
    run_batch(slides, out, RunConfig(), FakeModel(), run_slide=FakeWorker())
    run_json = out / "a" / "run.json"
    run = json.loads(run_json.read_text())
    expected = run["config_hash"]
    run["config_hash"] = "0" * 64
    run_json.write_text(json.dumps(run))
    record = RunRecord.from_dict(run)
    assert run_matches(record, expected, "a" * 64, model_fingerprint(FakeModel().spec))
    assert not run_matches(record, expected, "b" * 64)
    worker = FakeWorker()
    run_batch(slides, out, RunConfig(), FakeModel(), run_slide=worker)
    assert worker.calls == []
    # recorded config differs (method): redone
    run["config"]["model"]["method"] = "grad-cam"
    run_json.write_text(json.dumps(run))
    assert not run_matches(RunRecord.from_dict(run), expected, "a" * 64)
    run_batch(slides, out, RunConfig(), FakeModel(), run_slide=worker)
    assert worker.calls == ["a.svs"]
    # unparseable recorded config: redone, not a crash
    bad = dataclasses.replace(record, config_hash="x", config={"bogus": 1})
    assert not run_matches(bad, expected, "a" * 64)


def test_run_record_round_trip_and_refusals(tmp_path: Path) -> None:
    """run.json is a typed, versioned record: written, read back equal; bad files refused."""
    slide = make_slides(tmp_path, {"a.svs": b"A"})[0]
    record = fake_record(slide, FakeModel(), RunConfig())
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "tiles.csv").write_text("x\n")
    record.write(folder)
    data = json.loads((folder / "run.json").read_text())
    assert data["run_record_version"] == RUN_RECORD_VERSION
    assert read_run_record(folder) == dataclasses.replace(
        record, config=json.loads(json.dumps(record.config))
    )
    # written before the version field existed: read as version 1
    del data["run_record_version"]
    (folder / "run.json").write_text(json.dumps(data))
    assert read_run_record(folder) is not None
    for broken in (
        {**data, "run_record_version": RUN_RECORD_VERSION + 1},  # newer layout
        {k: v for k, v in data.items() if k != "tiling"},  # missing section
        {**data, "model": {**data["model"], "tumor_class": "one"}},  # wrong type
        [],
    ):
        (folder / "run.json").write_text(json.dumps(broken))
        assert read_run_record(folder) is None, broken
        if isinstance(broken, dict):
            with pytest.raises(RunRecordError):
                RunRecord.from_dict(broken)
    (folder / "run.json").write_text(json.dumps(data))
    (folder / "tiles.csv").unlink()  # a listed output is missing: not complete
    assert read_run_record(folder) is None


# ----------------------------------------------------------------------------- real worker


def make_small_slides(root: Path, n: int) -> list[Path]:
    """``n`` small generated SVS slides (1536 x 1024 px, 0.5 um/px) with planted tumour."""
    from wsi_saliency import synthetic

    paths = []
    for k in range(n):
        x0, y0 = 256.0 + 64 * k, 192.0
        tissue = ((x0, y0), (x0 + 1024, y0), (x0 + 1024, y0 + 640), (x0, y0 + 640))
        tumour = (
            (x0 + 128, y0 + 128),
            (x0 + 512, y0 + 128),
            (x0 + 512, y0 + 448),
            (x0 + 128, y0 + 448),
        )
        spec = synthetic.SyntheticSlide(
            width=1536, height=1024, mpp=0.5, tissue=(tissue,), tumour=(tumour,), seed=11 + k
        )
        paths.append(synthetic.write_slide(spec, root / f"slide{k + 1}.svs", kind="svs"))
    return paths


@pytest.mark.slow
def test_e2e_changing_layer_or_method_reruns_affected_slides_only(tmp_path: Path) -> None:
    """With the real worker: a config change re-runs exactly the slides it affects."""
    from wsi_saliency.config import load_config
    from wsi_saliency.models import load_model

    model = load_model(None)
    (tmp_path / "slides").mkdir()
    a, b = make_small_slides(tmp_path / "slides", 2)
    out = tmp_path / "out"

    def config(name: str, text: str) -> RunConfig:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text + "inference:\n  device: cpu\n  workers: 0\n")
        return build_config(load_config(path), {}, source=path)

    grad = config("grad", "model:\n  method: gradient\n  layer: layer3\n")
    cam = config("cam", "model:\n  method: grad-cam\n  layer: layer3\n")
    deeper = config("deeper", "model:\n  method: grad-cam\n  layer: layer2\n")

    def ident(name: str) -> tuple[int, int]:
        st = (out / name / "run.json").stat()
        return st.st_ino, st.st_mtime_ns

    def statuses(summary: BatchSummary) -> list[str]:
        return [r.status for r in summary.records]

    run_batch([a], out, grad, model)
    run_batch([b], out, cam, model)
    before = {n: ident(n) for n in (a.stem, b.stem)}
    # the method changed for a only: a redone, b skipped
    assert statuses(run_batch([a, b], out, cam, model)) == ["done", "skipped"]
    assert ident(a.stem) != before[a.stem] and ident(b.stem) == before[b.stem]
    saliency = json.loads((out / a.stem / "run.json").read_text())["saliency"]
    assert (saliency["method"], saliency["layer"]) == ("grad-cam", "layer3")
    # the layer changed: both redone
    assert statuses(run_batch([a, b], out, deeper, model)) == ["done", "done"]
    saliency = json.loads((out / b.stem / "run.json").read_text())["saliency"]
    assert saliency["layer"] == "layer2"
    # the same again: nothing redone
    again = {n: ident(n) for n in (a.stem, b.stem)}
    assert statuses(run_batch([a, b], out, deeper, model)) == ["skipped", "skipped"]
    assert {n: ident(n) for n in (a.stem, b.stem)} == again
    assert leftovers(out) == []


def test_model_config_edit_redoes_slides(tmp_path: Path) -> None:
    """Same weights, different normalisation or tumour class: outputs differ, so redo."""
    slides = make_slides(tmp_path / "in", {"a.svs": b"A"})
    out = tmp_path / "out"
    worker = FakeWorker()
    run_batch(slides, out, RunConfig(), FakeModel(), run_slide=worker)
    run_batch(slides, out, RunConfig(), FakeModel(), run_slide=worker)
    assert worker.calls == ["a.svs"]
    edited = FakeModel(spec=dataclasses.replace(FakeSpec(), patch_size=32, spacing=1.0))
    run_batch(slides, out, RunConfig(), edited, run_slide=worker)
    assert worker.calls == ["a.svs"]  # identical spec: still skipped
    edited = FakeModel(spec=dataclasses.replace(FakeSpec(), name="renamed"))
    run_batch(slides, out, RunConfig(), edited, run_slide=worker)
    assert worker.calls == ["a.svs"]  # a display name does not change outputs
    for change in ({"mean": (0.5, 0.5, 0.5)}, {"tumor_class": 0}):
        edited = FakeModel(spec=dataclasses.replace(FakeSpec(), **change))
        before = len(worker.calls)
        run_batch(slides, out, RunConfig(), edited, run_slide=worker)
        assert len(worker.calls) == before + 1, change


def test_sidecar_or_roi_change_redoes_only_that_slide(tmp_path: Path) -> None:
    slides = make_slides(tmp_path / "in", {"a.svs": b"A", "b.svs": b"B"})
    out = tmp_path / "out"
    worker = FakeWorker()
    cfg = build_config({}, {"tissue.roi": "{stem}.roi.geojson"})
    run_batch(slides, out, cfg, FakeModel(), run_slide=worker)
    assert sorted(worker.calls) == ["a.svs", "b.svs"]
    (tmp_path / "in" / "a.mpp.json").write_text('{"mpp": 0.25}')  # a sidecar appears
    run_batch(slides, out, cfg, FakeModel(), run_slide=worker)
    assert worker.calls[2:] == ["a.svs"]
    (tmp_path / "in" / "a.mpp.json").write_text('{"mpp": 0.5}')  # the spacing is fixed
    run_batch(slides, out, cfg, FakeModel(), run_slide=worker)
    assert worker.calls[3:] == ["a.svs"]
    (tmp_path / "in" / "b.roi.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    run_batch(slides, out, cfg, FakeModel(), run_slide=worker)
    assert worker.calls[4:] == ["b.svs"]
    run_batch(slides, out, cfg, FakeModel(), run_slide=worker)
    assert len(worker.calls) == 5  # nothing changed: all skipped


def test_ome_tif_stem_is_shared_by_output_folder_and_companions(tmp_path: Path) -> None:
    from wsi_saliency.inputs import companion_path

    slide = tmp_path / "x.ome.tif"
    assert slide_stem(slide) == "x"
    assert companion_path("{stem}.mpp.json", slide) == tmp_path / "x.mpp.json"
    assert companion_path("/abs/{name}.geojson", slide) == Path("/abs/x.ome.tif.geojson")


def test_symlink_cycles_and_duplicate_links_are_found_once(tmp_path: Path) -> None:
    root = tmp_path / "in"
    make_slides(root, {"s1.svs": b"A", "sub/s2.svs": b"B"})
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)  # a cycle
    (root / "s1-link.svs").symlink_to(root / "s1.svs")  # the same file again
    slides = discover_slides([root, root / "sub" / "s2.svs"])
    assert [p.relative_to(root).as_posix() for p in slides] == ["s1-link.svs", "sub/s2.svs"]


def test_commit_puts_the_older_result_back_when_the_new_one_cannot_move_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "a"
    final.mkdir()
    (final / "run.json").write_text("{}")
    work = tmp_path / ".tmp-a-1" / "a"
    work.mkdir(parents=True)
    real_rename = os.rename

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src) == work:
            raise KeyboardInterrupt  # e.g. Ctrl-C between the two renames
        real_rename(src, dst)

    monkeypatch.setattr(outdir.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        outdir.commit_folder(work, final)
    assert (final / "run.json").is_file()
    assert not any(p.name.startswith(".trash-") for p in tmp_path.iterdir())


def test_outputs_of_earlier_runs_are_not_slides(tmp_path: Path) -> None:
    root = tmp_path / "in"
    make_slides(root, {"s1.svs": b"A"})
    earlier = root / "results" / "s1"
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text("{}")
    (earlier / "probability.ome.tif").write_bytes(b"II*\0")
    (earlier / "saliency.ome.tif").write_bytes(b"II*\0")
    assert [p.name for p in discover_slides([root])] == ["s1.svs"]
