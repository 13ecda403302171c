"""Streaming stitcher: heatmap geometry, seams, exact averaging, memory-bounded caching, errors."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from wsi_saliency.errors import ConfigError, OutputError, StitchError
from wsi_saliency.stitch import BLENDS, Stitcher, blend_window
from wsi_saliency.tiling import full_grid
from wsi_saliency.types import BatchResult, Mpp, SlideInfo, TileGrid


def make_grid(
    width: int,
    height: int,
    *,
    mpp: float = 0.5,
    tile: int = 224,
    spacing: float = 0.5,
    overlap: float = 0.0,
    keep: np.ndarray | None = None,
) -> TileGrid:
    """Every grid position over the slide (or those in ``keep``)."""
    info = SlideInfo(
        path="test", backend="none", dimensions=(width, height),
        level_dimensions=((width, height),), level_downsamples=(1.0,),
        mpp=Mpp(mpp, mpp, "override"),
    )
    g = full_grid(info, tile_size=tile, spacing=spacing, overlap=overlap)
    rows, cols, coords = g.rows, g.cols, g.coords
    if keep is not None:
        rows, cols, coords = rows[keep], cols[keep], coords[keep]
    return replace(
        g, rows=rows, cols=cols, coords=coords,
        tissue_fraction=np.linspace(0.5, 1.0, rows.size).astype(np.float32),
    )


def add_all(st: Stitcher, probs: np.ndarray, maps: np.ndarray, batch: int = 5) -> None:
    n = probs.shape[0]
    for s in range(0, n, batch):
        idx = np.arange(s, min(s + batch, n), dtype=np.int64)
        st.add(BatchResult(indices=idx, probabilities=probs[idx], maps=maps[idx]))


def test_pixel_size_and_shape_follow_the_contract(tmp_path: Path) -> None:
    g = make_grid(3000, 2000)  # 224 px @ 0.5 um with a 14x14 map -> 8 um/px
    st = Stitcher(tmp_path / "s", g, (14, 14), ["normal", "tumor"])
    assert st.pixel_size_um == 8.0
    assert st.shape == (125, 188)  # ceil(2000*0.5/8)=125, ceil(3000*0.5/8)=ceil(187.5)
    g2 = make_grid(3000, 2000, mpp=0.2427)
    st2 = Stitcher(tmp_path / "s2", g2, (7, 7), ["normal", "tumor"])
    assert st2.pixel_size_um == 16.0
    assert st2.shape == (math.ceil(2000 * 0.2427 / 16), math.ceil(3000 * 0.2427 / 16))
    # exact multiples do not gain a pixel from float error: 4480 * 0.25 / 8 = 140
    g3 = make_grid(4480, 3584, mpp=0.25)
    assert Stitcher(tmp_path / "s3", g3, (14, 14), ["a", "b"]).shape == (112, 140)


@pytest.mark.parametrize("blend", BLENDS)
def test_constant_maps_give_constant_heatmap_with_overlap(tmp_path: Path, blend: str) -> None:
    g = make_grid(560 * 2, 448 * 2, overlap=0.5)
    n = len(g)
    st = Stitcher(tmp_path / "s", g, (14, 14), ["normal", "tumor"], blend=blend, chunk_size=16)
    probs = np.tile(np.array([[0.25, 0.75]], dtype=np.float32), (n, 1))
    maps = np.full((n, 14, 14), -0.375, dtype=np.float32)
    add_all(st, probs, maps)
    hm = st.finalize()
    heat = hm.heatmap[:]
    assert hm.coverage == 1.0
    np.testing.assert_allclose(heat[0], 0.75, rtol=0, atol=1e-6)
    np.testing.assert_allclose(heat[1], -0.375, rtol=0, atol=1e-6)
    np.testing.assert_allclose(heat[2], 0.25, rtol=0, atol=1e-6)
    w = hm.weight[:]
    if blend == "uniform":
        # interior pixels are covered by 2 x 2 tiles at overlap 0.5, corners by one
        assert w[10, 10] == 4.0 and w[0, 0] == 1.0 and w[0, 10] == 2.0
    else:
        # sin^2 windows shifted by half a tile sum to exactly 1 (partition of unity)
        np.testing.assert_allclose(w[7:-7, 7:-7], 1.0, atol=1e-6)


def test_tile_index_maps_show_exact_averaging(tmp_path: Path) -> None:
    # 3 x 4 tiles at overlap 0.5: 224 px tiles, stride 112 px = 7 heatmap px
    g = make_grid(560, 448, overlap=0.5)
    assert g.grid_shape == (3, 4) and len(g) == 12
    m, step = 14, 7
    n = len(g)
    u, v = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    # map of tile k = 100 k + local pixel index (u * 14 + v): encodes tile and position
    maps = np.stack([100.0 * k + u * m + v for k in range(n)]).astype(np.float32)
    probs = np.stack([[1 - k / 16, k / 16] for k in range(n)]).astype(np.float32)
    st = Stitcher(tmp_path / "s", g, (m, m), ["normal", "tumor"])
    add_all(st, probs, maps, batch=4)
    hm = st.finalize()
    heat = hm.heatmap[:]
    assert heat.shape == (3, 28, 35)

    # by hand: pixel (0, 0) only tile 0 (local 0, 0) -> 0
    assert heat[1, 0, 0] == 0.0
    # pixel (7, 7) is tile 0 at local (7, 7) = 105, tile 1 (local (7, 0)) = 100 + 98,
    # tile 4 (local (0, 7)) = 400 + 7, tile 5 (local (0, 0)) = 500: mean 302.5
    assert heat[1, 7, 7] == pytest.approx((105 + 198 + 407 + 500) / 4, abs=1e-4)
    # pixel (0, 30): only tile 3 (cols 21..34), local (0, 9) -> 309
    assert heat[1, 0, 30] == pytest.approx(309.0, abs=1e-4)
    # probability channel at (7, 7): tiles 0, 1, 4, 5 -> (0 + 1 + 4 + 5) / 4 / 16
    assert heat[0, 7, 7] == pytest.approx(10 / 4 / 16, abs=1e-6)
    assert heat[2, 7, 7] == pytest.approx(1 - 10 / 4 / 16, abs=1e-6)

    # every pixel, brute force over the tiles
    exp_sum = np.zeros((28, 35))
    exp_n = np.zeros((28, 35))
    exp_p = np.zeros((28, 35))
    for k in range(n):
        r0, c0 = int(g.rows[k]) * step, int(g.cols[k]) * step
        exp_sum[r0 : r0 + m, c0 : c0 + m] += maps[k]
        exp_p[r0 : r0 + m, c0 : c0 + m] += probs[k, 1]
        exp_n[r0 : r0 + m, c0 : c0 + m] += 1
    np.testing.assert_allclose(heat[1], exp_sum / exp_n, rtol=0, atol=1e-4)
    np.testing.assert_allclose(heat[0], exp_p / exp_n, rtol=0, atol=1e-6)


def test_small_chunks_and_cache_give_identical_result(tmp_path: Path) -> None:
    g = make_grid(3000, 2600, overlap=0.5)
    n = len(g)
    rng = np.random.default_rng(1)
    p = rng.random(n).astype(np.float32)
    probs = np.stack([1 - p, p], axis=1)
    maps = rng.standard_normal((n, 14, 14)).astype(np.float32)
    out = []
    for i, (cs, cache) in enumerate(((512, 32), (16, 4))):
        st = Stitcher(
            tmp_path / f"s{i}",
            g,
            (14, 14),
            ["normal", "tumor"],
            blend="hann",
            chunk_size=cs,
            cache_chunks=cache,
        )
        add_all(st, probs, maps, batch=17)
        out.append(st.finalize().heatmap[:])
    # the 16 px chunks with a 4-chunk cache evict constantly, yet agree bit for bit
    np.testing.assert_array_equal(out[0], out[1])


def test_uncovered_pixels_are_nan_with_zero_weight(tmp_path: Path) -> None:
    full = make_grid(896, 672)  # 4 x 3 tiles, no overlap, heatmap 56 x 42
    keep = np.array([0, 5, 11])
    g = make_grid(896, 672, keep=keep)
    st = Stitcher(tmp_path / "s", g, (14, 14), ["normal", "tumor"])
    add_all(st, np.full((3, 2), 0.5, np.float32), np.ones((3, 14, 14), np.float32))
    hm = st.finalize()
    heat, w = hm.heatmap[:], hm.weight[:]
    assert len(full) == 12 and heat.shape == (3, 42, 56)
    covered = ~np.isnan(heat[0])
    assert np.array_equal(covered, w > 0)
    expected = np.zeros((42, 56), dtype=bool)
    for r, c in ((0, 0), (1, 1), (2, 3)):
        expected[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14] = True
    assert np.array_equal(covered, expected)
    assert hm.coverage == pytest.approx(3 / 12)
    assert np.all(np.isnan(heat[1][~expected]))


def test_tiles_past_the_slide_edge_are_clipped(tmp_path: Path) -> None:
    g = make_grid(500, 300)  # 3 x 2 tiles; the last column/row hangs past the slide
    st = Stitcher(tmp_path / "s", g, (14, 14), ["normal", "tumor"])
    n = len(g)
    maps = np.stack([np.full((14, 14), float(k), np.float32) for k in range(n)])
    add_all(st, np.full((n, 2), 0.5, np.float32), maps)
    hm = st.finalize()
    assert hm.shape == (19, 32)  # ceil(300*0.5/8)=19, ceil(500*0.5/8)=32
    heat = hm.heatmap[:]
    assert heat[1, 18, 31] == 5.0  # tile (1, 2)
    assert heat[1, 14, 28] == 5.0 and heat[1, 13, 27] == 1.0  # tile (0, 1)


def test_channels_tile_stats_and_extra_maps(tmp_path: Path) -> None:
    g = make_grid(448, 224)  # 2 tiles
    st = Stitcher(
        tmp_path / "s",
        g,
        (14, 14),
        ["normal", "tumor", "stroma"],
        tumor_class=1,
        extra_maps=["gradcam"],
    )
    assert st.channel_names == (
        "probability_tumor",
        "saliency",
        "probability_normal",
        "probability_stroma",
        "gradcam",
    )
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    maps = np.zeros((2, 14, 14), np.float32)
    maps[0, :7] = 2.0
    maps[0, 7:] = -1.0
    maps[1] = 3.0
    maps[1, 0, 0] = 5.0
    extra = {
        "gradcam": np.stack([np.full((14, 14), 9.0), np.full((14, 14), 4.0)]).astype(np.float32)
    }
    st.add(BatchResult(np.array([1, 0]), probs, maps, extra))
    hm = st.finalize()
    heat = hm.heatmap[:]
    # tile 1 (right) got probs[0]; channel order: tumour, saliency, normal, stroma, gradcam
    assert heat[:, 0, 20].tolist() == pytest.approx([0.7, 2.0, 0.1, 0.2, 9.0])
    assert heat[:, 13, 0].tolist() == pytest.approx([0.2, 3.0, 0.5, 0.3, 4.0])
    t = hm.tiles
    assert t.done.tolist() == [True, True]
    np.testing.assert_allclose(t.probabilities[1], probs[0])
    assert t.saliency_mean[1] == pytest.approx(0.5)
    assert t.saliency_max[1] == 2.0
    assert t.saliency_positive_fraction[1] == pytest.approx(0.5)
    assert t.saliency_max[0] == 5.0 and t.saliency_positive_fraction[0] == 1.0
    assert hm.channel_index("saliency") == 1
    with pytest.raises(KeyError, match="no heatmap channel"):
        hm.channel_index("nope")


def test_blend_window_values() -> None:
    np.testing.assert_array_equal(blend_window("uniform", (3, 3)), np.ones((3, 3)))
    w = blend_window("hann", (4, 4))
    assert w.min() > 0  # never zero: slide edges stay covered
    # 1-D weights sin^2(pi (u + .5) / 4): u=0 and u=2 sum to 1
    one_d = np.sin(np.pi * (np.arange(4) + 0.5) / 4) ** 2
    np.testing.assert_allclose(w, np.outer(one_d, one_d), rtol=1e-6)
    assert one_d[0] + one_d[2] == pytest.approx(1.0)


def test_bad_blend_and_incompatible_sizes_raise_clear_errors(tmp_path: Path) -> None:
    g = make_grid(1000, 1000)
    with pytest.raises(ConfigError, match=r"unknown blend 'gauss'.*'uniform', 'hann'"):
        Stitcher(tmp_path / "a", g, (14, 14), ["n", "t"], blend="gauss")
    with pytest.raises(ConfigError, match="not square"):
        Stitcher(tmp_path / "b", g, (14, 7), ["n", "t"])
    # 224 px tiles at overlap 0.25: stride 168 px is not a multiple of 224 / 14 = 16 px
    g25 = make_grid(1000, 1000, overlap=0.25)
    with pytest.raises(
        ConfigError, match=r"stride 168 px.*multiple of 16 px.*1/14.*0\.2143, 0\.2857, 0\.5"
    ):
        Stitcher(tmp_path / "c", g25, (14, 14), ["n", "t"])
    # ConfigError is also a ValueError
    with pytest.raises(ValueError, match="tumor_class 2"):
        Stitcher(tmp_path / "d", g, (14, 14), ["n", "t"], tumor_class=2)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        Stitcher(tmp_path / "e", g, (14, 14), ["n", "t"])


def test_bad_batches_raise_stitch_errors(tmp_path: Path) -> None:
    g = make_grid(448, 448)  # 4 tiles
    st = Stitcher(tmp_path / "s", g, (14, 14), ["n", "t"])
    ok_p = np.full((2, 2), 0.5, np.float32)
    with pytest.raises(StitchError, match=r"expected \(2, 14, 14\).*map_shape"):
        st.add(BatchResult(np.array([0, 1]), ok_p, np.zeros((2, 7, 7), np.float32)))
    with pytest.raises(StitchError, match=r"expected \(2, 2\)"):
        st.add(
            BatchResult(
                np.array([0, 1]), np.zeros((2, 3), np.float32), np.zeros((2, 14, 14), np.float32)
            )
        )
    with pytest.raises(StitchError, match="out of range"):
        st.add(BatchResult(np.array([0, 4]), ok_p, np.zeros((2, 14, 14), np.float32)))
    st.add(BatchResult(np.array([0, 1]), ok_p, np.zeros((2, 14, 14), np.float32)))
    with pytest.raises(StitchError, match="tile 1 added twice"):
        st.add(BatchResult(np.array([2, 1]), ok_p, np.zeros((2, 14, 14), np.float32)))
    st.finalize()
    with pytest.raises(StitchError, match="after finalize"):
        st.add(BatchResult(np.array([3]), ok_p[:1], np.zeros((1, 14, 14), np.float32)))
