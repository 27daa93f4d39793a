"""The NASNet search space: one op table, the paper's op names, the combiners, and the ops.

Every op is built by ``OPS[name](c_in, c_out, stride, ctx)`` and follows TF-slim's
``nasnet_utils`` (paper appendix A.4): each conv is ReLU -> conv -> norm, separable
convs are applied twice (stride on the first only), pools get a 1x1 conv + norm when
channels change, and convs and pools use TF "SAME" padding (``layers``).

Each op lists the conv/norm pairs that ``fuse_bn`` may fold (``fold_pairs``); an op
whose BatchNorm is not listed makes ``fuse_bn`` raise instead of skipping it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import SameConv2d, SamePool2d, make_norm

__all__ = ["COMBINERS", "ConvNorm", "FactorizedReduction", "FoldPair", "Identity", "OP_NAMES", "OPS", "Op",
           "OpContext", "PAPER_OPS", "ReLUConvBN", "make_combine_norm"]


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
# Building blocks
# ----------------------------------------------------------------------------
class FoldPair(NamedTuple):
    """A conv whose output feeds the norm called ``norm`` (an attribute of the declaring
    module) directly, as that norm's channels ``[start, start + conv.out_channels)``."""

    conv: nn.Conv2d
    norm: str
    start: int = 0


class ConvNorm(nn.Sequential):
    """conv -> norm, named ``conv``/``bn`` (the network's stem conv ``conv0``)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module):
        super().__init__()
        self.add_module("conv", conv)
        self.add_module("bn", norm)

    def fold_pairs(self) -> tuple[FoldPair, ...]:
        """The conv feeds the norm."""
        return (FoldPair(self.conv, "bn"),)


class Op(nn.Module):
    """Base of every op: ``pre_act`` ops start with a ReLU that the cell may share.

    ``fold_pairs`` lists the op's own conv/norm pairs; the default lists none, so an op
    that holds a BatchNorm must override it (``fuse_bn`` raises on an unlisted one).
    """

    pre_act = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the op (ReLU included when ``pre_act``)."""
        return self.forward_act(F.relu(x) if self.pre_act else x)

    def forward_act(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Apply the op to an input that has already been through ReLU when ``pre_act``."""
        raise NotImplementedError

    def fold_pairs(self) -> tuple[FoldPair, ...]:
        """The op's conv/norm pairs that ``fuse_bn`` folds (none by default)."""
        return ()


class ReLUConvBN(Op):
    """ReLU -> k x k conv (SAME) -> norm; named ``conv``/``bn`` as in the timm and Cadene ports."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, ctx: OpContext, dilation=1):
        super().__init__()
        self.conv = SameConv2d(c_in, c_out, kernel, stride=stride, dilation=dilation)
        self.bn = ctx.norm_layer(c_out)

    def forward_act(self, x):
        return self.bn(self.conv(x))

    def fold_pairs(self) -> tuple[FoldPair, ...]:
        """The conv feeds the norm."""
        return (FoldPair(self.conv, "bn"),)


class FactorizedConv(Op):
    """ReLU -> 1 x k conv -> k x 1 conv -> norm (the 1x3/3x1 and 1x7/7x1 ops)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, ctx: OpContext):
        super().__init__()
        self.conv_1xk = SameConv2d(c_in, c_out, (1, k), stride=(1, stride))
        self.conv_kx1 = SameConv2d(c_out, c_out, (k, 1), stride=(stride, 1))
        self.bn = ctx.norm_layer(c_out)

    def forward_act(self, x):
        return self.bn(self.conv_kx1(self.conv_1xk(x)))

    def fold_pairs(self) -> tuple[FoldPair, ...]:
        """The k x 1 conv feeds the norm."""
        return (FoldPair(self.conv_kx1, "bn"),)


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

    def fold_pairs(self) -> tuple[FoldPair, ...]:
        """Each pointwise conv feeds its norm."""
        return (FoldPair(self.separable_1.pointwise_conv2d, "bn_sep_1"),
                FoldPair(self.separable_2.pointwise_conv2d, "bn_sep_2"))


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

    def fold_pairs(self) -> tuple[FoldPair, ...]:
        """The projection conv feeds the norm (none without a projection)."""
        return () if self.conv is None else (FoldPair(self.conv, "bn"),)


class Identity(Op):
    """Plain identity; ReLU -> strided 1x1 conv -> norm when stride > 1 or channels change.

    No fold pairs of its own: the projection, a ReLUConvBN, lists its pair.
    """

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
"""The op table: name -> (c_in, c_out, stride, ctx) -> Op. Genotypes may use any op listed here."""

OP_NAMES = tuple(OPS)
"""Every op of the table (what a genotype may name)."""

PAPER_OPS = (
    "identity", "conv_1x3_3x1", "conv_1x7_7x1", "dil_conv_3x3", "avg_pool_3x3", "max_pool_3x3",
    "max_pool_5x5", "max_pool_7x7", "conv_1x1", "conv_3x3", "sep_conv_3x3", "sep_conv_5x5",
    "sep_conv_7x7",
)
"""The 13 ops of the paper's search space (section 3): the search spaces' default op set, so an
op added to ``OPS`` joins a search only when a space names it."""

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
        """Reduce ``x`` (the caller applies the ReLU where TF-slim does)."""
        if self.path_2 is None:
            return self.bn(self.path_1(x))
        s = self.stride
        p1 = self.path_1(x[:, :, ::s, ::s])
        p2 = self.path_2(F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))[:, :, ::s, ::s])
        return self.bn(torch.cat([p1, p2], 1))

    def fold_pairs(self) -> tuple[FoldPair, ...]:
        """Each path's conv feeds its slice of the norm's channels."""
        if self.path_2 is None:
            return (FoldPair(self.path_1, "bn"),)
        return (FoldPair(self.path_1, "bn"), FoldPair(self.path_2, "bn", self.path_1.out_channels))
