"""One BatchNorm fold, shared by the fast copy (``cnnviz.speed.fastpath``) and LRP
(``cnnviz.methods._lrp_rules``).

In eval mode a BatchNorm is the affine map ``y = (x - mean) / sqrt(var + eps) * w + b``; after a
convolution ``z = W * x + c`` the two are one convolution with

    W' = W · s,   c' = c · s + (b - mean · s),   s = w / sqrt(var + eps)   (w = 1, b = 0 without affine)

Both callers must compute these with the same operations in the same order, or their results would
differ in the last bits; hence one function.
"""
from __future__ import annotations

import torch
from torch import nn

BatchNorm = nn.modules.batchnorm._BatchNorm


def can_fold(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn``, fed by ``conv``, folds into it: a ``Conv2d`` followed by a BatchNorm that keeps
    running statistics over as many channels as the convolution has outputs."""
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, BatchNorm) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def folded_parameters(conv: nn.Conv2d, bn: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the one convolution equal to ``conv`` then ``bn`` in eval mode (new
    tensors, without autograd history; ``conv`` and ``bn`` are left unchanged)."""
    with torch.no_grad():
        scale = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
        weight = conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        return weight, bias * scale + shift
