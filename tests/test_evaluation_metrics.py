"""Evaluation metrics on toy cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from wsi_saliency.evaluation.agreement import pairwise_agreement, probability_change
from wsi_saliency.evaluation.faithfulness import (
    auc,
    gaussian_blur,
    perturbation_curves,
    pixel_ranks,
)
from wsi_saliency.evaluation.sanity import randomisation_steps, randomise
from wsi_saliency.evaluation.settings import Setting, settings_product, split_list
from wsi_saliency.evaluation.similarity import spearman, ssim
from wsi_saliency.evaluation.smoothness import block_mosaic, block_seam_ratio
from wsi_saliency.models import load_model
from wsi_saliency.saliency.seams import seam_ratio

# ----------------------------------------------------------------------------- seam ratio


def test_seam_ratio_uniform_map_is_one() -> None:
    rng = np.random.default_rng(0)
    m = 1.0 + 0.1 * rng.standard_normal((42, 42))
    r = seam_ratio(m, 14)
    assert r.magnitude == pytest.approx(1.0, abs=0.03)
    assert r.tv == pytest.approx(1.0, abs=0.15)
    assert r.n_border + r.n_interior == 42 * 42
    assert r.n_border == 9 * (14 * 14 - 12 * 12)


def test_seam_ratio_sees_dark_frames_and_jumps() -> None:
    cell = np.ones((8, 8))
    cell[0, :] = cell[-1, :] = cell[:, 0] = cell[:, -1] = 0.25
    r = seam_ratio(np.tile(cell, (3, 3)), 8)
    assert r.magnitude == pytest.approx(0.25)
    # each cell a different constant: all variation sits across borders
    steps = np.kron(np.arange(9.0).reshape(3, 3), np.ones((5, 5)))
    r2 = seam_ratio(steps, 5)
    assert np.isnan(r2.tv)  # zero variation within tiles: ratio undefined, not inf
    ramp = np.add.outer(np.arange(15.0), np.arange(15.0))
    r3 = seam_ratio(ramp, (5, 5))
    assert r3.tv == pytest.approx(1.0)


def test_seam_ratio_offset_and_nan() -> None:
    cell = np.ones((6, 6))
    cell[0, :] = cell[-1, :] = cell[:, 0] = cell[:, -1] = 0.5
    m = np.pad(np.tile(cell, (2, 2)), ((2, 0), (3, 0)), constant_values=np.nan)
    r = seam_ratio(m, 6, offset=(2, 3))
    assert r.magnitude == pytest.approx(0.5)
    assert r.n_border + r.n_interior == 144


def test_block_mosaic_places_tiles_row_major() -> None:
    maps = np.arange(4)[:, None, None] * np.ones((4, 3, 3))
    mos = block_mosaic(maps, (2, 2))
    assert mos.shape == (6, 6)
    assert mos[0, 0] == 0 and mos[0, 3] == 1 and mos[3, 0] == 2 and mos[5, 5] == 3
    assert block_seam_ratio(np.ones((4, 3, 3)), (2, 2)).magnitude == pytest.approx(1.0)


# ----------------------------------------------------------------------------- faithfulness


def test_auc_of_known_curves() -> None:
    assert auc(np.linspace(0, 1, 29)) == pytest.approx(0.5)
    assert auc(np.ones(29)) == pytest.approx(1.0)
    assert auc([[0.0, 1.0], [1.0, 1.0]]).tolist() == [0.5, 1.0]


def test_gaussian_blur_matches_torchvision() -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(2, 3, 40, 36)
    ours = gaussian_blur(x, 11, 5.0)
    ref = tvf.gaussian_blur(x, [11, 11], [5.0, 5.0])
    assert torch.allclose(ours, ref, atol=1e-5)


def test_pixel_ranks_follow_the_upsampled_map() -> None:
    m = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    r = pixel_ranks(m, (2, 2))
    assert r.tolist() == [[3, 2, 1, 0]]
    r8 = pixel_ranks(m, (8, 8)).view(8, 8)
    assert r8[7, 7] < 4 and r8[0, 0] >= 60  # corners clamp: 2 x 2 ties in raster order


def _toy_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Image where a known 10 % of pixels carry the evidence; the score reads only them."""
    g = torch.Generator().manual_seed(seed)
    s = 32
    important = torch.rand(s, s, generator=g) < 0.1
    x = torch.zeros(1, 3, s, s)
    x[0, 0][important] = 1.0
    x[0, 1:] = 0.3 * torch.randn(2, s, s, generator=g)  # distractor channels, ignored
    w = important.float() / important.sum()

    def score(batch: torch.Tensor) -> torch.Tensor:
        evidence = (batch[:, 0] * w).sum(dim=(1, 2))
        return torch.sigmoid(10.0 * evidence - 5.0)

    return x, important, score


def test_faithful_map_beats_random_beats_reversed() -> None:
    x, important, score = _toy_problem()
    truth = important.float()[None] + 0.01 * torch.rand(1, 32, 32)
    rng = np.random.default_rng(1)
    randoms = [torch.from_numpy(rng.standard_normal((1, 32, 32))).float() for _ in range(5)]
    good = perturbation_curves(score, x, truth)
    bad = perturbation_curves(score, x, -truth)
    rnd = [perturbation_curves(score, x, r) for r in randoms]
    ins_r = np.mean([c.insertion_auc[0] for c in rnd])
    del_r = np.mean([c.deletion_auc[0] for c in rnd])
    assert good.insertion_auc[0] > ins_r + 0.1 > bad.insertion_auc[0] + 0.2
    assert good.deletion_auc[0] < del_r - 0.1 < bad.deletion_auc[0] - 0.2
    assert good.fidelity[0] > 0.5 > abs(np.mean([c.fidelity[0] for c in rnd]))
    assert bad.fidelity[0] < -0.5
    # the protocol: nothing perturbed at step 0, everything at the last step
    p0 = float(score(x)[0])
    assert good.deletion[0, 0] == pytest.approx(p0) and good.insertion[0, -1] == pytest.approx(p0)
    assert good.deletion.shape == (1, 29)
    assert good.deletion[0, -1] == pytest.approx(float(score(torch.zeros_like(x))[0]))


def test_insertion_starts_from_the_blurred_tile() -> None:
    x, _, score = _toy_problem()
    c = perturbation_curves(score, x, torch.rand(1, 8, 8), steps=4)
    assert c.insertion[0, 0] == pytest.approx(float(score(gaussian_blur(x))[0]), abs=1e-6)
    assert c.deletion.shape == (1, 5)


# ----------------------------------------------------------------------------- similarity


def test_spearman_equals_scipy_with_ties_and_signs() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 7, 7))
    b = 0.5 * a + rng.standard_normal((6, 7, 7))
    a[0] = np.round(a[0])  # ties
    b[1] = -a[1]
    ours = spearman(a, b)
    ref = [spearmanr(p.ravel(), q.ravel()).statistic for p, q in zip(a, b, strict=True)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    assert ours[1] == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones((1, 3, 3)), a[:1, :3, :3]))[0]


def test_ssim_equals_scikit_image() -> None:
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 14, 14))
    b = a + 0.5 * rng.standard_normal((3, 14, 14))

    def unit(m: np.ndarray) -> np.ndarray:
        return (m - m.min()) / (m.max() - m.min())

    ref = [structural_similarity(unit(p), unit(q), data_range=1.0, win_size=7)
           for p, q in zip(a, b, strict=True)]
    np.testing.assert_allclose(ssim(a, b), ref, rtol=1e-12)
    assert ssim(a, a) == pytest.approx([1.0, 1.0, 1.0])
    assert ssim(a[:, :5, :5], b[:, :5, :5]).shape == (3,)  # window shrinks to 5


def test_agreement_and_probability_change() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 5, 5))
    out = pairwise_agreement({"a": a, "b": 2 * a + 1, "c": -a, "small": a[:, :3, :3]})
    assert out["a"]["b"] == pytest.approx(1.0) and out["a"]["c"] == pytest.approx(-1.0)
    assert "small" not in out["a"] and out["small"]["small"] == 1.0
    dp = probability_change([0.5, 0.9], [0.4, 0.9])
    assert dp["mean_abs_dp"] == pytest.approx(0.05) and dp["max_abs_dp"] == pytest.approx(0.1)


# ----------------------------------------------------------------------------- settings, sanity


def test_settings_cartesian_product() -> None:
    s = settings_product(split_list("layer2,layer3"), split_list(["gradient", "grad-cam"]),
                         split_list("none, backward-hook,none"))
    assert len(s) == 8
    assert s[0] == Setting("layer2", "gradient", "none")
    assert s[-1] == Setting("layer3", "grad-cam", "backward-hook")


def test_randomisation_steps_demo_and_resnet() -> None:
    demo = load_model(None).module
    steps = randomisation_steps(demo)
    assert [s.name for s in steps] == ["fc", "layer4", "layer3", "layer2", "layer1", "stem"]
    tv = pytest.importorskip("torchvision")
    steps = randomisation_steps(tv.models.resnet18(num_classes=2))
    assert [s.name for s in steps] == ["fc", "layer4", "layer3", "layer2", "layer1", "stem"]
    assert steps[-1].modules == ("conv1", "bn1")
    wrapped = torch.nn.Sequential(tv.models.resnet18(num_classes=2))
    assert randomisation_steps(wrapped)[0].modules == ("0.fc",)


def test_randomise_touches_only_its_modules_and_is_seeded() -> None:
    import copy

    net = load_model(None).module
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    randomise(a, ("fc", "layer4"), seed=7)
    randomise(b, ("fc", "layer4"), seed=7)
    sa, sb, s0 = a.state_dict(), b.state_dict(), net.state_dict()
    for k, v in s0.items():
        assert torch.equal(sa[k], sb[k]), k
        changed = not torch.equal(sa[k], v)
        if k.startswith(("fc.weight", "layer4.0.conv", "layer4.1.conv")):
            assert changed, k
        if not k.startswith(("fc.", "layer4.")):
            assert not changed, k
