"""The heatmap-writer contract: every pyramidal heatmap format passes the same checks.

:class:`HeatmapWriterContract` holds the whole contract (level 0 equals the stitched
heatmap value for value, NaN included; the physical pixel size; each coarser level
halves the size and doubles the pixel size down to the size limit; a second write
replaces the first). A format subclasses it with two methods, ``write`` and
``read_back``: adding a writer means adding one such subclass.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from test_writers import stitch

from wsi_saliency.stitch import StitchedHeatmaps
from wsi_saliency.writers import write_heatmap_tiffs, write_ome_zarr

MIN_SIZE = 40

#: ``(channel name, [level arrays, finest first], pixel size of level 0 in um)``
ReadBack = list[tuple[str, list[np.ndarray], float]]


@pytest.fixture(scope="module")
def heatmaps(tmp_path_factory: pytest.TempPathFactory) -> StitchedHeatmaps:
    return stitch(tmp_path_factory.mktemp("contract-stitch"))


class HeatmapWriterContract:
    """What every pyramidal heatmap writer must do (not collected: no ``Test`` prefix)."""

    #: channels the format stores (all of them unless a subclass says otherwise)
    channels: tuple[int, ...] = (0, 1)

    def write(self, out: Path, hm: StitchedHeatmaps) -> None:
        """Write ``hm`` into the folder ``out``."""
        raise NotImplementedError

    def read_back(self, out: Path, hm: StitchedHeatmaps) -> ReadBack:
        """Read what :meth:`write` wrote."""
        raise NotImplementedError

    def test_level0_is_the_stitched_heatmap(
        self, tmp_path: Path, heatmaps: StitchedHeatmaps
    ) -> None:
        self.write(tmp_path, heatmaps)
        full = np.asarray(heatmaps.heatmap)
        got = self.read_back(tmp_path, heatmaps)
        assert [name for name, _, _ in got] == [heatmaps.channel_names[c] for c in self.channels]
        for (_, levels, _), c in zip(got, self.channels, strict=True):
            np.testing.assert_array_equal(levels[0], full[c])  # NaN where no tile landed
            assert levels[0].dtype == np.float32

    def test_pixel_size_and_pyramid(self, tmp_path: Path, heatmaps: StitchedHeatmaps) -> None:
        self.write(tmp_path, heatmaps)
        for _, levels, pixel_size in self.read_back(tmp_path, heatmaps):
            assert pixel_size == pytest.approx(heatmaps.pixel_size_um)
            assert len(levels) >= 2
            for finer, coarser in zip(levels, levels[1:], strict=False):
                assert coarser.shape == tuple(math.ceil(s / 2) for s in finer.shape)
            assert max(levels[-1].shape) <= MIN_SIZE < max(levels[-2].shape)

    def test_a_second_write_replaces_the_first(
        self, tmp_path: Path, heatmaps: StitchedHeatmaps
    ) -> None:
        self.write(tmp_path, heatmaps)
        self.write(tmp_path, heatmaps)
        full = np.asarray(heatmaps.heatmap)
        for (_, levels, _), c in zip(
            self.read_back(tmp_path, heatmaps), self.channels, strict=True
        ):
            np.testing.assert_array_equal(levels[0], full[c])


class TestOmeZarrWriter(HeatmapWriterContract):
    """``heatmaps.ome.zarr``: one multiscale image, every channel."""

    def write(self, out: Path, hm: StitchedHeatmaps) -> None:
        write_ome_zarr(out / "heatmaps.ome.zarr", hm, min_size=MIN_SIZE, overwrite=True)

    def read_back(self, out: Path, hm: StitchedHeatmaps) -> ReadBack:
        root = zarr.open_group(str(out / "heatmaps.ome.zarr"), mode="r")
        ms = root.attrs["multiscales"][0]
        names = [c["label"] for c in root.attrs["omero"]["channels"]]
        scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale[1] == scale[2]
        arrays = [np.asarray(root[d["path"]]) for d in ms["datasets"]]
        return [(names[c], [a[c] for a in arrays], float(scale[2])) for c in self.channels]


class TestOmeTiffWriter(HeatmapWriterContract):
    """``probability.ome.tif`` and ``saliency.ome.tif``: one file per channel."""

    def write(self, out: Path, hm: StitchedHeatmaps) -> None:
        write_heatmap_tiffs(out, hm, min_size=MIN_SIZE)

    def read_back(self, out: Path, hm: StitchedHeatmaps) -> ReadBack:
        got: ReadBack = []
        for c, fname in zip(
            self.channels, ("probability.ome.tif", "saliency.ome.tif"), strict=True
        ):
            with tifffile.TiffFile(out / fname) as tf:
                pixels = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
                assert float(pixels["PhysicalSizeX"]) == float(pixels["PhysicalSizeY"])
                levels = [lv.asarray() for lv in tf.series[0].levels]
            got.append((hm.channel_names[c], levels, float(pixels["PhysicalSizeX"])))
        return got
