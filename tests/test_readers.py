"""Slide readers: backends, spacing policy, pixel-type checks, bad inputs, geometry."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_saliency import synthetic
from wsi_saliency.errors import (
    ConfigError,
    MissingMppError,
    SlideOpenError,
    UnsupportedPixelTypeError,
)
from wsi_saliency.readers import BACKENDS as READER_BACKENDS
from wsi_saliency.readers import SlideReader, composite_on_white, open_slide
from wsi_saliency.readers.mpp import mpp_from_resolution, vendor_mpp
from wsi_saliency.types import Mpp

#: Every concrete backend (the package's own list, so a new backend is tested here too).
BACKENDS = tuple(b for b in READER_BACKENDS if b != "auto")
#: Backends that read JPEG 2000 tiles (the pyvips-binary libvips has no JPEG 2000).
JP2K_BACKENDS = ("openslide", "tiffslide")

SMALL = synthetic.SyntheticSlide(
    width=512,
    height=384,
    mpp=0.5,
    tissue=(((100.0, 100.0), (400.0, 100.0), (400.0, 300.0), (100.0, 300.0)),),
)


# ----------------------------------------------------------------------- real slides


@pytest.mark.real_data
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_slides_open_with_both_backends(
    cmu_slide: Path, tcga_slide: Path, backend: str
) -> None:
    with open_slide(cmu_slide, backend=backend) as r:
        assert isinstance(r, SlideReader)
        info = r.info
        assert info.backend == backend
        assert info.dimensions == (2220, 2967)
        assert info.level_dimensions == ((2220, 2967),)
        assert info.mpp == Mpp(0.499, 0.499, "aperio")
        assert info.objective_power == 20.0
        assert info.vendor == "aperio"
    if backend not in JP2K_BACKENDS:
        return
    with open_slide(tcga_slide, backend=backend, mpp=0.25) as r:
        assert r.info.dimensions == (4443, 3567)
        assert r.info.level_dimensions == ((4443, 3567), (2221, 1783))
        assert r.info.mpp == Mpp(0.25, 0.25, "override")


@pytest.mark.real_data
def test_backends_agree_on_real_slides(cmu_slide: Path, tcga_slide: Path) -> None:
    for path, mpp, backends in ((cmu_slide, None, BACKENDS), (tcga_slide, 0.25, JP2K_BACKENDS)):
        infos = []
        pixels = []
        for backend in backends:
            with open_slide(path, backend=backend, mpp=mpp) as r:
                infos.append(dataclasses.replace(r.info, backend="x"))
                pixels.append(r.read_region((1000, 1200), 0, (128, 96)).astype(int))
        for info, pix in zip(infos[1:], pixels[1:], strict=True):
            assert info == infos[0]
            assert np.abs(pix - pixels[0]).mean() < 1.0


@pytest.mark.real_data
def test_auto_picks_pyvips_per_file_and_falls_back(cmu_slide: Path, tcga_slide: Path) -> None:
    """auto: pyvips where it reads the slide identically (CMU, JPEG), OpenSlide where
    pyvips cannot read it (TCGA, JPEG 2000) and tiffslide reads its level 1 (downsample
    2.0005) differently (OpenSlide interpolates the fractional level positions)."""
    with open_slide(cmu_slide) as r:
        assert r.info.backend == "pyvips"
    with open_slide(tcga_slide, mpp=0.25) as r:
        assert r.info.backend == "openslide"
    with pytest.raises(SlideOpenError) as ei:
        open_slide(tcga_slide, mpp=0.25, backend="pyvips")
    msg = str(ei.value)
    assert "\n" not in msg and "TCGA-CR-7395-01A-01-TS1.svs" in msg
    assert "JPEG 2000" in msg and "--backend auto" in msg


@pytest.mark.real_data
def test_pyvips_pixels_equal_tiffslide_on_real_slide(cmu_slide: Path) -> None:
    with open_slide(cmu_slide, backend="pyvips") as a, open_slide(
        cmu_slide, backend="tiffslide"
    ) as b:
        for x, y in ((0, 0), (1000, 1200), (2100, 2900)):
            pa = a.read_region((x, y), 0, (240, 240)).astype(int)
            pb = b.read_region((x, y), 0, (240, 240)).astype(int)
            assert np.abs(pa - pb).mean() <= 1.0 and np.abs(pa - pb).max() <= 8


@pytest.mark.real_data
@pytest.mark.parametrize("backend", ("auto", *JP2K_BACKENDS))
def test_tcga_without_mpp_names_file_and_fix(tcga_slide: Path, backend: str) -> None:
    with pytest.raises(MissingMppError) as ei:
        open_slide(tcga_slide, backend=backend)
    msg = str(ei.value)
    assert "TCGA-CR-7395-01A-01-TS1.svs" in msg and "--mpp" in msg
    assert "\n" not in msg
    assert isinstance(ei.value, ValueError)
    # require_mpp=False opens it without a spacing
    with open_slide(tcga_slide, backend=backend, require_mpp=False) as r:
        assert r.info.mpp is None


@pytest.mark.real_data
def test_no_associated_images_or_patient_properties(cmu_slide: Path) -> None:
    for backend in BACKENDS:
        with open_slide(cmu_slide, backend=backend) as r:
            text = repr(dataclasses.asdict(r.info)) + repr(r) + repr(vars(r))
            for leak in ("b414003d", "CMU-1|", "User", "Date", "ScanScope", "label", "macro"):
                assert leak not in text
            for attr in ("associated_images", "properties", "label", "macro"):
                assert not hasattr(r, attr)


@pytest.mark.real_data
def test_generic_tiff_with_72dpi_has_no_plausible_mpp(test_data_dir: Path) -> None:
    boxes = test_data_dir / "slides" / "boxes.tiff"
    for backend in BACKENDS:
        with pytest.raises(MissingMppError):
            open_slide(boxes, backend=backend)
        with open_slide(boxes, backend=backend, require_mpp=False) as r:
            assert r.info.vendor == "generic-tiff"
            assert r.info.level_count == 4


# ------------------------------------------------------------------- spacing policy


def test_mpp_from_svs_and_tiff_tags(tmp_path: Path) -> None:
    svs = synthetic.write_slide(SMALL, tmp_path / "a.svs", kind="svs", tile=128)
    tif = synthetic.write_slide(SMALL, tmp_path / "a.tiff", kind="tiff", tile=128)
    for backend in BACKENDS:
        with open_slide(svs, backend=backend) as r:
            assert r.info.mpp == Mpp(0.5, 0.5, "aperio")
        with open_slide(tif, backend=backend) as r:
            assert r.info.mpp is not None
            assert r.info.mpp.source == "tiff-resolution"
            assert r.info.mpp.x == pytest.approx(0.5) and r.info.mpp.y == pytest.approx(0.5)


def test_mpp_inch_units_and_separate_axes(tmp_path: Path) -> None:
    path = tmp_path / "inch.tiff"
    data = synthetic.render_region(SMALL, 0, 0, 512, 384)
    # 50800 px/inch = 0.5 um/px along x; 25400 px/inch = 1.0 um/px along y
    tifffile.imwrite(
        path,
        data,
        tile=(128, 128),
        photometric="rgb",
        resolution=(50800, 25400),
        resolutionunit="INCH",
    )
    for backend in BACKENDS:
        with open_slide(path, backend=backend) as r:
            assert r.info.mpp is not None
            assert r.info.mpp.source == "tiff-resolution"
            assert (r.info.mpp.x, r.info.mpp.y) == (pytest.approx(0.5), pytest.approx(1.0))


def test_policy_order_override_sidecar_vendor(tmp_path: Path) -> None:
    svs = synthetic.write_slide(SMALL, tmp_path / "s.svs", kind="svs", tile=128)
    (tmp_path / "s.mpp.json").write_text(json.dumps({"mpp_x": 0.3, "mpp_y": 0.31}))
    with open_slide(svs) as r:
        assert r.info.mpp == Mpp(0.3, 0.31, "sidecar")
    with open_slide(svs, mpp=0.2) as r:
        assert r.info.mpp == Mpp(0.2, 0.2, "override")
    with open_slide(svs, mpp=(0.2, 0.4)) as r:
        assert r.info.mpp == Mpp(0.2, 0.4, "override")
    with open_slide(svs, mpp_sidecar=None) as r:
        assert r.info.mpp == Mpp(0.5, 0.5, "aperio")
    # custom pattern
    (tmp_path / "spacing-s.svs.json").write_text(json.dumps({"mpp": 0.7}))
    with open_slide(svs, mpp_sidecar="spacing-{name}.json") as r:
        assert r.info.mpp == Mpp(0.7, 0.7, "sidecar")


def test_sidecar_rescues_slide_without_mpp(tmp_path: Path) -> None:
    svs = synthetic.write_slide(SMALL, tmp_path / "n.svs", kind="svs", tile=128, write_mpp=False)
    with pytest.raises(MissingMppError, match=r"n\.svs.*--mpp"):
        open_slide(svs)
    (tmp_path / "n.mpp.json").write_text('{"mpp": 0.25}')
    with open_slide(svs) as r:
        assert r.info.mpp == Mpp(0.25, 0.25, "sidecar")


@pytest.mark.parametrize(
    "content", ["not json", "[1, 2]", '{"spacing": 1}', '{"mpp": -1}', '{"mpp": "x"}']
)
def test_bad_sidecar_is_config_error(tmp_path: Path, content: str) -> None:
    svs = synthetic.write_slide(SMALL, tmp_path / "b.svs", kind="svs", tile=128)
    (tmp_path / "b.mpp.json").write_text(content)
    with pytest.raises(ConfigError, match=r"b\.mpp\.json"):
        open_slide(svs)


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), (0.5,), "abc", True])
def test_bad_override(tmp_path: Path, bad: object) -> None:
    svs = synthetic.write_slide(SMALL, tmp_path / "o.svs", kind="svs", tile=128)
    with pytest.raises(ConfigError):
        open_slide(svs, mpp=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [500, 0.001, (0.25, 352.8), 1e9])
def test_implausible_override_refused_before_any_read(tmp_path: Path, bad: object) -> None:
    """--mpp 500 used to pass and end in a 173 GiB thumbnail allocation."""
    svs = synthetic.write_slide(SMALL, tmp_path / "o.svs", kind="svs", tile=128)
    with pytest.raises(ConfigError) as ei:
        open_slide(svs, mpp=bad)  # type: ignore[arg-type]
    msg = str(ei.value)
    assert "\n" not in msg
    assert "o.svs" in msg and "--mpp" in msg and "mpp=" in msg  # where it came from
    assert "outside the plausible 0.01-50 um/px" in msg
    assert "magnification" in msg and "0.25 um/px is typical at 40x" in msg
    # the edges of the plausible range are accepted
    for ok in (0.01, 50.0):
        with open_slide(svs, mpp=ok) as r:
            assert r.info.mpp == Mpp(ok, ok, "override")


@pytest.mark.parametrize(
    ("content", "value"),
    [('{"mpp": 500}', "500"), ('{"mpp_x": 0.25, "mpp_y": 0.005}', "0.005")],
)
def test_implausible_sidecar_refused(tmp_path: Path, content: str, value: str) -> None:
    svs = synthetic.write_slide(SMALL, tmp_path / "b.svs", kind="svs", tile=128)
    (tmp_path / "b.mpp.json").write_text(content)
    with pytest.raises(ConfigError) as ei:
        open_slide(svs)
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"MPP sidecar {tmp_path / 'b.mpp.json'}" in msg
    assert f"spacing {value} um/px is outside the plausible" in msg
    assert '{"mpp": 0.25}' in msg and "magnification" in msg
    # ignored sidecars do not matter
    with open_slide(svs, mpp_sidecar=None) as r:
        assert r.info.mpp == Mpp(0.5, 0.5, "aperio")


def test_missing_mpp_message_names_cli_api_and_sidecar(tmp_path: Path) -> None:
    svs = synthetic.write_slide(SMALL, tmp_path / "n.svs", kind="svs", tile=128, write_mpp=False)
    with pytest.raises(MissingMppError) as ei:
        open_slide(svs)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "--mpp (CLI" in msg and "mpp= (open_slide)" in msg and "n.mpp.json" in msg
    with pytest.raises(MissingMppError) as ei:
        open_slide(svs, mpp_sidecar=None)
    assert "mpp.json" not in str(ei.value) and "mpp= (open_slide)" in str(ei.value)


def test_vendor_mpp_and_resolution_helpers() -> None:
    assert vendor_mpp(
        {"openslide.vendor": "hamamatsu", "openslide.mpp-x": "0.23", "openslide.mpp-y": "0.24"},
        "openslide",
    ) == (0.23, 0.24, "openslide")
    assert vendor_mpp({"openslide.vendor": "aperio", "aperio.MPP": "0.4990"}, "openslide") == (
        0.499,
        0.499,
        "aperio",
    )
    assert (
        vendor_mpp({"openslide.vendor": "generic-tiff", "openslide.mpp-x": "0.5"}, "openslide")
        is None
    )
    assert vendor_mpp(
        {"tiffslide.vendor": "aperio", "tiffslide.mpp-x": 0.5, "tiffslide.mpp-y": 0.5}, "tiffslide"
    ) == (0.5, 0.5, "aperio")
    assert vendor_mpp({"openslide.vendor": "x", "openslide.mpp-x": "0"}, "openslide") is None
    assert mpp_from_resolution(20000, 20000, 3) == (0.5, 0.5)
    assert mpp_from_resolution(50800, 50800, 2) == (0.5, 0.5)
    assert mpp_from_resolution(20000, 20000, 1) is None  # no unit
    assert mpp_from_resolution(72, 72, 2) is None  # 352.8 um/px: not physical


# ------------------------------------------------------------- pixel types, bad files


def test_single_channel_rejected(tmp_path: Path) -> None:
    path = tmp_path / "grey.tiff"
    tifffile.imwrite(
        path, np.zeros((256, 256), np.uint8), tile=(128, 128), photometric="minisblack"
    )
    with pytest.raises(UnsupportedPixelTypeError, match="single-channel"):
        open_slide(path, mpp=0.5)


def test_multiplex_fluorescence_rejected(tmp_path: Path) -> None:
    path = tmp_path / "mplex.ome.tiff"
    tifffile.imwrite(
        path,
        np.zeros((5, 256, 256), np.uint8),
        tile=(128, 128),
        photometric="minisblack",
        metadata={"axes": "CYX"},
        ome=True,
    )
    with pytest.raises(UnsupportedPixelTypeError, match="multi-channel"):
        open_slide(path, mpp=0.5)


def test_unknown_backend(rect_svs: Path) -> None:
    with pytest.raises(ValueError, match="backend"):
        open_slide(rect_svs, backend="pyvips-nope")


def test_auto_falls_back_to_tiffslide(tmp_path: Path) -> None:
    # a stripped (untiled) TIFF: OpenSlide's generic-tiff driver refuses it; tiffslide is
    # the reference, and pyvips, which reads it identically, serves it
    path = tmp_path / "stripped.tif"
    data = synthetic.render_region(SMALL, 0, 0, 512, 384)
    tifffile.imwrite(
        path, data, photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER"
    )
    for backend in ("auto", "tiffslide", "pyvips"):
        with open_slide(path, backend=backend) as r:
            assert r.info.backend == ("pyvips" if backend == "auto" else backend)
            np.testing.assert_array_equal(r.read_region((0, 0), 0, (512, 384)), data)
    with pytest.raises(SlideOpenError):
        open_slide(path, backend="openslide")


def _jp2k_tiff(path: Path) -> tuple[Path, np.ndarray]:
    data = synthetic.render_region(SMALL, 0, 0, 512, 384)
    tifffile.imwrite(
        path,
        data,
        tile=(128, 128),
        photometric="rgb",
        compression="jpeg2000",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    return path, data


def test_file_pyvips_cannot_read_falls_back_per_file(tmp_path: Path, rect_svs: Path) -> None:
    """A JPEG 2000 tiled TIFF (no JPEG 2000 in pyvips-binary's libvips): auto serves it
    with the next backend that reads it, while a JPEG slide next to it gets pyvips;
    forcing pyvips on it is a one-line error naming the file and the fix."""
    path, data = _jp2k_tiff(tmp_path / "j2k.tiff")
    with open_slide(rect_svs) as r:
        assert r.info.backend == "pyvips"
    with open_slide(path) as r:
        assert r.info.backend in JP2K_BACKENDS
        assert np.abs(r.read_region((0, 0), 0, (512, 384)).astype(int) - data).mean() < 2
    with pytest.raises(SlideOpenError) as ei:
        open_slide(path, backend="pyvips")
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    assert "pyvips" in msg and "JPEG 2000" in msg and "--backend auto" in msg
    assert isinstance(ei.value, OSError)


def test_auto_rejects_pyvips_when_pixels_differ(
    rect_svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identity check is real: pyvips pixels off by a few grey levels on a probe
    window make auto keep the reference backend."""
    from wsi_saliency.readers import pyvips_backend

    orig = pyvips_backend.PyVipsReader._read_level_raw

    def shifted(self: object, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        a = orig(self, level, x, y, w, h)  # type: ignore[arg-type]
        return np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)

    with open_slide(rect_svs) as r:
        assert r.info.backend == "pyvips"
    monkeypatch.setattr(pyvips_backend.PyVipsReader, "_read_level_raw", shifted)
    with open_slide(rect_svs) as r:  # the next fastest that reads it like OpenSlide
        assert r.info.backend == "tiffslide"


def test_auto_order_fastest_identical_then_reference(
    rect_svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyvips unavailable: tiffslide (faster than OpenSlide, identical on this slide);
    tiffslide reading differently too: the reference, OpenSlide."""
    from wsi_saliency.readers import _open

    def refuse(path: str) -> None:
        raise ValueError("no pyvips here")

    monkeypatch.setattr(_open, "open_pyvips", refuse)
    with open_slide(rect_svs) as r:
        assert r.info.backend == "tiffslide"
    monkeypatch.setattr(
        _open, "differences", lambda a, b: "" if a.info.backend == "pyvips" else "differs"
    )
    with open_slide(rect_svs) as r:
        assert r.info.backend == "openslide"
    assert _open.SPEED_ORDER == ("pyvips", "tiffslide", "openslide")


def test_probe_tolerance_accepts_decoder_rounding(rect_svs: Path) -> None:
    from wsi_saliency.readers._open import differences, probe_windows

    with open_slide(rect_svs, backend="pyvips") as a, open_slide(
        rect_svs, backend="openslide"
    ) as b, open_slide(rect_svs, backend="tiffslide") as c:
        assert differences(a, b) == "" and differences(a, c) == ""
        wins = probe_windows(a.info)
        assert len(wins) == 3 + a.info.level_count - 1
        for level, x, y, w, h in wins:
            lw, lh = a.info.level_dimensions[level]
            assert x >= 0 and x + w <= lw and y >= 0 and y + h <= lh


# --------------------------------------------------------------------- pixel access


def test_composite_on_white() -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [100, 100, 100, 128]]], np.uint8)
    out = composite_on_white(rgba)
    assert out.shape == (1, 3, 3)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 2].tolist() == [177, 177, 177]


def test_corrupt_tile_data_is_slide_open_error(tmp_path: Path, rect_svs: Path) -> None:
    bad = tmp_path / "corrupt.svs"
    shutil.copy(rect_svs, bad)
    with tifffile.TiffFile(bad) as tf:
        page = tf.pages[0]
        # pick a tissue tile of level 0 and overwrite its bytes with garbage
        idx = 2 * page.chunked[1] + 3  # type: ignore[union-attr]
        off, cnt = page.dataoffsets[idx], page.databytecounts[idx]  # type: ignore[union-attr]
    with open(bad, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x00" * cnt)
    for backend in ("tiffslide", "pyvips"):
        with open_slide(bad, backend=backend) as r, pytest.raises(
            SlideOpenError, match="corrupt"
        ):
            r.read_region((3 * 256, 2 * 256), 0, (256, 256))


@pytest.mark.parametrize("downsample", [1.0, 2.0, 3.7, 8.0])
def test_whole_slide_reads_are_identical_in_small_blocks(
    coordinate_tiff: Path, monkeypatch: pytest.MonkeyPatch, downsample: float
) -> None:
    """Reading a whole slide block by block (as on huge single-level slides) changes
    no pixel: blocks and strips only bound memory."""
    from wsi_saliency.readers import base

    with open_slide(coordinate_tiff, mpp=0.5) as r:
        whole = r.read_at_downsample(downsample)
        monkeypatch.setattr(base, "_BLOCK_SRC_PX", 97)
        monkeypatch.setattr(base, "_STRIP_BYTES", 3 * 97 * 5)
        blocked = r.read_at_downsample(downsample)
    np.testing.assert_array_equal(blocked, whole)


def test_coarse_user_mpp_is_accepted_with_a_warning(
    rect_svs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--mpp 40 is a plausible spacing but more likely a magnification: say so."""
    with caplog.at_level("WARNING", logger="wsi_saliency.readers.mpp"), open_slide(
        rect_svs, mpp=40.0
    ) as r:
        assert r.info.mpp is not None and r.info.mpp.x == 40.0
    assert any("not a magnification" in m for m in caplog.messages)
    caplog.clear()
    with caplog.at_level("WARNING", logger="wsi_saliency.readers.mpp"), open_slide(
        rect_svs, mpp=0.25
    ):
        pass
    assert not caplog.messages


def test_pyvips_reads_ome_tiff_pyramid_in_subifds(tmp_path: Path) -> None:
    """OME-TIFF keeps its pyramid in SubIFDs: pyvips finds every level (page + SubIFD)
    and reads the same pixels as tiffslide."""
    data = synthetic.render_region(SMALL, 0, 0, 512, 384)
    path = tmp_path / "pyr.ome.tif"
    opts: dict[str, object] = {"tile": (128, 128), "photometric": "rgb", "compression": "jpeg"}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(data, subifds=2, metadata={"axes": "YXS"}, **opts)  # type: ignore[arg-type]
        tw.write(data[::2, ::2], subfiletype=1, **opts)  # type: ignore[arg-type]
        tw.write(data[::4, ::4], subfiletype=1, **opts)  # type: ignore[arg-type]
    with open_slide(path, backend="pyvips", mpp=0.5) as a, open_slide(
        path, backend="tiffslide", mpp=0.5
    ) as b:
        assert a.info.level_dimensions == b.info.level_dimensions == (
            (512, 384),
            (256, 192),
            (128, 96),
        )
        assert a.native_tile_shape(2) == (128, 128)
        for level in range(3):
            np.testing.assert_array_equal(
                a.read_level(level, 5, 7, 100, 80), b.read_level(level, 5, 7, 100, 80)
            )


def test_pyvips_sees_a_file_replaced_at_the_same_path(tmp_path: Path) -> None:
    """libvips caches operations by their arguments: a slide rewritten at the same path
    must not come back with the old pixels."""
    path = tmp_path / "same.svs"
    first = synthetic.write_slide(SMALL, path, kind="svs", tile=128, compression="zlib")
    with open_slide(first, backend="pyvips") as r:
        before = r.read_level(0, 0, 0, 512, 384)
    other = dataclasses.replace(SMALL, seed=SMALL.seed + 1)
    synthetic.write_slide(other, path, kind="svs", tile=128, compression="zlib")
    with open_slide(path, backend="pyvips") as r:
        after = r.read_level(0, 0, 0, 512, 384)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, synthetic.render_region(other, 0, 0, 512, 384))
