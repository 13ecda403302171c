"""Smoothing hooks on strided convolutions (Smooth Deep Saliency) and the TV metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsi_saliency.errors import ConfigError
from wsi_saliency.saliency import (
    border_gain,
    box_average,
    register_smoothing_hooks,
    smoothing_hooks,
    strided_convs,
    total_variation,
    tv_reduction,
)


def _no_hooks(module: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        and not m._backward_pre_hooks
        for m in module.modules()
    )


def _input_grad(module: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with smoothing_hooks(module, mode):
        module(x).sum().backward()
    assert x.grad is not None
    return x.grad


# ------------------------------------------------------------------ the 1x1 / 3x3 cases


def test_1x1_stride2_plain_gradient_is_zero_one_and_hooked_is_quarter() -> None:
    conv = nn.Conv2d(1, 1, 1, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.randn(1, 1, 32, 32)
    plain = _input_grad(conv, x, "none")
    assert set(plain.unique().tolist()) == {0.0, 1.0}
    assert plain[0, 0, ::2, ::2].eq(1).all() and plain.sum() == 16 * 16
    hooked = _input_grad(conv, x, "backward-hook")
    assert torch.equal(hooked, torch.full_like(hooked, 0.25))
    assert _no_hooks(conv)


def test_3x3_stride2_hooked_tv_below_tenth_of_plain() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 4, 32, 32)
    plain = _input_grad(conv, x, "none")
    hooked = _input_grad(conv, x, "backward-hook")
    # Where the zero padding does not reach (all but the outer 1 px frame) the transposed
    # convolution is periodic with period 2 and the 2x2 box makes it exactly constant.
    inner_plain, inner_hooked = plain[..., 1:-1, 1:-1], hooked[..., 1:-1, 1:-1]
    per_channel = inner_hooked.flatten(2)
    torch.testing.assert_close(per_channel.amax(-1), per_channel.amin(-1), rtol=0, atol=1e-5)
    tv_plain = total_variation(inner_plain)
    tv_hook = total_variation(inner_hooked)
    assert np.all(tv_hook < 0.1 * tv_plain), (tv_hook, tv_plain)
    # The full map keeps the padding's uneven border rows, which the scale normalisation
    # of the metric magnifies; smoothing still removes most of the TV there.
    assert np.all(total_variation(hooked) < 0.25 * total_variation(plain))


def test_box_average_is_zero_padded_top_left() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = box_average(x)
    assert out[0, 0, 0, 0] == x[0, 0, 0, 0] / 4
    assert out[0, 0, 2, 3] == (x[0, 0, 2, 3] + x[0, 0, 1, 3] + x[0, 0, 2, 2] + x[0, 0, 1, 2]) / 4
    assert torch.equal(box_average(x, 1), x)


# ------------------------------------------------------------------ backward hook


class Net(nn.Module):
    """conv s1 -> ReLU -> conv s2 -> ReLU -> conv s2 -> ReLU -> pool -> linear."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU(inplace=inplace)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.r2 = nn.ReLU(inplace=inplace)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.r3 = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.r3(self.c3(self.r2(self.c2(self.r1(self.c1(x))))))
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return out


def _nets() -> tuple[Net, Net]:
    torch.manual_seed(1)
    a = Net(inplace=False).eval()
    b = Net(inplace=True).eval()
    b.load_state_dict(a.state_dict())
    return a, b


def _reference_grad(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same smoothing done with register_full_backward_hook."""

    def hook(_m: nn.Module, grad_input: tuple[torch.Tensor | None, ...],
             _grad_output: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
        g = grad_input[0]
        return (None if g is None else box_average(g), *grad_input[1:])

    handles = [conv.register_full_backward_hook(hook) for _, conv in strided_convs(net)]
    try:
        x = x.clone().requires_grad_(True)
        net(x)[:, 1].sum().backward()
    finally:
        for h in handles:
            h.remove()
    assert x.grad is not None
    return x.grad


def _prehook_grad(net: nn.Module, x: torch.Tensor, *, border_aware: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradient with the backward hook; ``border_aware=False`` is the paper's
    zero-padded box that the full-backward-hook reference computes."""
    x = x.clone().requires_grad_(True)
    with smoothing_hooks(net, "backward-hook", border_aware=border_aware):
        logits = net(x)
        logits[:, 1].sum().backward()
    assert x.grad is not None
    return logits.detach(), x.grad


def test_backward_hook_matches_full_backward_hook_reference() -> None:
    net, _ = _nets()
    x = torch.randn(3, 3, 32, 32)
    ref = _reference_grad(net, x)
    _, got = _prehook_grad(net, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    assert _no_hooks(net)


def test_backward_hook_works_with_inplace_relu_where_full_backward_hook_fails() -> None:
    net, net_inplace = _nets()
    x = torch.randn(3, 3, 32, 32)
    with pytest.raises(RuntimeError):
        _reference_grad(net_inplace, x)
    assert _no_hooks(net_inplace)
    ref = _reference_grad(net, x)
    _, got = _prehook_grad(net_inplace, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_backward_hook_leaves_logits_bitwise_equal() -> None:
    net, net_inplace = _nets()
    x = torch.randn(3, 3, 32, 32)
    for n in (net, net_inplace):
        with torch.no_grad():
            plain = n(x)
        for aware in (False, True):
            hooked, _ = _prehook_grad(n, x, border_aware=aware)
            assert torch.equal(plain, hooked)


def test_backward_hook_changes_gradient() -> None:
    net, _ = _nets()
    x = torch.randn(2, 3, 32, 32)
    xg = x.clone().requires_grad_(True)
    net(xg)[:, 1].sum().backward()
    _, hooked = _prehook_grad(net, x)
    assert xg.grad is not None and not torch.allclose(xg.grad, hooked)


# ------------------------------------------------------------------ forward hook


@pytest.mark.parametrize(
    ("groups", "dilation", "padding", "kernel"),
    [(1, 1, 1, 3), (2, 1, 1, 3), (1, 2, 2, 3), (4, 1, 0, 1), (2, 2, 3, 5)],
)
def test_forward_hook_equals_stride1_conv_box_subsample(
    groups: int, dilation: int, padding: int, kernel: int
) -> None:
    torch.manual_seed(2)
    stem = nn.Conv2d(4, 4, 1)  # the stem is left alone
    conv = nn.Conv2d(4, 8, kernel, stride=2, padding=padding, dilation=dilation, groups=groups)
    net = nn.Sequential(stem, conv).eval()
    x = torch.randn(2, 4, 33, 33)
    with torch.no_grad():
        z = stem(x)
        ref_full = F.conv2d(z, conv.weight, conv.bias, stride=1, padding=padding,
                            dilation=dilation, groups=groups)
        ref = box_average(ref_full)[:, :, ::2, ::2]
        with smoothing_hooks(net, "forward-hook"):
            got = net(x)
        plain = net(x)
    assert got.shape == plain.shape == ref.shape
    # interior: away from the zero padding of both the convolution and the box
    m = 1 + (dilation * (kernel - 1)) // 2
    torch.testing.assert_close(got[:, :, m:-m, m:-m], ref[:, :, m:-m, m:-m], rtol=1e-5,
                               atol=1e-5)
    assert not torch.allclose(got, plain)
    assert _no_hooks(net)


def test_forward_hook_skips_stem_and_unstrided_convs() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1))
    handles = register_smoothing_hooks(net, "forward-hook")
    try:
        assert len(handles) == 1
        assert len(net[2]._forward_pre_hooks) == 1 and not net[0]._forward_pre_hooks
    finally:
        for h in handles:
            h.remove()
    assert _no_hooks(net)
    assert len(register_smoothing_hooks(net, "none")) == 0


def test_hooks_removed_after_exception_and_bad_mode() -> None:
    net, _ = _nets()
    with pytest.raises(ValueError, match="boom"), smoothing_hooks(net, "backward-hook"):
        assert not _no_hooks(net)
        raise ValueError("boom")
    assert _no_hooks(net)
    with pytest.raises(ConfigError, match="backward-hooks"):
        register_smoothing_hooks(net, "backward-hooks")
    assert _no_hooks(net)


# ------------------------------------------------------------------ TV metric


def test_total_variation_values() -> None:
    flat = torch.ones(1, 2, 8, 8)
    assert total_variation(flat)[0] == 0.0
    # a vertical step map: one channel, left half -1, right half +1 -> centred = same,
    # mean |.| = 1, one jump of 2 per row: TV = 8 * 2 / (8 * 8)
    step = torch.ones(8, 8)
    step[:, :4] = -1
    assert total_variation(step)[0] == pytest.approx(16 / 64)
    # scale invariance and batching
    assert total_variation(5 * step)[0] == pytest.approx(16 / 64)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1
    batch = torch.stack([step[None], checker[None]])
    tv = total_variation(batch)
    assert tv.shape == (2,) and tv[1] == pytest.approx(2 * 8 * 7 * 2 / 64)
    assert tv_reduction(0.25, 1.0) == 0.75
    with pytest.raises(ValueError):
        total_variation(torch.zeros(2))


# ------------------------------------------------------------------ border-aware backward hook


def _border_reach(net: nn.Module) -> int:
    """Input pixels within which border corrections of ``Net`` can arrive: each hooked
    conv's correction sits on its input's outer ring and spreads by the kernel reach of
    the convs below it, scaled by their strides (c1: 1 px, c2: 2 px, c3: 4 px input)."""
    return 1 + 2 * (1 + 1) + 4 * (1 + 1)


def test_border_aware_backward_hook_keeps_interior_bitwise() -> None:
    net, net_inplace = _nets()
    x = torch.randn(3, 3, 32, 32)
    ref = _reference_grad(net, x)
    m = _border_reach(net)
    for n in (net, net_inplace):
        _, aware = _prehook_grad(n, x, border_aware=True)
        assert torch.equal(aware[..., m:-m, m:-m], ref[..., m:-m, m:-m])
        assert not torch.equal(aware, ref)  # the border changed
        assert _no_hooks(n)


def test_border_gain_counts_valid_terms() -> None:
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    gain = border_gain(conv, (8, 8), box=2)
    # transposed 3x3 stride-2 conv: even rows get 1 term, odd rows 2, the box averages
    # two rows (1.5 terms); row 0 has no row -1: 1 / 2 in the tile vs 3 / 2 unbounded;
    # the last row (7, odd) misses output row 4: 1 + 1 terms vs 2 + 1
    assert gain[0, 3].item() == pytest.approx(3.0)
    assert gain[7, 3].item() == pytest.approx(1.5)
    assert torch.equal(gain[1:7, 1:7], torch.ones(6, 6))
    plain = border_gain(nn.Conv2d(1, 1, 3, padding=1), (5, 5), box=1)
    assert plain[0, 2].item() == pytest.approx(1.5) and plain[0, 0].item() == pytest.approx(2.25)
    assert torch.equal(plain[1:4, 1:4], torch.ones(3, 3))


def test_border_aware_hook_does_not_attenuate_borders() -> None:
    """Uniform kernels: in an unbounded image the smoothed input gradient is the same at
    every pixel (every pixel receives the same number of terms); with the border-aware
    hook the tile's gradient is too, while the paper's zero-padded box fades the first
    row/column to a fraction (normalising by the number of valid terms is exact here and
    an approximation for other kernels)."""
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False),
                        nn.Conv2d(4, 4, 3, padding=1, bias=False)).eval()
    with torch.no_grad():
        for c in net:
            assert isinstance(c, nn.Conv2d)
            c.weight.fill_(0.1)
    x = torch.randn(1, 2, 16, 16)  # linear net: the gradient does not depend on x

    def grad(aware: bool) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        with smoothing_hooks(net, "backward-hook", border_aware=aware):
            net(xg).sum().backward()
        assert xg.grad is not None
        return xg.grad[0, 0]

    aware, paper = grad(True), grad(False)
    interior = paper[4:-4, 4:-4].mean()
    torch.testing.assert_close(aware, torch.full_like(aware, float(interior)), rtol=1e-5,
                               atol=0)
    assert paper[0, 8] < 0.5 * interior and paper[8, 0] < 0.5 * interior
    assert _no_hooks(net)


def test_border_aware_hooks_every_conv_and_none_is_left() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                        nn.Conv2d(4, 4, 1))
    with smoothing_hooks(net, "backward-hook") as handles:
        assert len(handles) == 2  # the 1x1 stride-1 conv has no border effect
    with smoothing_hooks(net, "backward-hook", border_aware=False) as handles:
        assert len(handles) == 1
    assert _no_hooks(net)


def test_engine_map_interior_is_the_papers_bitwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Demo model, layer3 (14 x 14): the border-aware hook changes only the pixels its
    border corrections reach (layer4's 3x3 convolutions: 3 map pixels); the interior is
    bitwise the paper's zero-padded box, and the border is brighter than before."""
    from functools import partial

    import wsi_saliency.saliency.engine as engine_mod
    from wsi_saliency.models import load_model
    from wsi_saliency.saliency import SaliencyEngine

    rng = np.random.default_rng(0)
    tiles = rng.integers(60, 250, size=(4, 224, 224, 3), dtype=np.uint8)
    eng = SaliencyEngine(load_model(None), method="gradient-x-activation", device="cpu")
    probs, aware = eng.run(tiles)
    monkeypatch.setattr(engine_mod, "register_smoothing_hooks",
                        partial(register_smoothing_hooks, border_aware=False))
    probs_paper, paper = eng.run(tiles)
    assert np.array_equal(probs, probs_paper)
    assert np.array_equal(aware[:, 3:-3, 3:-3], paper[:, 3:-3, 3:-3])
    frame = np.ones((14, 14), bool)
    frame[1:-1, 1:-1] = False
    assert np.abs(aware[:, frame]).mean() > 1.5 * np.abs(paper[:, frame]).mean()
    assert _no_hooks(eng._module)
