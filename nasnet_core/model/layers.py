"""Layers the ops are built from: norm layers chosen by name, TF "SAME" conv and pool, drop path.

Stride-2 layers use TensorFlow "SAME" padding, which is asymmetric on even inputs
(the extra row/col of padding goes at the bottom/right); the ported ImageNet weights
depend on it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BN_TYPES", "FrozenBatchNorm2d", "NORMS", "PAD_MODES", "SameConv2d", "SamePool2d", "drop_path",
           "make_norm", "same_padding",
           "static_hw"]

PAD_MODES = ("tf", "timm")
"""``tf``: TF "SAME" semantics (avg pools never count padding; also what Cadene's
ports compute). ``timm``: as timm's ``nasnetalarge``, whose stride-2 "same" avg
pools count the zero padding in the average."""


# ----------------------------------------------------------------------------
# Norm layers chosen by name
# ----------------------------------------------------------------------------
class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed affine parameters and statistics (buffers only)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the frozen affine normalisation."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


def _group_norm(channels: int, eps: float, momentum: float) -> nn.Module:
    return nn.GroupNorm(math.gcd(channels, 32), channels, eps=eps)


NORMS = {
    "BN": lambda c, eps, momentum: nn.BatchNorm2d(c, eps=eps, momentum=momentum),
    "SyncBN": lambda c, eps, momentum: nn.SyncBatchNorm(c, eps=eps, momentum=momentum),
    "FrozenBN": lambda c, eps, momentum: FrozenBatchNorm2d(c, eps=eps),
    "GN": _group_norm,
}
"""The one norm table: name -> (channels, eps, momentum) -> layer. GN uses gcd(C, 32) groups.
nasnet_det takes its MODEL.NASNET.NORM names from here too."""


def make_norm(name: str, channels: int, eps: float = 1e-3, momentum: float = 0.0003) -> nn.Module:
    """Build the norm layer called ``name`` (BN, SyncBN, FrozenBN, GN) for ``channels``."""
    try:
        factory = NORMS[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; known norms: {', '.join(NORMS)}") from None
    return factory(channels, eps, momentum)


BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)
"""Norm layers that normalise with fixed statistics in eval mode, so they fold into a conv."""


# ----------------------------------------------------------------------------
# TF "SAME" padding
# ----------------------------------------------------------------------------
def static_hw(x: torch.Tensor) -> tuple[int, int]:
    """Height and width of ``x`` as Python ints.

    Under ``torch.jit.trace`` (the TorchScript-based ONNX exporter) sizes are traced
    tensors; TF "SAME" padding is then computed once from the example's static spatial
    size and recorded as constants (the batch dimension stays dynamic).
    """
    return int(x.shape[-2]), int(x.shape[-1])


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one spatial dim; extra pad goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size.

    Symmetric cases use the conv's own padding (no copy); asymmetric ones (stride 2
    on even inputs) pad explicitly, as TF does, with the extra row/col at the end.
    """

    def __init__(self, c_in, c_out, kernel_size, stride=1, dilation=1, groups=1, bias=False):
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=0, dilation=dilation,
                         groups=groups, bias=bias)
        self._static = all(s == 1 for s in self.stride)  # stride 1: padding never depends on size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` with SAME padding."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        h, w = static_hw(x)
        ph, pw = same_padding(h, kh, sh, dh), same_padding(w, kw, sw, dw)
        if ph[0] == ph[1] and pw[0] == pw[1]:
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph[0], pw[0]), self.dilation,
                            self.groups)
        x = F.pad(x, [pw[0], pw[1], ph[0], ph[1]])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _divisor(x: torch.Tensor, k: int, s: int, pads: list[int]) -> torch.Tensor:
    """Fraction of real (unpadded) pixels under each k x k window of padded ``x``."""
    ones = F.pad(torch.ones(1, 1, x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device), pads)
    return F.avg_pool2d(ones, k, s, 0)


@lru_cache(maxsize=256)
def _avg_divisor(h: int, w: int, k: int, s: int, pads: tuple[int, int, int, int],
                 device: str, dtype: torch.dtype) -> torch.Tensor:
    return _divisor(torch.empty(1, 1, h, w, dtype=dtype, device=device), k, s, list(pads))


def _max_pool_no_grad(x: torch.Tensor, k: int, s: int, ph: tuple[int, int], pw: tuple[int, int],
                      symmetric: bool) -> torch.Tensor:
    """SAME max pooling for CPU inference, bit-identical to the plain route and 3-9x faster: in
    channels-last layout, and for k >= 5 as a k x 1 then a 1 x k pool (a max over a k x k window is the
    max of its column maxima). The result has the input's layout. Not used under autograd: this route's
    backward sums overlapping windows' gradients in another order (float rounding)."""
    pad = (ph[0], pw[0])
    if not symmetric:
        x, pad = F.pad(x, [pw[0], pw[1], ph[0], ph[1]], value=float("-inf")), (0, 0)
    back = not x.is_contiguous(memory_format=torch.channels_last)
    if back:
        x = x.contiguous(memory_format=torch.channels_last)
    if k >= 5:
        y = F.max_pool2d(F.max_pool2d(x, (k, 1), (s, 1), (pad[0], 0)), (1, k), (1, s), (0, pad[1]))
    else:
        y = F.max_pool2d(x, k, s, pad)
    return y.contiguous() if back else y


class SamePool2d(nn.Module):
    """k x k max or average pooling with TF "SAME" padding (no parameters)."""

    def __init__(self, kind: str, kernel: int, stride: int, pad_mode: str = "tf"):
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"unknown pool kind {kind!r}; known: max, avg")
        self.kind, self.kernel, self.stride, self.pad_mode = kind, kernel, stride, pad_mode

    def extra_repr(self) -> str:
        return f"{self.kind}, kernel={self.kernel}, stride={self.stride}, pad_mode={self.pad_mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` with SAME padding."""
        k, s = self.kernel, self.stride
        h, w = static_hw(x)
        ph, pw = same_padding(h, k, s), same_padding(w, k, s)
        symmetric = ph[0] == ph[1] and pw[0] == pw[1] and ph[0] <= k // 2 and pw[0] <= k // 2
        if self.kind == "max":
            if x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled()):
                return _max_pool_no_grad(x, k, s, ph, pw, symmetric)
            if symmetric:
                return F.max_pool2d(x, k, s, (ph[0], pw[0]))
            return F.max_pool2d(F.pad(x, [pw[0], pw[1], ph[0], ph[1]], value=float("-inf")), k, s)
        # timm's dynamic-"same" avg pool (stride > 1) pads zeros that then count in the mean.
        count_pad = self.pad_mode == "timm" and s > 1
        if symmetric:
            return F.avg_pool2d(x, k, s, (ph[0], pw[0]), count_include_pad=count_pad)
        pads = [pw[0], pw[1], ph[0], ph[1]]
        out = F.avg_pool2d(F.pad(x, pads), k, s, 0)
        if count_pad:
            return out
        # TF excludes padding from the count: rescale by the fraction of real pixels.
        if torch.jit.is_scripting():
            return out / _divisor(x, k, s, pads)
        return out / _avg_divisor(h, w, k, s, (pads[0], pads[1], pads[2], pads[3]), str(x.device), x.dtype)


def drop_path(x: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """Zero whole samples with probability 1 - keep_prob; scale survivors by 1/keep_prob.

    The 1/keep scaling keeps the expected activation unchanged (TF-slim ``drop_path``).
    """
    if keep_prob >= 1.0:
        return x
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * (mask / keep_prob)
