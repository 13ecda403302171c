"""``wsi-saliency score``: annotations, bad inputs, outputs, and end to end on slides
carrying the official Camelyon16 lesion polygons."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import zarr
from click.testing import CliRunner, Result

from wsi_saliency.cli import cli
from wsi_saliency.errors import AnnotationError
from wsi_saliency.scoring.annotations import match_annotations, read_lesions
from wsi_saliency.scoring.planted import write_asap_xml, write_geojson, write_ncrf_json

REPO = Path(__file__).resolve().parents[1]


def fake_run_slide(
    out: Path,
    name: str,
    prob: np.ndarray,
    *,
    mpp: float = 0.5,
    pixel_size_um: float = 8.0,
    saliency: np.ndarray | None = None,
) -> Path:
    """A slide folder as `run` writes it (run.json, heatmaps.ome.zarr, tiles.csv): 224 px
    tiles at 0.5 um/px, 14 x 14 maps, no overlap; one tile per 14 x 14 heatmap block that
    has any finite probability, with that block's mean as its probability."""
    folder = out / name
    folder.mkdir(parents=True)
    h, w = prob.shape
    ds = pixel_size_um / mpp
    dims = (int(w * ds), int(h * ds))
    sal = saliency if saliency is not None else np.where(np.isfinite(prob), prob - 0.5, np.nan)
    run = {
        "slide": {"file": f"{name}.svs", "dimensions": list(dims), "mpp": {"x": mpp, "y": mpp}},
        "model": {"class_names": ["normal", "tumor"], "tumor_class": 1},
        "heatmap": {"pixel_size_um": pixel_size_um, "shape": [h, w]},
        "tiling": {"tile_size": 224, "stride": 224},
        "saliency": {"map_shape": [14, 14]},
    }
    (folder / "run.json").write_text(json.dumps(run))
    root = zarr.open_group(str(folder / "heatmaps.ome.zarr"), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(2, h, w), chunks=(1, 64, 64), dtype="float32",
                            fill_value=float("nan"))
    arr[:] = np.stack([prob, sal]).astype(np.float32)
    root.attrs["multiscales"] = [{"datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, pixel_size_um, pixel_size_um]}]}]}]
    root.attrs["omero"] = {"channels": [{"label": "probability_tumor"}, {"label": "saliency"}]}
    lines = ["tile,x,y,width,height,grid_row,grid_col,tissue_fraction,prob_normal,prob_tumor,"
             "predicted_class,saliency_mean,saliency_max,saliency_positive_fraction"]
    k = 0
    for r in range(0, -(-h // 14)):
        for c in range(0, -(-w // 14)):
            block = prob[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14]
            if not np.isfinite(block).any():
                continue
            p = float(np.nanmean(block))
            lines.append(f"{k},{c * 224},{r * 224},224,224,{r},{c},1,{1 - p:.6g},{p:.6g},"
                         f"{'tumor' if p >= 0.5 else 'normal'},0,0,0")
            k += 1
    (folder / "tiles.csv").write_text("\n".join(lines) + "\n")
    return folder


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def toy_run(tmp_path: Path) -> tuple[Path, Path]:
    """Two 1024 x 1024 px slides at 0.5 um/px, 8 um heatmap pixels (16 level-0 px): ``t1``
    with one lesion (level-0 box 100..600 px, 250 um: not an ITC) detected at 0.9 and a false positive at 0.7;
    ``n1`` negative with a false positive at 0.6. Annotations in ``ann/``."""
    out = tmp_path / "run"
    prob = np.full((64, 64), 0.1, np.float32)
    prob[40:, :] = np.nan  # no tile there
    p1 = prob.copy()
    p1[8:12, 8:12] = 0.9  # pixel (8, 8) first: level-0 (136, 136), inside the lesion
    p1[5, 50] = 0.7  # level-0 (808, 88)
    p2 = prob.copy()
    p2[10, 40] = 0.6  # level-0 (648, 168)
    fake_run_slide(out, "t1", p1)
    fake_run_slide(out, "n1", p2)
    ann = tmp_path / "ann"
    ann.mkdir()
    write_geojson(shapely.box(100, 100, 600, 600), ann / "t1.geojson")
    return out, ann


def test_score_toy_run_by_hand(toy_run: tuple[Path, Path], tmp_path: Path,
                               caplog: pytest.LogCaptureFixture) -> None:
    out, ann = toy_run
    with caplog.at_level(logging.INFO, logger="wsi_saliency"):
        res = invoke("score", out, "--annotations", f"{ann}/{{stem}}.geojson", "--out",
                     tmp_path / "scores")
    assert res.exit_code == 0, res.output
    assert "FROC score" in res.output
    msgs = [r.getMessage() for r in caplog.records if "without an annotation" in r.getMessage()]
    assert msgs == ["1 slide(s) without an annotation file, scored as negative: n1"]
    files = sorted(p.name for p in (tmp_path / "scores").iterdir())
    assert files == sorted(["scores.json", "slides.csv", "detections.csv", "froc.png",
                            "roc.png", "topk_dice.png", "summary.md"])
    s = json.loads((tmp_path / "scores" / "scores.json").read_text())
    c = s["camelyon16"]
    # FPs 0.7 (t1) and 0.6 (n1) over 2 slides, lesion hit at 0.9:
    # thresholds 0.6, 0.7, 0.9 -> (1, 1), (0.5, 1), (0, 1), then (0, 0): sensitivity 1 at all
    assert c["lesions"] == 1 and c["itc"] == 0
    assert c["curve"]["fp_per_slide"] == [1.0, 0.5, 0.0, 0.0]
    assert c["froc_score"] == pytest.approx(1.0)
    assert c["slide_auc"] == pytest.approx(1.0)  # 0.9 vs 0.6
    det = (tmp_path / "scores" / "detections.csv").read_text().splitlines()
    assert det[1:] == ["n1,648,168,0.6,FP,0", "t1,136,136,0.9,TP,1", "t1,808,88,0.7,FP,0"]
    summary = (tmp_path / "scores" / "summary.md").read_text()
    assert summary.startswith("| score | value |")


def test_default_report_folder_and_negatives_list(toy_run: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    out, ann = toy_run
    neg = tmp_path / "neg.txt"
    neg.write_text("# negatives\nn1\n")
    res = invoke("score", out, "-a", f"{ann}/{{stem}}.geojson", "--negatives", neg, "-q")
    assert res.exit_code == 0, res.output
    assert res.output == ""
    assert (out / "scores" / "scores.json").is_file()
    # with a negatives list, a slide neither listed nor annotated is an error
    neg.write_text("other\n")
    res = invoke("score", out, "-a", f"{ann}/{{stem}}.geojson", "--negatives", neg)
    assert res.exit_code == 2
    assert "slide n1: no annotation file" in res.output


@pytest.mark.parametrize(
    ("content", "suffix", "expect"),
    [
        ("<ASAP_Annotations><Annotations>", ".xml", "not valid ASAP XML"),
        ("", ".xml", "the annotation file is empty"),
        ("   \n", ".geojson", "the annotation file is empty"),
        ('{"type": "FeatureCollection", "features": [', ".geojson", "not valid JSON"),
        ("outside", ".geojson", "coordinates must be level-0 pixels of this slide"),
        ("outside", ".xml", "coordinates must be level-0 pixels of this slide"),
        ('{"positive": [{"vertices": [["a", 1], [2, 3], [4, 5]]}]}', ".json", "not numbers"),
        ("x", ".txt", "unknown annotation format"),
    ],
)
def test_bad_annotations_one_line_error_naming_the_file(
    toy_run: tuple[Path, Path], tmp_path: Path, content: str, suffix: str, expect: str
) -> None:
    out, ann = toy_run
    (ann / "t1.geojson").unlink()
    bad = ann / f"t1{suffix}"
    if content == "outside":  # the slide is 1024 x 1024 level-0 px
        geom = shapely.box(900, 900, 1200, 1000)
        (write_geojson if suffix == ".geojson" else write_asap_xml)(geom, bad)
    else:
        bad.write_text(content)
    res = invoke("score", out, "-a", f"{ann}/{{stem}}{suffix}", "--out", tmp_path / "scores")
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1, res.output
    assert str(bad) in lines[0] and expect in lines[0]
    assert not (tmp_path / "scores").exists()


def test_read_lesions_formats_and_exclusions(tmp_path: Path) -> None:
    lesion = shapely.box(100, 100, 500, 500)
    for writer, name in ((write_asap_xml, "a.xml"), (write_geojson, "a.geojson"),
                         (write_ncrf_json, "a.json")):
        les = read_lesions(writer(lesion, tmp_path / name), (1000, 1000))
        assert les.is_tumour and les.geometry.symmetric_difference(lesion).area < 1e-6
    # a QuPath exclusion is cut out; a Point is ignored
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": shapely.geometry.mapping(lesion),
         "properties": {"classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": shapely.geometry.mapping(shapely.box(200, 200, 300, 300)),
         "properties": {"classification": {"name": "Exclusion"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}},
    ]}
    (tmp_path / "q.geojson").write_text(json.dumps(fc))
    les = read_lesions(tmp_path / "q.geojson", (1000, 1000))
    assert les.geometry.area == pytest.approx(400 * 400 - 100 * 100)
    # a well-formed file without lesions (NCRF normal-tissue JSON) is a negative slide
    (tmp_path / "n.json").write_text(json.dumps({"positive": [], "negative": [
        {"vertices": [[0, 0], [10, 0], [10, 10]]}]}))
    assert not read_lesions(tmp_path / "n.json", (1000, 1000)).is_tumour


def test_match_annotations_patterns_and_conflicts(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("x")
    (tmp_path / "b.geojson").write_text("x")
    pats = [f"{tmp_path}/{{stem}}.xml", f"{tmp_path}/{{stem}}.geojson"]
    m = match_annotations([("a", "a.svs"), ("b", "b.svs"), ("c", "c.svs")], pats)
    assert m == {"a": tmp_path / "a.xml", "b": tmp_path / "b.geojson", "c": None}
    with pytest.raises(AnnotationError, match="listed as negative but has"):
        match_annotations([("a", "a.svs")], pats, negatives=["a"])
    with pytest.raises(AnnotationError, match="names slides not in the run: zz"):
        match_annotations([("c", "c.svs")], pats, negatives=["c", "zz"])


def test_run_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = invoke("score", tmp_path / "empty", "-a", "{stem}.xml")
    assert res.exit_code == 2 and "no slide folder with a run.json" in res.output
    fake_run_slide(tmp_path / "r", "s", np.full((14, 14), 0.2, np.float32))
    (tmp_path / "r" / "s" / "tiles.csv").unlink()
    res = invoke("score", tmp_path / "r", "-a", "{stem}.xml")
    assert res.exit_code == 2 and "tiles.csv" in res.output and "cannot read" in res.output


# ------------------------------------------------------------------ end to end

LESIONS = {"Tumor_002": write_ncrf_json, "Tumor_081": write_geojson, "Tumor_093": write_asap_xml}
SUFFIX = {write_ncrf_json: "json", write_geojson: "geojson", write_asap_xml: "xml"}


@pytest.mark.slow
@pytest.mark.real_data
def test_e2e_camelyon16_polygons_demo_model(test_data_dir: Path, tmp_path: Path) -> None:
    """Official Camelyon16 polygons (shrunk to 1/2 about the origin) planted at 0.243 um/px
    with the project's tumour texture, plus a negative slide; `run` with the demo model and
    configuration at overlap 0.5, then `score`. At 1/2 scale Tumor_081 (279 x 189 um originally) becomes
    140 x 94 um: an ITC (215 um < 275 um after the growth)."""
    from wsi_saliency.roi import read_annotations
    from wsi_saliency.scoring.planted import planted_slide

    slides, ann = tmp_path / "slides", tmp_path / "ann"
    slides.mkdir()
    ann.mkdir()
    for name, writer in LESIONS.items():
        geom = read_annotations(
            test_data_dir / "camelyon16" / "ncrf_json" / f"{name}.json"
        ).tumour_geometry()
        _, local = planted_slide(geom, slides / f"{name.lower()}.tif", scale=0.5)
        writer(local, ann / f"{name.lower()}.{SUFFIX[writer]}")
    planted_slide(shapely.Polygon(), slides / "normal_001.tif", size=(2000, 2000), seed=7)
    out = tmp_path / "out"
    # half-tile overlap as configs/camelyon16.yaml: at the default overlap (1/7) the
    # probability map is about one tile per value and the pooled pixel Dice is ~0.69
    res = invoke("run", slides, "--out", out, "--config", REPO / "configs" / "demo.yaml",
                 "--overlap", "0.5", "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    args = ["score", out, "--out", tmp_path / "scores"]
    for suffix in ("xml", "geojson", "json"):
        args += ["-a", f"{ann}/{{stem}}.{suffix}"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "scores" / "scores.json").read_text())
    c = s["camelyon16"]
    by = {x["name"]: x for x in s["slides"]}
    assert c["slides"] == 4 and c["tumour_slides"] == 3
    assert c["lesions"] == 2 and c["itc"] == 1
    assert by["tumor_081"]["itc"] == 1 and by["tumor_081"]["lesions"] == 0
    # the negative slide contributes only false positives
    assert by["normal_001"]["label"] == "negative" and by["normal_001"]["lesions"] == 0
    assert by["normal_001"]["false_positives"] == by["normal_001"]["detections"]
    # measured: FROC 1.0, slide AUC 1.0, pixel AUROC 0.995, saliency AUROC 0.98, pointing 1.0
    assert c["froc_score"] >= 0.9
    assert c["slide_auc"] == pytest.approx(1.0)
    assert s["pixel"]["auroc"] > 0.97
    assert s["pixel"]["dice_at_0.5"] > 0.7
    assert s["saliency"]["auroc_positive_mean"] > 0.9
    assert s["saliency"]["pointing_accuracy"] > 0.9
    assert s["saliency"]["topk_dice_best"] > 0.6


def test_failed_slides_are_named_and_progress_is_reported(
    toy_run: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from wsi_saliency.scoring import score_run

    out, ann = toy_run
    (out / "batch-summary.json").write_text(json.dumps({"slides": [
        {"name": "t1", "status": "done"}, {"name": "bad", "status": "failed"}]}))
    calls: list[tuple[int, int, str]] = []
    with caplog.at_level(logging.INFO, logger="wsi_saliency"):
        scores = score_run(out, [f"{ann}/{{stem}}.geojson"],
                           progress=lambda d, t, n: calls.append((d, t, n)))
    assert calls == [(1, 2, "n1"), (2, 2, "t1")]
    assert any("1 slide(s) failed in the run" in r.getMessage() and "bad" in r.getMessage()
               for r in caplog.records)
    assert [s.slide.name for s in scores.slides] == ["n1", "t1"]
    assert scores.froc_score == pytest.approx(1.0)
