"""Camelyon16 FROC, ITC handling and slide AUC against hand-computed toy cases.

Three slides at 0.243 um/px, evaluation level 5 (32 level-0 px per mask pixel):

* A (8000 x 8000 px, tumour): lesions L1 = [1000, 2600]^2 and L2 = [5000, 6600] x
  [1000, 2600] (388 um squares) and an ITC [3000, 3320] x [6000, 6320] (78 um, 153 um
  after the 75 um growth < 275 um). Detections: 0.9 and 0.6 in L1, 0.4 at (2700, 1800)
  - 24 um outside L1 but inside its 37.5 um growth, so on L1 -, 0.45 in L2, 0.8 on the
  ITC (counts for nothing), false positives 0.7 and 0.3.
* B (4000 x 4000, tumour): L3 = [1000, 2600]^2, hit at 0.35; false positive 0.5.
* C (4000 x 4000, negative): detections 0.85 and 0.4, both false positives.

By hand: TP lists A [0.9, 0.45, 0 (ITC)], B [0.35]; FP list [0.7, 0.3, 0.5, 0.85, 0.4];
3 lesions, 3 slides. Thresholds 0.3, 0.35, 0.4, 0.45, 0.5, 0.7, 0.85, 0.9 give
(FP/slide, sensitivity) = (5/3, 1), (4/3, 1), (4/3, 2/3), (1, 2/3), (1, 1/3), (2/3, 1/3),
(1/3, 1/3), (0, 1/3), then (0, 0). Sensitivity at 1/4, 1/2, 1, 2, 4, 8 FP/slide:
1/3, 1/3, 2/3 (the higher of the two points at 1 FP/slide), 1, 1, 1; FROC score
13/18.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from wsi_saliency.scoring import (
    Detection,
    SlideHits,
    assign_detections,
    evaluation_mask,
    froc_curve,
    froc_score,
    roc_auc,
    sensitivity_at,
)

MPP = (0.243, 0.243)


def _box(x0: float, y0: float, x1: float, y1: float) -> shapely.Polygon:
    return shapely.box(x0, y0, x1, y1)


def _det(x: int, y: int, p: float) -> Detection:
    return Detection(x=x, y=y, probability=p)


@pytest.fixture(scope="module")
def toy() -> list[SlideHits]:
    a_lesions = shapely.union_all([
        _box(1000, 1000, 2600, 2600), _box(5000, 1000, 6600, 2600), _box(3000, 6000, 3320, 6320)
    ])
    a_mask = evaluation_mask(a_lesions, (8000, 8000), MPP)
    assert a_mask.n_labels == 3
    assert a_mask.itc == frozenset({3})  # labels in raster order: L1, L2, ITC
    a = assign_detections("A", [
        _det(1800, 1800, 0.9), _det(1200, 1200, 0.6), _det(2700, 1800, 0.4),
        _det(5800, 1800, 0.45), _det(3160, 6160, 0.8), _det(4000, 4000, 0.7),
        _det(7000, 7000, 0.3),
    ], a_mask)
    b_mask = evaluation_mask(_box(1000, 1000, 2600, 2600), (4000, 4000), MPP)
    b = assign_detections("B", [_det(1500, 1500, 0.35), _det(3500, 3500, 0.5)], b_mask)
    c = assign_detections("C", [_det(1000, 1000, 0.85), _det(2000, 2000, 0.4)], None)
    return [a, b, c]


def test_detections_are_classified_as_by_hand(toy: list[SlideHits]) -> None:
    a, b, c = toy
    assert [o for o, _ in a.outcomes] == ["TP", "TP", "TP", "TP", "ITC", "FP", "FP"]
    assert a.tp_probs == (0.9, 0.45, 0.0)
    assert a.fp_probs == (0.7, 0.3)
    assert (a.n_lesions, a.n_itc, a.n_detected) == (2, 1, 2)
    assert b.tp_probs == (0.35,) and b.fp_probs == (0.5,) and b.n_lesions == 1
    # a negative slide contributes only false positives
    assert c.tp_probs == () and c.fp_probs == (0.85, 0.4) and c.n_lesions == 0


def test_froc_curve_sensitivities_and_score_by_hand(toy: list[SlideHits]) -> None:
    curve = froc_curve(toy)
    assert curve.n_slides == 3 and curve.n_lesions == 3
    np.testing.assert_allclose(curve.thresholds[:-1], [0.3, 0.35, 0.4, 0.45, 0.5, 0.7, 0.85, 0.9])
    np.testing.assert_allclose(
        curve.fp_per_slide, np.array([5, 4, 4, 3, 3, 2, 1, 0, 0]) / 3
    )
    np.testing.assert_allclose(curve.sensitivity, np.array([3, 3, 2, 2, 1, 1, 1, 1, 0]) / 3)
    sens = sensitivity_at(curve)
    np.testing.assert_allclose(sens, [1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    assert froc_score(curve) == pytest.approx(13 / 18)
    # the challenge scripts' np.interp gives the same numbers
    np.testing.assert_allclose(
        np.interp([0.25, 0.5, 1, 2, 4, 8], curve.fp_per_slide[::-1], curve.sensitivity[::-1]),
        sens,
    )
    # the original's "drop the lowest threshold" is the same here (there is a 0: the ITC)
    orig = froc_curve(toy, drop_lowest=True)
    np.testing.assert_allclose(orig.sensitivity, curve.sensitivity)


def test_without_the_growth_the_near_miss_would_be_a_false_positive(
    toy: list[SlideHits],
) -> None:
    # the 0.4 detection 24 um right of L1 hits L1 only because of the 37.5 um growth:
    # one pixel further (at 0.243 um/px, 4.82 level-5 px) it is a false positive
    mask = evaluation_mask(_box(1000, 1000, 2600, 2600), (4000, 4000), MPP)
    assert mask.label_at(2700, 1800) == 1  # 4 px from the lesion's last column (80)
    assert mask.label_at(2720, 1800) == 0  # 5 px


def test_linear_interpolation_between_points() -> None:
    # one slide, 4 lesions: TPs 0.9, 0.6, 0.5, 0; FPs 0.8, 0.7 -> curve points
    hits = [SlideHits("s", (0.8, 0.7), (0.9, 0.6, 0.5, 0.0), 4)]
    curve = froc_curve(hits)
    # thresholds 0.5 .. 0.9: (2, 3/4), (2, 2/4), (2, 1/4), (1, 1/4), (0, 1/4), (0, 0)
    np.testing.assert_allclose(curve.fp_per_slide, [2, 2, 2, 1, 0, 0])
    np.testing.assert_allclose(curve.sensitivity, [0.75, 0.5, 0.25, 0.25, 0.25, 0])
    # rates past the last point take its sensitivity; a rate between 0 and 1 lies on a flat part
    assert sensitivity_at(curve, [0.5, 1.5, 2, 3]) == pytest.approx([0.25, 0.25, 0.75, 0.75])
    # a sloped segment needs an FP and a TP at the same probability: two slides, FP 0.8 and
    # TP 0.8 on one, TP 0.6 on the other -> (0.5, 1), (0.5, 0.5), (0, 0)
    two = [SlideHits("a", (0.8,), (0.8,), 1), SlideHits("b", (), (0.6,), 1)]
    c2 = froc_curve(two)
    np.testing.assert_allclose(c2.fp_per_slide, [0.5, 0.5, 0])
    np.testing.assert_allclose(c2.sensitivity, [1, 0.5, 0])
    assert sensitivity_at(c2, [0.25, 0.1, 0.5]) == pytest.approx([0.25, 0.1, 1.0])
    rng = np.random.default_rng(0)
    for _ in range(20):
        hs = [SlideHits(str(i), tuple(rng.random(rng.integers(0, 6)).round(2)),
                        tuple(rng.random(rng.integers(1, 4)).round(2)), 3) for i in range(3)]
        c = froc_curve(hs)
        np.testing.assert_allclose(
            sensitivity_at(c, [0.25, 0.5, 1, 2, 4, 8]),
            np.interp([0.25, 0.5, 1, 2, 4, 8], c.fp_per_slide[::-1], c.sensitivity[::-1]),
        )


def test_original_drops_the_lowest_real_detection_when_nothing_is_missed() -> None:
    # every lesion found at 0.9, 0.8, 0.7 and no false positive: sensitivity 1 ...
    hits = [SlideHits("s", (), (0.9, 0.8, 0.7), 3)]
    assert froc_score(froc_curve(hits)) == pytest.approx(1.0)
    # ... but Evaluation_FROC.py's all_probs[1:] drops 0.7, so it reports 2/3
    assert froc_score(froc_curve(hits, drop_lowest=True)) == pytest.approx(2 / 3)


def test_no_lesions_gives_nan_score() -> None:
    curve = froc_curve([SlideHits("n", (0.9,), (), 0)])
    assert np.isnan(froc_score(curve))


def test_slide_auc_by_hand() -> None:
    # A 0.95 and B 0.6 tumour, C 0.85 negative: A > C, B < C -> 1/2
    assert roc_auc([0.95, 0.6, 0.85], [True, True, False]) == pytest.approx(0.5)
    # a tie counts half: B = C -> (1 + 0.5) / 2
    assert roc_auc([0.95, 0.85, 0.85], [True, True, False]) == pytest.approx(0.75)
    assert roc_auc([0.9, 0.1, 0.2, 0.3], [True, False, False, False]) == pytest.approx(1.0)
    assert np.isnan(roc_auc([0.9, 0.8], [True, True]))
