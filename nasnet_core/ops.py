"""The NASNet search space: one op table, the combiners, and the layers they use.

Every op is built by ``OPS[name](c_in, c_out, stride, ctx)`` and follows the
reference conventions (paper appendix A.4, TF-slim ``nasnet_utils``): each conv
is ReLU -> conv -> norm, separable convs are applied twice (stride on the first
only), pools get a 1x1 conv + norm when channels change, and stride-2 layers use
TensorFlow "SAME" padding, which is asymmetric on even inputs (extra pad at the
bottom/right) -- the ported ImageNet weights depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OPS",
    "OP_NAMES",
    "COMBINERS",
    "PAD_MODES",
    "NORMS",
    "OpContext",
    "make_norm",
    "same_padding",
    "SameConv2d",
    "SamePool2d",
    "ReLUConvBN",
    "FactorizedReduction",
    "drop_path",
    "FrozenBatchNorm2d",
]

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


def make_norm(name: str, channels: int, eps: float = 1e-3, momentum: float = 0.0003) -> nn.Module:
    """Build the norm layer called ``name`` (BN, SyncBN, FrozenBN, GN) for ``channels``."""
    try:
        factory = NORMS[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; known norms: {', '.join(NORMS)}") from None
    return factory(channels, eps, momentum)


@dataclass(frozen=True)
class OpContext:
    """Settings shared by every op of a network: norm layer and padding semantics."""

    norm: str = "BN"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.0003  # PyTorch momentum = 1 - TF decay (0.9997)
    pad_mode: str = "tf"

    def norm_layer(self, channels: int) -> nn.Module:
        """A fresh norm layer of this context for ``channels``."""
        return make_norm(self.norm, channels, self.bn_eps, self.bn_momentum)


# ----------------------------------------------------------------------------
# TF "SAME" padding
# ----------------------------------------------------------------------------
@lru_cache(maxsize=4096)
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
        ph = same_padding(x.shape[-2], kh, sh, dh)
        pw = same_padding(x.shape[-1], kw, sw, dw)
        if ph[0] == ph[1] and pw[0] == pw[1]:
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph[0], pw[0]), self.dilation,
                            self.groups)
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


@lru_cache(maxsize=256)
def _avg_divisor(h: int, w: int, k: int, s: int, pads: tuple[int, int, int, int],
                 device: str, dtype: torch.dtype) -> torch.Tensor:
    ones = F.pad(torch.ones(1, 1, h, w, dtype=dtype, device=device), pads)
    return F.avg_pool2d(ones, k, s, 0)


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
        h, w = x.shape[-2:]
        ph, pw = same_padding(h, k, s), same_padding(w, k, s)
        symmetric = ph[0] == ph[1] and pw[0] == pw[1] and ph[0] <= k // 2 and pw[0] <= k // 2
        if self.kind == "max":
            if symmetric:
                return F.max_pool2d(x, k, s, (ph[0], pw[0]))
            return F.max_pool2d(F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf")), k, s)
        # timm's dynamic-"same" avg pool (stride > 1) pads zeros that then count in the mean.
        count_pad = self.pad_mode == "timm" and s > 1
        if symmetric:
            return F.avg_pool2d(x, k, s, (ph[0], pw[0]), count_include_pad=count_pad)
        pads = (pw[0], pw[1], ph[0], ph[1])
        out = F.avg_pool2d(F.pad(x, pads), k, s, 0)
        if count_pad:
            return out
        # TF excludes padding from the count: rescale by the fraction of real pixels.
        return out / _avg_divisor(h, w, k, s, pads, str(x.device), x.dtype)


# ----------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------
class Op(nn.Module):
    """Base of every op: ``pre_act`` ops start with a ReLU that the cell may share."""

    pre_act = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the op (ReLU included when ``pre_act``)."""
        return self.forward_act(F.relu(x) if self.pre_act else x)

    def forward_act(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Apply the op to an input that has already been through ReLU when ``pre_act``."""
        raise NotImplementedError


class ReLUConvBN(Op):
    """ReLU -> k x k conv (SAME) -> norm; named ``conv``/``bn`` like the reference ports."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, ctx: OpContext, dilation=1):
        super().__init__()
        self.conv = SameConv2d(c_in, c_out, kernel, stride=stride, dilation=dilation)
        self.bn = ctx.norm_layer(c_out)

    def forward_act(self, x):
        return self.bn(self.conv(x))


class FactorizedConv(Op):
    """ReLU -> 1 x k conv -> k x 1 conv -> norm (the 1x3/3x1 and 1x7/7x1 ops)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, ctx: OpContext):
        super().__init__()
        self.conv_1xk = SameConv2d(c_in, c_out, (1, k), stride=(1, stride))
        self.conv_kx1 = SameConv2d(c_out, c_out, (k, 1), stride=(stride, 1))
        self.bn = ctx.norm_layer(c_out)

    def forward_act(self, x):
        return self.bn(self.conv_kx1(self.conv_1xk(x)))


class SeparableConv2d(nn.Module):
    """Depthwise k x k conv followed by a pointwise 1x1 conv, no norm in between."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int):
        super().__init__()
        self.depthwise_conv2d = SameConv2d(c_in, c_in, kernel, stride=stride, groups=c_in)
        self.pointwise_conv2d = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise then pointwise convolution."""
        return self.pointwise_conv2d(self.depthwise_conv2d(x))


class StackedSeparable(Op):
    """[ReLU -> sep conv (stride) -> norm] then [ReLU -> sep conv -> norm]; c_in -> c_out first."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, ctx: OpContext):
        super().__init__()
        self.separable_1 = SeparableConv2d(c_in, c_out, kernel, stride)
        self.bn_sep_1 = ctx.norm_layer(c_out)
        self.separable_2 = SeparableConv2d(c_out, c_out, kernel, 1)
        self.bn_sep_2 = ctx.norm_layer(c_out)

    def forward_act(self, x):
        x = self.bn_sep_1(self.separable_1(x))
        return self.bn_sep_2(self.separable_2(F.relu(x)))


class Pool(Op):
    """SAME pooling; a 1x1 conv -> norm (no ReLU) follows when channels change."""

    pre_act = False

    def __init__(self, kind: str, kernel: int, c_in: int, c_out: int, stride: int, ctx: OpContext):
        super().__init__()
        self.pool = SamePool2d(kind, kernel, stride, ctx.pad_mode)
        if c_in != c_out:
            self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
            self.bn = ctx.norm_layer(c_out)
        else:
            self.conv = self.bn = None

    def forward_act(self, x):
        x = self.pool(x)
        return x if self.conv is None else self.bn(self.conv(x))


class Identity(Op):
    """Plain identity; ReLU -> strided 1x1 conv -> norm when stride > 1 or channels change."""

    pre_act = False

    def __init__(self, c_in: int, c_out: int, stride: int, ctx: OpContext):
        super().__init__()
        self.proj = ReLUConvBN(c_in, c_out, 1, stride, ctx) if (stride > 1 or c_in != c_out) else None
        self.pre_act = self.proj is not None

    @property
    def is_plain(self) -> bool:
        """True when the op returns its input unchanged (no drop path is applied then)."""
        return self.proj is None

    def forward_act(self, x):
        return x if self.proj is None else self.proj.forward_act(x)


OPS = {
    "identity": lambda c_in, c_out, stride, ctx: Identity(c_in, c_out, stride, ctx),
    "conv_1x3_3x1": lambda c_in, c_out, stride, ctx: FactorizedConv(c_in, c_out, 3, stride, ctx),
    "conv_1x7_7x1": lambda c_in, c_out, stride, ctx: FactorizedConv(c_in, c_out, 7, stride, ctx),
    "dil_conv_3x3": lambda c_in, c_out, stride, ctx: ReLUConvBN(c_in, c_out, 3, stride, ctx, dilation=2),
    "avg_pool_3x3": lambda c_in, c_out, stride, ctx: Pool("avg", 3, c_in, c_out, stride, ctx),
    "max_pool_3x3": lambda c_in, c_out, stride, ctx: Pool("max", 3, c_in, c_out, stride, ctx),
    "max_pool_5x5": lambda c_in, c_out, stride, ctx: Pool("max", 5, c_in, c_out, stride, ctx),
    "max_pool_7x7": lambda c_in, c_out, stride, ctx: Pool("max", 7, c_in, c_out, stride, ctx),
    "conv_1x1": lambda c_in, c_out, stride, ctx: ReLUConvBN(c_in, c_out, 1, stride, ctx),
    "conv_3x3": lambda c_in, c_out, stride, ctx: ReLUConvBN(c_in, c_out, 3, stride, ctx),
    "sep_conv_3x3": lambda c_in, c_out, stride, ctx: StackedSeparable(c_in, c_out, 3, stride, ctx),
    "sep_conv_5x5": lambda c_in, c_out, stride, ctx: StackedSeparable(c_in, c_out, 5, stride, ctx),
    "sep_conv_7x7": lambda c_in, c_out, stride, ctx: StackedSeparable(c_in, c_out, 7, stride, ctx),
}
"""The 13 ops of the paper's search space (section 3): name -> (c_in, c_out, stride, ctx) -> Op."""

OP_NAMES = tuple(OPS)

COMBINERS = ("add", "concat", "add_layernorm", "add_instancenorm")
"""How a block merges its two op outputs: A uses ``add``; ``concat`` joins channels;
the norm variants (NASNet-B/C) normalise the sum (layer norm = GroupNorm(1, C),
instance norm = GroupNorm(C, C), both with a per-channel affine)."""


def make_combine_norm(combine: str, channels: int) -> nn.Module | None:
    """The norm a combiner applies after the sum (None for add/concat)."""
    if combine == "add_layernorm":
        return nn.GroupNorm(1, channels, eps=1e-5)
    if combine == "add_instancenorm":
        return nn.GroupNorm(channels, channels, eps=1e-5)
    return None


class FactorizedReduction(nn.Module):
    """Halve H and W without losing pixels (TF-slim ``factorized_reduction``, stride 2).

    path 1: subsample -> 1x1 conv to c_out/2; path 2: shift by one pixel (pad
    bottom/right, drop the first row/col) -> subsample -> 1x1 conv; concat -> norm.
    With stride 1 it is a 1x1 conv -> norm. No ReLU inside (callers add it).
    """

    def __init__(self, c_in: int, c_out: int, ctx: OpContext, stride: int = 2):
        super().__init__()
        self.stride = stride
        if stride == 1:
            self.path_1 = nn.Conv2d(c_in, c_out, 1, bias=False)
            self.path_2 = None
        else:
            self.path_1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
            self.path_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False)
        self.bn = ctx.norm_layer(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reduce ``x`` (already ReLU'd by the caller where the reference does)."""
        if self.path_2 is None:
            return self.bn(self.path_1(x))
        s = self.stride
        p1 = self.path_1(x[:, :, ::s, ::s])
        p2 = self.path_2(F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))[:, :, ::s, ::s])
        return self.bn(torch.cat([p1, p2], 1))


def drop_path(x: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """Zero whole samples with probability 1 - keep_prob; scale survivors by 1/keep_prob.

    The 1/keep scaling keeps the expected activation unchanged (TF-slim ``drop_path``).
    """
    if keep_prob >= 1.0:
        return x
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * (mask / keep_prob)
