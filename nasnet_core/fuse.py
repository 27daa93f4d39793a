"""Inference-time folding of BatchNorm into the conv before it (eval mode only)."""

from __future__ import annotations

import torch
from torch import nn

from .ops import FactorizedConv, FactorizedReduction, FrozenBatchNorm2d, Pool, ReLUConvBN, StackedSeparable

__all__ = ["fuse_bn"]

_BN = (nn.BatchNorm2d, FrozenBatchNorm2d)


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.Module, lo: int = 0, hi: int | None = None) -> None:
    """Fold channels [lo, hi) of ``bn`` into ``conv`` (whose outputs are those channels)."""
    hi = bn.num_features if hi is None else hi
    scale = bn.weight[lo:hi] * (bn.running_var[lo:hi] + bn.eps).rsqrt()
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean[lo:hi]) * scale + bn.bias[lo:hi])


def _pairs(m: nn.Module):
    """(owner, conv attribute path, bn attribute) pairs of one op/cell-level module."""
    if isinstance(m, ReLUConvBN) or (isinstance(m, Pool) and m.conv is not None):
        yield m, "conv", "bn"
    elif isinstance(m, FactorizedConv):
        yield m, "conv_kx1", "bn"
    elif isinstance(m, StackedSeparable):
        yield m, "separable_1.pointwise_conv2d", "bn_sep_1"
        yield m, "separable_2.pointwise_conv2d", "bn_sep_2"


def fuse_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of the cells, ops and stem into the preceding conv, in place.

    Only for inference: the model must be in eval mode, and BN layers become Identity, so
    its state dict no longer matches a checkpoint. The auxiliary head is left as is.
    """
    if model.training:
        raise ValueError("fuse_bn needs a model in eval mode (it folds running statistics)")
    for m in list(model.modules()):
        for owner, conv_path, bn_name in _pairs(m):
            bn = getattr(owner, bn_name)
            if isinstance(bn, _BN):
                _fold(owner.get_submodule(conv_path), bn)
                setattr(owner, bn_name, nn.Identity())
        if isinstance(m, FactorizedReduction) and isinstance(m.bn, _BN):
            c1 = m.path_1.out_channels
            _fold(m.path_1, m.bn, 0, c1)
            if m.path_2 is not None:
                _fold(m.path_2, m.bn, c1)
            m.bn = nn.Identity()
    conv0 = getattr(model, "conv0", None)
    if isinstance(conv0, nn.Sequential) and isinstance(getattr(conv0, "bn", None), _BN):
        _fold(conv0.conv, conv0.bn)
        conv0.bn = nn.Identity()
    return model
