"""The detector's fast inference copy (``TEST.FAST_EVAL``): frozen BN folded, channels-last NASNet parts.

``fast_eval_model(model)`` returns an eval-only deep copy of a built detector in which every NASNet
part (the C4 / FPN backbone's network and the per-ROI head's cells) has its BatchNorm and
Detectron2 FrozenBatchNorm2d folded into the conv that feeds it (in eval both are the affine
``x * scale + shift`` of their running statistics) and its weights in channels-last layout, which
CPU convolution kernels (oneDNN) run faster, depthwise ones most. The model it was made from is
not changed, so training goes on with the unfolded weights; the copy refuses ``.train()``.
``tools/train_net.py`` (``--eval-only`` and the periodic evaluation), ``tools/demo.py`` and
``tools/benchmark_detector.py`` evaluate through it when ``TEST.FAST_EVAL`` is on (the default).
"""

from __future__ import annotations

import copy

import torch
from detectron2.layers import FrozenBatchNorm2d as D2FrozenBN
from torch import nn

from nasnet_core.interop.fuse import fuse_bn
from nasnet_core.model.layers import FrozenBatchNorm2d
from nasnet_core.model.network import NASNet

__all__ = ["FastEvalModel", "fast_eval_model", "maybe_fast_eval"]


class FastEvalModel(nn.Module):
    """An inference-only detector: BN folded, channels-last NASNet parts; ``.train()`` raises."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batched_inputs):
        """The wrapped detector's inference on ``batched_inputs`` (no autograd)."""
        with torch.no_grad():
            return self.model(batched_inputs)

    def train(self, mode: bool = True):
        """Refuses training mode: the BN statistics are folded into the weights."""
        if mode:
            raise ValueError("this detector copy has its BatchNorm folded for inference (TEST.FAST_EVAL); "
                             "train the model it was made from")
        return super().train(False)


def _to_core_frozen_bn(module: nn.Module) -> None:
    """Replace every Detectron2 FrozenBatchNorm2d below ``module`` by nasnet_core's (the class
    ``fuse_bn`` folds; same statistics, affine and eps)."""
    for name, child in module.named_children():
        if isinstance(child, D2FrozenBN):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for buf in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, buf).copy_(getattr(child, buf))
            setattr(module, name, frozen.to(child.weight.device))
        else:
            _to_core_frozen_bn(child)


@torch.no_grad()
def fast_eval_model(model: nn.Module, channels_last: bool = True) -> FastEvalModel:
    """An eval-only copy of the detector ``model`` with every NASNet part's BN folded (channels-last
    weights unless ``channels_last`` is False); ``model`` itself is not changed."""
    model = getattr(model, "module", model)  # DistributedDataParallel: the module it wraps
    fast = copy.deepcopy(model).eval()
    parts = [m for m in fast.modules() if isinstance(m, NASNet)]
    if not parts:
        raise ValueError(f"fast_eval_model: {type(model).__name__} has no NASNet part to fold")
    for part in parts:
        _to_core_frozen_bn(part)
        fuse_bn(part)
        if channels_last:
            part.to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    return FastEvalModel(fast).eval()


def maybe_fast_eval(cfg, model: nn.Module) -> nn.Module:
    """``fast_eval_model(model)`` when ``TEST.FAST_EVAL`` is on and ``model`` has a NASNet part, else
    ``model`` (a detector without NASNet, such as the R50 comparator, is evaluated as it is)."""
    base = getattr(model, "module", model)
    if not cfg.TEST.FAST_EVAL or not any(isinstance(m, NASNet) for m in base.modules()):
        return model
    return fast_eval_model(base)
