"""The reader contract: every backend of :data:`wsi_saliency.readers.BACKENDS` passes it.

:class:`TestReaderContract` holds the whole contract of a slide reader (facts, exact
level reads, white outside the slide, downsampled reads, refusals, closing) and runs it
once per concrete backend through the ``backend`` fixture, whose parameters are the
package's own ``BACKENDS``: adding a backend to that ``Literal`` adds it here, and it
passes the whole contract or the suite fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_saliency import synthetic
from wsi_saliency.errors import SlideOpenError, UnsupportedPixelTypeError, WsiSaliencyError
from wsi_saliency.readers import BACKENDS, SlideReader, open_slide

CONCRETE = tuple(b for b in BACKENDS if b != "auto")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """One reader backend (``auto`` included: it must keep the same contract)."""
    return str(request.param)


def test_there_are_concrete_backends() -> None:
    assert "openslide" in CONCRETE and "tiffslide" in CONCRETE


class TestReaderContract:
    """What every reader backend must do."""

    def test_facts_of_a_generated_svs(self, rect_svs: Path, backend: str) -> None:
        with open_slide(rect_svs, backend=backend) as r:
            assert isinstance(r, SlideReader)
            info = r.info
            assert info.backend in CONCRETE and info.path == str(rect_svs)
            assert backend == "auto" or info.backend == backend
            assert info.dimensions == (2048, 1536)
            assert info.level_downsamples[0] == 1.0 and info.level_count >= 2
            assert info.mpp is not None
            assert info.mpp.x == pytest.approx(0.5) and info.mpp.y == pytest.approx(0.5)

    def test_outside_slide_reads_white(self, rect_svs: Path, backend: str) -> None:
        with open_slide(rect_svs, backend=backend) as r:
            a = r.read_region((-64, -64), 0, (128, 128))
            assert a.dtype == np.uint8 and a.shape == (128, 128, 3)
            assert (a[:64] == 255).all() and (a[:, :64] == 255).all()
            w, h = r.info.dimensions
            b = r.read_region((w - 10, h - 10), 0, (20, 20))
            assert (b[10:] == 255).all() and (b[:, 10:] == 255).all()
            assert not (b[:10, :10] == 255).all()

    def test_read_level_is_exact_on_coordinate_slide(
        self, coordinate_tiff: Path, backend: str
    ) -> None:
        with open_slide(coordinate_tiff, backend=backend) as r:
            assert r.info.level_downsamples == (1.0, 2.0, 4.0)
            for level, d in enumerate((1, 2, 4)):
                a = r.read_level(level, 37, 21, 40, 30).astype(float)
                cx = (37 + np.arange(40) + 0.5) * d
                cy = (21 + np.arange(30) + 0.5) * d
                exp = synthetic.coordinate_values(cx[None, :], cy[:, None])
                # B = (x + y) / 32 is linear everywhere: exact to rounding at every level
                assert np.abs(a[..., 2] - exp[..., 2]).max() <= 0.5 + 1e-9
                # level-0 read_region semantics: location / downsample
                b = r.read_region((37 * d, 21 * d), level, (40, 30))
                np.testing.assert_array_equal(b, a.astype(np.uint8))

    def test_best_level_and_downsampled_reads(self, coordinate_tiff: Path, backend: str) -> None:
        with open_slide(coordinate_tiff, backend=backend) as r:
            levels = [r.best_level_for_downsample(d) for d in (0.5, 1, 1.9, 2, 3.99, 4, 100)]
            assert levels == [0, 0, 0, 1, 1, 2, 2]
            for ds in (4.0, 6.0, 16.0):
                a = r.read_at_downsample(ds).astype(float)
                assert a.shape == (int(np.ceil(1536 / ds)), int(np.ceil(2048 / ds)), 3)
                c = (np.arange(a.shape[1]) + 0.5) * ds
                rr = (np.arange(a.shape[0]) + 0.5) * ds
                exp = synthetic.coordinate_values(c[None, :], rr[:, None])
                inner = (slice(2, -2), slice(2, -2))
                assert np.abs(a[..., 2][inner] - exp[..., 2][inner]).max() <= 0.6
            assert r.get_thumbnail((256, 256)).shape == (192, 256, 3)
            assert r.read_at_spacing(8.0).shape == (96, 128, 3)

    def test_16bit_tiff_rejected(self, tmp_path: Path, backend: str) -> None:
        path = tmp_path / "u16.tiff"
        tifffile.imwrite(
            path, np.zeros((256, 256, 3), np.uint16), tile=(128, 128), photometric="rgb"
        )
        with pytest.raises(UnsupportedPixelTypeError, match=r"u16\.tiff.*16-bit"):
            open_slide(path, backend=backend, mpp=0.5)

    def test_bad_files_are_one_line_slide_open_errors(
        self, tmp_path: Path, rect_svs: Path, backend: str
    ) -> None:
        text = tmp_path / "notes.svs"
        text.write_text("this is not a slide\n" * 20)
        trunc = tmp_path / "trunc.svs"
        data = rect_svs.read_bytes()
        trunc.write_bytes(data[: len(data) // 2])
        empty = tmp_path / "empty.svs"
        empty.write_bytes(b"")
        cases = {
            text: "not a readable slide",
            trunc: "truncated",
            empty: "empty",
            tmp_path / "missing.svs": "no such file",
            tmp_path: "folder",
        }
        for path, words in cases.items():
            with pytest.raises(SlideOpenError, match=words) as ei:
                open_slide(path, backend=backend)
            assert str(path) in str(ei.value) and "\n" not in str(ei.value)
            assert isinstance(ei.value, OSError) and isinstance(ei.value, WsiSaliencyError)

    def test_closed_reader_refuses(self, rect_svs: Path, backend: str) -> None:
        r = open_slide(rect_svs, backend=backend)
        r.close()
        r.close()  # idempotent
        with pytest.raises(SlideOpenError, match="closed"):
            r.read_region((0, 0), 0, (8, 8))
