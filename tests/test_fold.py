"""Batch-norm folding of the engine's network: same outputs, caller's model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _spec import tiny_spec
from torch import nn

from wsi_saliency.models import LoadedModel
from wsi_saliency.saliency import SaliencyEngine
from wsi_saliency.saliency.fold import fold_batchnorm, foldable_pairs


class Net(nn.Module):
    """conv-bn-relu twice (the second conv's output also feeds a side branch), head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        x = torch.relu(self.bn2(y)) + 0.1 * y  # conv2's output has two users
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.head(x.mean(dim=(2, 3)))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    for bn in (net.bn1, net.bn2, net.bn3):  # non-trivial statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def test_pairs_skip_shared_outputs_kept_names_and_training_mode() -> None:
    net = _net()
    assert foldable_pairs(net) == [("conv1", "bn1"), ("conv3", "bn3")]
    assert foldable_pairs(net, keep={"conv1"}) == [("conv3", "bn3")]
    assert foldable_pairs(net, keep={"bn3"}) == [("conv1", "bn1")]
    net.bn1.train()
    assert foldable_pairs(net) == [("conv3", "bn3")]


def test_fold_keeps_the_function_and_replaces_bn_by_identity() -> None:
    net = _net()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        assert fold_batchnorm(net) == ["bn1", "bn3"]
        out = net(x)
    assert isinstance(net.bn1, nn.Identity) and isinstance(net.bn3, nn.Identity)
    assert isinstance(net.bn2, nn.BatchNorm2d)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_untraceable_network_is_left_alone() -> None:
    class Branchy(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return super().forward(x)

    net = Branchy().eval()
    assert foldable_pairs(net) == [] and fold_batchnorm(net) == []


def test_engine_folds_its_own_copy_with_the_same_outputs() -> None:
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    net = tvm.resnet18(weights=None, num_classes=2).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.2, 0.2)
    model = LoadedModel(spec=tiny_spec(architecture="resnet18", patch_size=224), module=net)
    tiles = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    folded = SaliencyEngine(model, method="gradient-x-activation", precision="fp32")
    plain = SaliencyEngine(model, method="gradient-x-activation", precision="fp32",
                           fold_bn=False)
    assert len(folded.folded_batchnorms) == 20 and plain.folded_batchnorms == ()
    assert isinstance(folded.module.bn1, nn.Identity)
    assert isinstance(model.module.bn1, nn.BatchNorm2d)  # the caller's model is untouched
    p1, m1 = folded.run(tiles)
    p0, m0 = plain.run(tiles)
    np.testing.assert_allclose(p1, p0, atol=1e-5)
    assert np.corrcoef(m1.ravel(), m0.ravel())[0, 1] > 0.99999
    np.testing.assert_allclose(m1, m0, atol=1e-4 * np.abs(m0).max())


def test_explained_layer_is_never_folded_away() -> None:
    model = LoadedModel(spec=tiny_spec(), module=_net())
    eng = SaliencyEngine(model, layer="conv1", method="gradient-x-activation")
    assert "bn1" not in eng.folded_batchnorms and "bn3" in eng.folded_batchnorms
    tiles = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    ref = SaliencyEngine(model, layer="conv1", method="gradient-x-activation", fold_bn=False)
    np.testing.assert_allclose(eng.run(tiles)[1], ref.run(tiles)[1], rtol=1e-4, atol=1e-6)
