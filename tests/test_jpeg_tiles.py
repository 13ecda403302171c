"""Raw JPEG tile reading and the GPU-decode fallbacks (the CPU paths; no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from wsi_saliency import jpeg_tiles
from wsi_saliency.jpeg_tiles import JpegLevel, gpu_jpeg_available, read_level_region


def _expected(path: Path, page: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The window as tifffile decodes the whole level, padded with white."""
    with tifffile.TiffFile(path) as tif:
        full = tif.pages[page].asarray()[..., :3]
    out = np.full((h, w, 3), 255, np.uint8)
    ys, xs = slice(max(y, 0), min(y + h, full.shape[0])), slice(max(x, 0), min(x + w, full.shape[1]))
    if ys.stop > ys.start and xs.stop > xs.start:
        out[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x] = full[ys, xs]
    return out


WINDOWS = [(0, 0, 224, 224), (250, 130, 300, 517), (-40, -17, 100, 90), (6000, 4000, 300, 200),
           (7000, 100, 50, 50)]


@pytest.mark.parametrize("window", WINDOWS)
def test_regions_equal_tifffile_with_white_padding(demo_svs: Path, window: tuple[int, ...]
                                                   ) -> None:
    x, y, w, h = window
    with JpegLevel(demo_svs, 0) as level:
        assert not level.uses_gpu
        got = read_level_region(level, x, y, w, h)
    assert got.dtype == torch.uint8 and got.shape == (h, w, 3) and got.device.type == "cpu"
    np.testing.assert_array_equal(got.numpy(), _expected(demo_svs, 0, x, y, w, h))


def test_real_aperio_jpeg_with_tables_decodes_on_the_cpu(cmu_slide: Path) -> None:
    imagecodecs = pytest.importorskip("imagecodecs")
    with JpegLevel(cmu_slide, 0, device="cuda") as level:
        # photometric RGB JPEG (no colour transform): never sent to nvJPEG
        assert not level.uses_gpu
        got = read_level_region(level, 100, 200, 400, 300)
        np.testing.assert_array_equal(got.numpy(), _expected(cmu_slide, 0, 100, 200, 400, 300))
        # the shared JPEGTables spliced into a tile give a complete stream
        raw = level.raw_tile(0, 0)
        stream = level.jpeg_stream(raw)
        assert stream[:2] == b"\xff\xd8" and stream[-2:] == b"\xff\xd9" and len(stream) > len(raw)
        tile = imagecodecs.jpeg8_decode(stream, colorspace=2, outcolorspace=2)  # JCS_RGB
        np.testing.assert_array_equal(tile, level.decode_tiles([(0, 0)])[0].numpy())


def test_gpu_path_is_off_without_cuda_and_failures_fall_back(
    demo_svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not gpu_jpeg_available(torch.device("cpu"))
    if not torch.cuda.is_available():
        assert not gpu_jpeg_available(torch.device("cuda"))
    # pretend nvJPEG is there but rejects the batch: the CPU decodes it instead
    monkeypatch.setattr(jpeg_tiles, "gpu_jpeg_available", lambda device: True)

    def broken(self: JpegLevel, raws: list[bytes]) -> list[torch.Tensor]:
        raise RuntimeError("nvjpeg: unsupported")

    monkeypatch.setattr(JpegLevel, "_gpu_decode", broken)
    with JpegLevel(demo_svs, 0, device="cuda") as level:
        assert level.uses_gpu  # YCbCr JPEG level: eligible
        got = read_level_region(level, 250, 130, 300, 517)
    np.testing.assert_array_equal(got.numpy(), _expected(demo_svs, 0, 250, 130, 300, 517))


def test_untiled_page_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "strip.tif"
    tifffile.imwrite(p, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="not tiled"):
        JpegLevel(p, 0)
