"""Inference-time folding of BatchNorm into the conv before it (eval mode only).

The modules say what folds: any module with a ``fold_pairs()`` method (every op,
``FactorizedReduction``, the stem conv, the auxiliary head) lists its ``FoldPair``s.
A BatchNorm that no module lists is an error, never skipped.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.layers import BN_TYPES

__all__ = ["fuse_bn", "fold_plan"]


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.Module, lo: int, hi: int) -> None:
    """Fold channels [lo, hi) of ``bn`` into ``conv`` (whose outputs are those channels)."""
    scale = bn.weight[lo:hi] * (bn.running_var[lo:hi] + bn.eps).rsqrt()
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean[lo:hi]) * scale + bn.bias[lo:hi])


def fold_plan(model: nn.Module) -> list[tuple[nn.Module, str, list]]:
    """(owner, norm attribute, its FoldPairs) for every BatchNorm of ``model``.

    Raises ValueError naming any BatchNorm that no module lists, or whose listed convs do
    not cover its channels exactly once.
    """
    names = {id(m): n for n, m in model.named_modules()}
    plan, listed = [], set()
    for owner in model.modules():
        by_norm: dict[str, list] = {}
        for pair in getattr(owner, "fold_pairs", tuple)():
            by_norm.setdefault(pair.norm, []).append(pair)
        for attr, pairs in by_norm.items():
            norm = getattr(owner, attr)
            if not isinstance(norm, BN_TYPES):
                continue  # GroupNorm and the like depend on the input: nothing to fold
            spans = sorted((p.start, p.start + p.conv.out_channels) for p in pairs)
            if [lo for lo, _ in spans] != [0] + [hi for _, hi in spans[:-1]] \
                    or spans[-1][1] != norm.num_features:
                raise ValueError(f"fuse_bn: the fold pairs of {names[id(norm)]} cover channels "
                                 f"{spans}, not 0..{norm.num_features} once")
            plan.append((owner, attr, pairs))
            listed.add(id(norm))
    unlisted = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
                if isinstance(m, BN_TYPES) and id(m) not in listed]
    if unlisted:
        raise ValueError(f"fuse_bn: no module lists the conv feeding {', '.join(unlisted)}; "
                         "the module holding a BatchNorm must list it in fold_pairs()")
    return plan


def fuse_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of ``model`` into the conv that feeds it, in place.

    Only for inference: the model must be in eval mode, and the BatchNorms become
    ``nn.Identity``, so its state dict no longer matches a checkpoint. Norms that are not
    BatchNorm (GN, the combiners' norms) stay.
    """
    if model.training:
        raise ValueError("fuse_bn needs a model in eval mode (it folds running statistics)")
    plan = fold_plan(model)  # checks everything before changing anything
    for owner, attr, pairs in plan:
        bn = getattr(owner, attr)
        for pair in pairs:
            _fold(pair.conv, bn, pair.start, pair.start + pair.conv.out_channels)
        setattr(owner, attr, nn.Identity())
    return model
