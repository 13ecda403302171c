"""Shared pytest fixtures.

* ``test_data_dir``: the shared real test data (``$WSI_TEST_DATA``, default
  ``<repo>/../shared/data``); tests using it are skipped with a reason when absent.
* ``cmu_slide`` / ``tcga_slide``: the two real slides in it.
* ``slide_factory``: writes a :class:`wsi_saliency.synthetic.SyntheticSlide` (or a
  coordinate-encoded slide) once per session and returns its path.
* ``rect_spec`` and ready-made small slides (``rect_svs``, ``rect_tiff``, ``demo_svs``,
  ``coordinate_tiff``) built with it.

Every generated slide is deterministic and small (<= 4096 px a side).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wsi_saliency import synthetic

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Tissue rectangle of ``rect_spec`` (level-0 px): x0, y0, x1, y1.
RECT = (512.0, 384.0, 1536.0, 1152.0)


def _data_dir() -> Path:
    env = os.environ.get("WSI_TEST_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def test_data_dir() -> Path:
    """Folder of the shared real test data; skips the test when it is absent."""
    path = _data_dir()
    if not (path / "slides").is_dir():
        pytest.skip(
            f"real test data not found at {path} (set WSI_TEST_DATA to the shared data folder)"
        )
    return path


@pytest.fixture(scope="session")
def cmu_slide(test_data_dir: Path) -> Path:
    """Real Aperio SVS with MPP 0.499 (CMU-1-Small-Region)."""
    return test_data_dir / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def tcga_slide(test_data_dir: Path) -> Path:
    """Real Aperio SVS (JPEG 2000) without any MPP metadata."""
    return test_data_dir / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"


SlideFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def slide_factory(tmp_path_factory: pytest.TempPathFactory) -> SlideFactory:
    """Write a synthetic slide once per session and return its path.

    Call as ``slide_factory(spec, kind="svs", **write_slide_kwargs)`` for a
    :class:`~wsi_saliency.synthetic.SyntheticSlide`, or
    ``slide_factory(None, coordinate=(width, height), **kwargs)`` for a
    coordinate-encoded slide. Identical calls return the same file.
    """
    root = tmp_path_factory.mktemp("synthetic_slides")
    cache: dict[str, Path] = {}

    def make(
        spec: synthetic.SyntheticSlide | None,
        *,
        kind: str = "svs",
        coordinate: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Path:
        key = repr((spec, kind, coordinate, sorted(kwargs.items())))
        if key in cache:
            return cache[key]
        suffix = ".svs" if kind == "svs" else ".tiff"
        path = root / f"slide{len(cache):03d}{suffix}"
        if coordinate is not None:
            synthetic.write_coordinate_slide(
                path, coordinate[0], coordinate[1], kind=kind, **kwargs
            )
        else:
            assert spec is not None
            synthetic.write_slide(spec, path, kind=kind, **kwargs)
        cache[key] = path
        return path

    return make


def rect_polygon(x0: float, y0: float, x1: float, y1: float) -> tuple[tuple[float, float], ...]:
    """Axis-aligned rectangle polygon (level-0 px)."""
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


@pytest.fixture(scope="session")
def rect_spec() -> synthetic.SyntheticSlide:
    """2048 x 1536 px at 0.5 um/px, one tissue rectangle :data:`RECT` (no tumour)."""
    return synthetic.SyntheticSlide(
        width=2048, height=1536, mpp=0.5, tissue=(rect_polygon(*RECT),), seed=3
    )


@pytest.fixture(scope="session")
def rect_svs(slide_factory: SlideFactory, rect_spec: synthetic.SyntheticSlide) -> Path:
    """``rect_spec`` as an Aperio SVS (JPEG, levels 1, 4, 16)."""
    return slide_factory(rect_spec, kind="svs")


@pytest.fixture(scope="session")
def rect_tiff(slide_factory: SlideFactory, rect_spec: synthetic.SyntheticSlide) -> Path:
    """``rect_spec`` as a generic tiled TIFF (JPEG, levels 1, 2, 4, 8), MPP in tags."""
    return slide_factory(rect_spec, kind="tiff")


@pytest.fixture(scope="session")
def demo_svs(slide_factory: SlideFactory) -> Path:
    """The demo slide (6144 x 4096 px, 0.5 um/px, three planted tumours) as SVS."""
    return slide_factory(synthetic.demo_slide_spec(), kind="svs")


@pytest.fixture(scope="session")
def coordinate_tiff(slide_factory: SlideFactory) -> Path:
    """2048 x 1536 coordinate-encoded generic TIFF, levels 1, 2, 4 (0.5 um/px)."""
    return slide_factory(None, kind="tiff", coordinate=(2048, 1536), n_levels=3)
