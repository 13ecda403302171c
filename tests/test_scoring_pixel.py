"""Detections (NMS on the probability heatmap) and pixel-level scores, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_saliency.scoring.detections import DEFAULT_NMS_RADIUS_UM, find_detections
from wsi_saliency.scoring.froc import roc_auc
from wsi_saliency.scoring.pixel import (
    BinnedCounts,
    average_precision,
    dice,
    pointing_game,
    slide_pixel_scores,
    topk_dice,
)
from wsi_saliency.scoring.run_output import TileTable


def test_default_radius_is_ncrf_and_liu() -> None:
    assert pytest.approx(12 * 64 * 0.243) == DEFAULT_NMS_RADIUS_UM
    assert pytest.approx(6 * 128 * 0.243) == DEFAULT_NMS_RADIUS_UM


def test_nms_keeps_maxima_suppresses_neighbours_and_places_centres() -> None:
    p = np.zeros((20, 30), np.float32)
    p[5, 5] = 0.9
    p[5, 7] = 0.8   # within 2 px of the 0.9: suppressed
    p[5, 9] = 0.7   # 4 px away: kept
    p[15, 25] = 0.6
    p[0, 0] = 0.5   # not above the threshold
    p[10, 10] = np.nan  # uncovered counts as 0
    dets = find_detections(p, downsample=(16.0, 16.0), pixel_size_um=8.0, radius_um=16.0)
    assert [(d.row, d.col, d.probability) for d in dets] == [
        (5, 5, pytest.approx(0.9)), (5, 9, pytest.approx(0.7)), (15, 25, pytest.approx(0.6))
    ]
    # pixel centre in level-0 px: floor((j + 0.5) * 16)
    assert (dets[0].x, dets[0].y) == (88, 88)
    # radius 0: every pixel above the threshold
    assert len(find_detections(p, downsample=(16.0, 16.0), pixel_size_um=8.0, radius_um=0)) == 4
    # lower threshold takes the 0.5
    assert len(find_detections(p, downsample=(16.0, 16.0), pixel_size_um=8.0, radius_um=16.0,
                               threshold=0.4)) == 4


def test_nms_ties_row_major_and_window_is_square() -> None:
    p = np.zeros((9, 9))
    p[4, 2] = p[2, 4] = p[6, 6] = 0.8
    dets = find_detections(p, downsample=(1.0, 1.0), pixel_size_um=1.0, radius_um=2.0)
    # first in row-major order wins; (4, 2) is 2 rows / 2 cols away: inside the square
    # window; (6, 6) is 4 away from (2, 4) in rows: kept
    assert [(d.row, d.col) for d in dets] == [(2, 4), (6, 6)]


def test_average_precision_and_auroc_by_hand() -> None:
    s = [0.9, 0.8, 0.7, 0.6]
    y = [True, False, True, False]
    # precision at recall 1/2: 1, at recall 1: 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision(s, y) == pytest.approx(0.5 + 1 / 3)
    assert roc_auc(s, y) == pytest.approx(0.75)
    # ties: all equal -> one threshold, precision 1/2
    assert average_precision([0.5] * 4, y) == pytest.approx(0.5)
    assert np.isnan(average_precision(s, [False] * 4))


def test_binned_pooled_scores_match_exact() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(20000) < 0.2
    s = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    b = BinnedCounts()
    b.add(s[:7000], y[:7000])
    b.add(s[7000:], y[7000:])
    assert b.auroc() == pytest.approx(roc_auc(s, y), abs=1e-4)
    assert b.average_precision() == pytest.approx(average_precision(s, y), abs=1e-3)


def test_dice_and_topk_dice_by_hand() -> None:
    assert dice([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / 3)
    assert np.isnan(dice([0, 0], [0, 0]))
    sal = np.array([0.9, 0.8, 0.1, 0.0, -0.5, 0.7, 0.2, 0.3, 0.4, 0.6])
    les = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0], bool)
    d = topk_dice(sal, les, ks=range(10, 101, 10))
    # top 10 %: 1 px, 1 hit -> 2/(1+3); top 30 %: 3 px all lesion -> 1; top 100 %: 6/13
    assert d[0] == pytest.approx(0.5)
    assert d[2] == pytest.approx(1.0)
    assert d[-1] == pytest.approx(6 / 13)


def _tiles(rows: list[int], cols: list[int], tumour: list[bool]) -> TileTable:
    return TileTable(np.asarray(rows), np.asarray(cols), np.full(len(rows), 0.9),
                     np.asarray(tumour))


def test_pointing_game_by_hand() -> None:
    # 4 x 4 tiles of 2 x 2 heatmap pixels (step 2, map 2) on an 8 x 8 heatmap
    sal = np.zeros((8, 8))
    les = np.zeros((8, 8), bool)
    les[0:2, 0:2] = True           # tile (0, 0): lesion everywhere
    sal[0, 1] = 1.0                # its max is on lesion -> hit
    les[2, 2] = True               # tile (1, 1): lesion at (2, 2) only
    sal[3, 3] = 1.0                # its max is off the lesion -> miss
    tiles = _tiles([0, 1, 2, 3], [0, 1, 2, 3], [True, True, True, False])
    # tile (2, 2) is tumour-predicted without lesion: not eligible; (3, 3) is not tumour
    assert pointing_game(sal, les, tiles, step=2, map_size=2) == (1, 2, 3)


def test_slide_pixel_scores_domain_and_counts() -> None:
    prob = np.full((4, 4), np.nan)
    prob[:2, :] = [[0.9, 0.8, 0.1, 0.2], [0.6, 0.3, 0.2, 0.1]]
    sal = np.where(np.isfinite(prob), prob - 0.5, np.nan)
    les = np.zeros((4, 4), bool)
    les[0, :2] = True
    les[3, 3] = True  # a lesion pixel no tile covered: probability 0, in the domain
    s = slide_pixel_scores(prob, sal, les, _tiles([0], [0], [True]), step=2, map_size=2)
    assert s.n_pixels == 9 and s.n_lesion_pixels == 3
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)
    assert s.dice == pytest.approx(2 * 2 / (3 + 3))
    # saliency inside tissue only: the uncovered lesion pixel does not count
    assert s.saliency_auroc == pytest.approx(1.0)
    # 2 of 8 covered pixels are lesion; round(k * 8 / 100) = 2 first at k = 19
    assert s.best_topk == (19, pytest.approx(1.0))
    assert (s.pointing_hits, s.pointing_tiles, s.tumour_tiles) == (1, 1, 1)


def test_one_sort_auroc_equals_mann_whitney_with_ties() -> None:
    from wsi_saliency.scoring.pixel import pixel_auroc_ap

    rng = np.random.default_rng(3)
    for _ in range(10):
        s = rng.integers(0, 8, 500).astype(np.float32) / 8  # many ties
        y = rng.random(500) < 0.3
        auc, ap = pixel_auroc_ap(s, y)
        assert auc == pytest.approx(roc_auc(s, y), abs=1e-12)
        assert ap == pytest.approx(average_precision(s.astype(np.float64), y))
    assert np.isnan(pixel_auroc_ap(np.array([0.5, 0.6]), np.array([True, True]))[0])
