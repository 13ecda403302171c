"""The stem run on slices of the batch: which modules, what slice, same outputs, tree intact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _spec import tiny_spec
from torch import nn

from wsi_saliency.models import LoadedModel
from wsi_saliency.saliency import SaliencyEngine
from wsi_saliency.saliency.stem import StemPlan, plan_stem, sliced_forward, stem_chain


class Net(nn.Module):
    """ResNet-shaped: conv-bn-relu-maxpool stem, a residual block, a strided conv, head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.block(x) + x)  # maxpool's output has two users: the stem ends
        x = torch.relu(self.down(x))
        return self.head(x.mean(dim=(2, 3)))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    net.bn1.running_mean.uniform_(-0.5, 0.5)
    net.bn1.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_chain_is_the_per_sample_prefix_up_to_the_first_branch() -> None:
    net = _net()
    assert stem_chain(net) == ("conv1", "bn1", "relu", "maxpool")
    assert stem_chain(net, keep={"relu"}) == ("conv1", "bn1")
    net.bn1.train()
    assert stem_chain(net) == ("conv1",)  # a training batch norm mixes the samples


def test_chain_never_enters_a_kept_container() -> None:
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()),
        nn.Flatten(), nn.Linear(8 * 16 * 16, 2),
    ).eval()
    assert stem_chain(net) == ("0.0", "0.1", "1.0", "1.1")
    assert stem_chain(net, keep={"1"}) == ("0.0", "0.1")  # "1"'s hooks see its own output
    assert stem_chain(net, keep={"0"}) == ()


def test_stem_ends_where_the_maps_have_shrunk_to_a_quarter() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),  # 16 x 32 x 32: the largest map
        nn.MaxPool2d(2),  # a quarter of it: the stem ends here
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16 * 16, 2),
    ).eval()
    assert stem_chain(net) == ("0", "1", "2", "3", "4")
    plan = plan_stem(net, torch.zeros(1, 3, 32, 32), slice_bytes=16 * 32 * 32 * 4 * 2)
    assert plan == StemPlan(("0", "1", "2"), 2)


def test_no_chain_for_functional_starts_shared_modules_or_untraceable_nets() -> None:
    class Functional(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x * 2.0)  # the input first goes through a function

    class Shared(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.head(self.relu(self.down(self.block(x))).mean(dim=(2, 3)))

    class Branchy(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return super().forward(x)

    class Aliased(Net):
        def __init__(self) -> None:
            super().__init__()
            self.first = self.conv1  # the same module under a second name

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)

    assert stem_chain(Functional().eval()) == ()
    assert stem_chain(Aliased().eval()) == ()
    assert stem_chain(Shared().eval()) == ("conv1", "bn1")  # relu runs twice
    assert stem_chain(Branchy().eval()) == ()


def test_slice_size_fits_the_largest_stem_map_in_the_budget() -> None:
    net = _net()
    sample = torch.zeros(1, 3, 64, 64)
    largest = 16 * 32 * 32 * 4  # conv1's map in float32 (larger than the input's 3x64x64)
    plan = plan_stem(net, sample, slice_bytes=3 * largest)
    assert plan == StemPlan(("conv1", "bn1", "relu", "maxpool"), 3)
    assert plan_stem(net, sample, itemsize=2, slice_bytes=3 * largest) is not None
    assert plan_stem(net, sample, itemsize=2, slice_bytes=3 * largest).slice_size == 6  # type: ignore[union-attr]
    assert plan_stem(net, sample, slice_bytes=1).slice_size == 1  # type: ignore[union-attr]
    assert plan_stem(nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 2)), sample) is None
    patchify = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.Flatten(), nn.Linear(16 * 16 * 16, 2))
    assert stem_chain(patchify) == ("0",)
    assert plan_stem(patchify, sample) is None  # one module: nothing to keep in the cache


@pytest.mark.parametrize("channels_last", [False, True])
def test_sliced_forward_equals_the_whole_batch_and_restores_the_tree(channels_last: bool
                                                                     ) -> None:
    net = _net()
    x = torch.randn(7, 3, 64, 64)
    if channels_last:
        net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    before = dict(net.named_modules())
    calls: list[int] = []
    net.conv1.register_forward_hook(lambda _m, a, _o: calls.append(a[0].shape[0]))
    seen: list[torch.Tensor] = []
    net.block.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    plan = StemPlan(("conv1", "bn1", "relu", "maxpool"), 3)
    with torch.no_grad():
        ref = net(x)
        calls.clear()
        seen.clear()
        out = sliced_forward(net, plan, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert calls == [3, 3, 1]  # the stem's hooks run once per slice
    assert seen[0].shape[0] == 7  # the rest of the network sees the whole batch
    assert seen[0].is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert dict(net.named_modules()) == before
    with torch.no_grad():  # a batch no larger than a slice runs whole
        calls.clear()
        sliced_forward(net, plan, x[:3])
    assert calls == [3]


def test_tree_is_restored_when_the_rest_of_the_network_fails() -> None:
    net = _net()
    before = dict(net.named_modules())

    def boom(_m: nn.Module, _a: object) -> None:
        raise RuntimeError("boom")

    handle = net.down.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        sliced_forward(net, StemPlan(("conv1", "bn1", "relu", "maxpool"), 2),
                       torch.randn(5, 3, 64, 64))
    handle.remove()
    assert dict(net.named_modules()) == before


def test_engine_slices_the_stem_with_the_same_outputs() -> None:
    model = LoadedModel(spec=tiny_spec(), module=_net())
    tiles = np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    sliced = SaliencyEngine(model, layer="block", method="gradient-x-activation")
    whole = SaliencyEngine(model, layer="block", method="gradient-x-activation",
                           slice_stem=False)
    assert sliced.stem_plan is not None and whole.stem_plan is None
    assert sliced.stem_plan.paths == ("conv1", "bn1", "relu", "maxpool")  # bn1 folded: Identity
    sliced._stem_plan = StemPlan(sliced.stem_plan.paths, 4)  # slice this small batch
    p1, m1 = sliced.run(tiles)
    p0, m0 = whole.run(tiles)
    np.testing.assert_allclose(p1, p0, atol=1e-6)
    np.testing.assert_allclose(m1, m0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sliced.predict(tiles), whole.predict(tiles), atol=1e-6)


def test_engine_does_not_slice_where_it_could_change_the_explanation() -> None:
    model = LoadedModel(spec=tiny_spec(), module=_net())
    assert SaliencyEngine(model, layer="relu", method="gradient").stem_plan == StemPlan(
        ("conv1", "bn1"), SaliencyEngine(model, layer="relu").stem_plan.slice_size)  # type: ignore[union-attr]
    assert SaliencyEngine(model, layer="block", smoothing="forward-hook").stem_plan is None
    assert SaliencyEngine(model, layer="block", method="integrated-gradients").stem_plan is None
    assert SaliencyEngine(model, layer="block", method=None).stem_plan is not None


def test_engine_explaining_a_container_slices_only_before_it() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),  # explained: a container
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.Flatten(), nn.Linear(8 * 64 * 64, 2),
    ).eval()
    model = LoadedModel(spec=tiny_spec(), module=net)
    sliced = SaliencyEngine(model, layer="1", method="gradient-x-activation")
    whole = SaliencyEngine(model, layer="1", method="gradient-x-activation", slice_stem=False)
    assert sliced.stem_plan is not None and sliced.stem_plan.paths == ("0.0", "0.1")
    sliced._stem_plan = StemPlan(sliced.stem_plan.paths, 2)
    tiles = np.random.default_rng(2).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    p1, m1 = sliced.run(tiles)
    p0, m0 = whole.run(tiles)
    np.testing.assert_allclose(p1, p0, atol=1e-6)
    np.testing.assert_allclose(m1, m0, rtol=1e-5, atol=1e-7)


def test_resnet18_default_plan_slices_a_batch_with_the_same_outputs() -> None:
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    net = tvm.resnet18(weights=None, num_classes=2).eval()
    model = LoadedModel(spec=tiny_spec(224, architecture="resnet18"), module=net)
    sliced = SaliencyEngine(model, method="gradient-x-activation", precision="fp32")
    whole = SaliencyEngine(model, method="gradient-x-activation", precision="fp32",
                           slice_stem=False)
    # 64 x 112 x 112 float32 = 3.2 MB per tile: 5 tiles per 16 MiB slice
    assert sliced.stem_plan == StemPlan(("conv1", "bn1", "relu", "maxpool"), 5)
    tiles = np.random.default_rng(3).integers(0, 256, (12, 224, 224, 3), dtype=np.uint8)
    p1, m1 = sliced.run(tiles)
    p0, m0 = whole.run(tiles)
    np.testing.assert_allclose(p1, p0, atol=1e-6)
    np.testing.assert_allclose(m1, m0, rtol=1e-5, atol=1e-6 * np.abs(m0).max())
    np.testing.assert_allclose(sliced.predict(tiles), p0, atol=1e-6)
