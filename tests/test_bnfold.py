"""One BatchNorm fold (``cnnviz.core.bnfold``) for the fast copy and for LRP: the folded convolution
equals conv -> BatchNorm in eval mode, and both users hold exactly the bits the one function gives."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz.core.bnfold import can_fold, folded_parameters
from cnnviz.methods._lrp_rules import fold_batchnorms, private_copy
from cnnviz.speed import fastpath


def conv_bn(affine: bool, bias: bool) -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.BatchNorm2d(6, affine=affine), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.3, 3)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    return net.eval()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_the_folded_convolution_is_conv_then_batchnorm(affine, bias):
    net = conv_bn(affine, bias).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    weight, b = folded_parameters(net[0], net[1])
    folded = nn.functional.conv2d(x, weight, b, padding=1)
    torch.testing.assert_close(folded, net[1](net[0](x)), rtol=1e-12, atol=1e-12)
    assert not weight.requires_grad and not b.requires_grad


def test_what_folds():
    assert can_fold(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert not can_fold(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5))
    assert not can_fold(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    assert not can_fold(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_fast_copy_and_lrp_hold_the_same_bits():
    net, x = conv_bn(True, True), torch.randn(1, 3, 8, 8)
    weight, bias = folded_parameters(net[0], net[1])
    with fastpath.using(True):
        fast, _ = fastpath.fast_model(net, x)
    assert fast is not net
    lrp = private_copy(net)
    fold_batchnorms(lrp)
    for conv in (fast[0], lrp[0]):
        assert torch.equal(conv.weight, weight) and torch.equal(conv.bias, bias)
