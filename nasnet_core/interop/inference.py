"""A fast CPU inference path: ``optimize_for_inference(model, example)``.

What it applies (each measured to help on CPU with ``tools/benchmark_models.py``):
BatchNorm folded into the convs (``fuse_bn``), channels_last weights and input, and a
frozen TorchScript trace (``torch.jit.trace`` + ``torch.jit.freeze``), which inlines the
weights as constants and lets the JIT fuse conv + add/ReLU patterns. The result is
specialised to the example's spatial size (batch stays free) and is inference only.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .fuse import fuse_bn

__all__ = ["optimize_for_inference", "OptimizedModel"]


class OptimizedModel(nn.Module):
    """A frozen, traced model that converts its input to channels_last and runs without grad."""

    def __init__(self, traced: torch.jit.ScriptModule, channels_last: bool, image_hw: tuple[int, int]):
        super().__init__()
        self.traced = traced
        self.channels_last = channels_last
        self.image_hw = image_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` (same spatial size as the example it was built with)."""
        if tuple(x.shape[-2:]) != self.image_hw:
            raise ValueError(f"optimised model was built for {self.image_hw} inputs, got "
                             f"{tuple(x.shape[-2:])}; call optimize_for_inference with such an example")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.traced(x)


def optimize_for_inference(model: nn.Module, example: torch.Tensor, channels_last: bool = True,
                           freeze: bool = True) -> nn.Module:
    """A CPU-inference copy of ``model``: BN folded, channels_last, traced and frozen.

    ``model`` itself is not changed. ``freeze=False`` returns the eager fused module
    (still channels_last), which accepts any input size.
    """
    if example.dim() != 4:
        raise ValueError(f"example must be an image batch (N, C, H, W), got shape {tuple(example.shape)}")
    fast = fuse_bn(copy.deepcopy(model).eval())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fast = fast.to(memory_format=fmt)
    if not freeze:
        return fast
    x = example.contiguous(memory_format=fmt)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.freeze(torch.jit.trace(fast, x, check_trace=False))
        traced(x)  # the first calls run the JIT's optimisation passes
        traced(x)
    return OptimizedModel(traced, channels_last, tuple(int(s) for s in example.shape[-2:])).eval()
