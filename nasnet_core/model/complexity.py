"""Parameter and mult-add counting (multiply-accumulates of conv and linear layers)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["complexity"]


def complexity(model: nn.Module, image_size: int | tuple[int, int] | None = None,
               in_chans: int | None = None) -> dict[str, int]:
    """Parameters, mult-adds and conv/linear output activations of one eval forward pass.

    Mult-adds count each multiply-accumulate of Conv2d and Linear layers once, as the
    paper and timm's profiler do; pools, norms and additions are not counted.
    """
    if image_size is None:
        image_size = getattr(model, "image_size", 224)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if in_chans is None:
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        in_chans = first.in_channels
    totals = {"mult_adds": 0, "activations": 0}

    def conv_hook(m: nn.Conv2d, _inp, out):
        kh, kw = m.kernel_size
        totals["mult_adds"] += out.numel() * (m.in_channels // m.groups) * kh * kw
        totals["activations"] += out.numel()

    def linear_hook(m: nn.Linear, _inp, out):
        totals["mult_adds"] += out.numel() * m.in_features
        totals["activations"] += out.numel()

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, in_chans, h, w, dtype=param.dtype, device=param.device))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    return {"params": sum(p.numel() for p in model.parameters()), **totals}
