"""A weight-sharing supernet over a NASNet decision space (single-path one-shot), and its children.

The supernet is the search's child network (``train_child``: ``nasnet_a_cifar`` at ``3 N`` cells, CIFAR
stem, no auxiliary head, no drop path) in which every choice owns its weights; ``forward(x, genotype)``
runs exactly one path, the child of that genotype. Sharing scheme (exact: a path computes what the
standalone child with the path's weights computes, ``extract_child``):

* Ops: one module per (cell layer, block, side, input state, input width, op), built by ``OPS`` as the
  child builds it (key ``{block}_{side}_{input}_{width}_{op}``). States 0 and 1 of a layer have one
  width; a block output is ``filters`` wide, or ``2 filters`` after a concat combiner, so an op reading
  a block output has one module per width it can see. Keying by width keeps the child's own op (a pool
  or identity on a ``filters``-wide input has no 1x1 projection, on a ``2 filters`` one it has), which
  slicing one widest module could not. Two genotypes share an op's weights when they put the same op on
  the same input of the same block side of the same layer, and that input has the same width.
* The 1x1 convs that read an earlier layer's output (``conv_1x1``, ``conv_prev_1x1``, the two paths of
  the factorized reduction of the previous-previous input) and the classifier: their input is the
  concatenation of the earlier cell's output states, whose number and widths depend on the genotype.
  Their weight is split along its input channels into slabs, one per (source state, width) (``s{state}
  w{width}``; the stem output is ``stem``); a path's weight is the concatenation of its sources' slabs
  in the child's order. A conv over a concatenation is the sum of the slabs' convs, so a slab meets the
  same source state in every path. Their norm (and the classifier's bias) is one per layer.
  ``conv_prev_1x1`` runs only where the previous-previous width differs from ``filters``, as in the child.
* Combiner norms (add + LayerNorm / InstanceNorm): one per (layer, block, combiner); the factorized
  reductions of output states 0 / 1: one per (layer, state); the stem: one.

BatchNorm running statistics are shared by every path that runs a layer and mean nothing for any one
path; ``recalibrate_bn`` (nasnet_core.search.supernet_train) recomputes a path's before it is scored.
NASNet-B spaces (four-input cells, ``NASNetB``) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.cell import output_reductions, run_blocks, state_channels
from ..model.genotype import CellGenotype, Genotype
from ..model.network import stem_conv
from ..model.ops import OPS, FactorizedReduction, OpContext, make_combine_norm
from ..model.plan import make_plan
from ..model.registry import create_model, get_config
from .space import NASNetSpace, SpaceError

__all__ = ["Supernet", "extract_child", "child_model", "path_modules", "set_path_mode"]

ARCH = "nasnet_a_cifar"  # the network train_child builds


def _op_key(block: int, side: str, state: int, width: int, op: str) -> str:
    return f"{block}_{side}_{state}_{width}_{op}"


def _slab_key(state: int, width: int) -> str:
    return f"s{state}w{width}"


class SlabWeight(nn.Module):
    """A weight of ``c_out`` rows whose input channels are slabs, one per source piece."""

    def __init__(self, pieces: dict[str, int], c_out: int, conv: bool = True):
        super().__init__()
        shape = (1, 1) if conv else ()
        self.slabs = nn.ParameterDict({k: nn.Parameter(torch.empty(c_out, w, *shape))
                                       for k, w in pieces.items()})

    def weight(self, keys: tuple[str, ...]) -> torch.Tensor:
        """The weight of a path whose input is the concatenation of ``keys``' pieces."""
        if len(keys) == 1:
            return self.slabs[keys[0]]
        return torch.cat([self.slabs[k] for k in keys], 1)


class SlabReLUConvBN(nn.Module):
    """``ReLUConvBN`` (1x1, stride 1) with a slab weight; the caller applies the ReLU."""

    def __init__(self, pieces: dict[str, int], c_out: int, ctx: OpContext):
        super().__init__()
        self.conv = SlabWeight(pieces, c_out)
        self.bn = ctx.norm_layer(c_out)

    def forward(self, x: torch.Tensor, keys: tuple[str, ...]) -> torch.Tensor:
        """conv -> norm of an input made of ``keys``' pieces (ReLU applied)."""
        return self.bn(F.conv2d(x, self.conv.weight(keys)))


class SlabFactorizedReduction(nn.Module):
    """``FactorizedReduction`` (stride 2) with slab weights on both paths."""

    def __init__(self, pieces: dict[str, int], c_out: int, ctx: OpContext):
        super().__init__()
        self.path_1 = SlabWeight(pieces, c_out // 2)
        self.path_2 = SlabWeight(pieces, c_out - c_out // 2)
        self.bn = ctx.norm_layer(c_out)

    def forward(self, x: torch.Tensor, keys: tuple[str, ...]) -> torch.Tensor:
        """As FactorizedReduction.forward (ReLU applied by the caller)."""
        p1 = F.conv2d(x[:, :, ::2, ::2], self.path_1.weight(keys))
        p2 = F.conv2d(F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))[:, :, ::2, ::2], self.path_2.weight(keys))
        return self.bn(torch.cat([p1, p2], 1))


@dataclass
class Route:
    """One layer of a path: the genotype cell, its sources' pieces and the modules it runs."""

    layer: SuperCell
    cell: CellGenotype
    cur_keys: tuple[str, ...]
    prev_keys: tuple[str, ...] | None
    prev_conv: bool  # conv_prev_1x1 runs (previous-previous width != filters)
    ops: list  # (op_a, op_b, norm or None) per block
    reducers: dict  # output state -> its factorized reduction
    out_keys: tuple[str, ...]
    out_width: int


class SuperCell(nn.Module):
    """Every choice of one cell layer: ops per (block, side, input, width, op), norms, 1x1 convs."""

    def __init__(self, space: NASNetSpace, spec, cur: dict[str, int], prev: dict[str, int] | None,
                 ctx: OpContext):
        super().__init__()
        f = self.filters = spec.filters
        self.prev_mode, self.reduction, self.offset = spec.prev_mode, spec.reduction, spec.prev_offset
        self.conv_1x1 = SlabReLUConvBN(cur, f, ctx)
        if spec.prev_mode == "reduce":
            self.reduce_prev = SlabFactorizedReduction(prev, f, ctx)
        elif spec.prev_mode == "same":
            self.conv_prev_1x1 = SlabReLUConvBN(prev, f, ctx)
        elif len(cur) != 1:  # "none": state 1 is the raw current input, which must have one width
            raise ValueError(f"{spec.name} reads its raw input, whose width varies; not a supernet layer")
        c1 = next(iter(cur.values())) if spec.prev_mode == "none" else f
        block_widths = sorted({2 * f if c == "concat" else f for c in space.combiners})
        self.ops = nn.ModuleDict()
        for b in range(space.num_blocks):
            for side in ("left", "right"):
                for i in range(b + 2):
                    for w in ([f] if i == 0 else [c1] if i == 1 else block_widths):
                        stride = 2 if (spec.reduction and i < 2) else 1
                        for op in space.ops:
                            self.ops[_op_key(b, side, i, w, op)] = OPS[op](w, f, stride, ctx)
        self.norms = nn.ModuleDict({f"{b}_{c}": m for b in range(space.num_blocks) for c in space.combiners
                                    if (m := make_combine_norm(c, f)) is not None})
        self.reduce_output = nn.ModuleDict()
        if space.output == "unused":  # states 0 / 1 may be outputs
            for s, c in ((0, f), (1, c1)):
                if spec.reduction or c != f:
                    self.reduce_output[str(s)] = FactorizedReduction(c, f, ctx, 2 if spec.reduction else 1)
        self.out_pieces = {_slab_key(s, f): f for s in (0, 1)} if space.output == "unused" else {}
        self.out_pieces.update({_slab_key(s, w): w for s in range(2, space.num_blocks + 2)
                                for w in block_widths})

    def route(self, cell: CellGenotype, cur: tuple[tuple[str, ...], int],
              prev: tuple[tuple[str, ...], int] | None) -> Route:
        """The modules of ``cell``'s path through this layer, given its sources' (keys, width)."""
        (cur_keys, c_cur), (prev_keys, c_prev) = cur, prev or (None, 0)
        f = self.filters
        channels = state_channels(cell, c_cur, c_prev, f, self.prev_mode)
        reduced = output_reductions(cell, channels, f, self.reduction, self.prev_mode)
        ops = []
        for b, blk in enumerate(cell.blocks):
            a = self.ops[_op_key(b, "left", blk.input_a, channels[blk.input_a], blk.op_a)]
            o = self.ops[_op_key(b, "right", blk.input_b, channels[blk.input_b], blk.op_b)]
            norm = f"{b}_{blk.combine}"
            ops.append((a, o, self.norms[norm] if norm in self.norms else None))
        widths = [(s, f if s in reduced else channels[s]) for s in cell.output_states()]
        return Route(self, cell, cur_keys, prev_keys, self.prev_mode == "same" and c_prev != f, ops,
                     {s: self.reduce_output[str(s)] for s in reduced},
                     tuple(_slab_key(s, w) for s, w in widths), sum(w for _, w in widths))

    def forward(self, r: Route, cur: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """The path's cell output (Cell.forward with this route's modules)."""
        cur_act = F.relu(cur)
        s0 = self.conv_1x1(cur_act, r.cur_keys)
        s1, s1_act = prev, None
        if self.prev_mode == "none":
            s1, s1_act = cur, cur_act
        elif self.prev_mode == "reduce":
            s1 = self.reduce_prev(F.relu(prev), r.prev_keys)
        elif r.prev_conv:
            s1 = self.conv_prev_1x1(F.relu(prev), r.prev_keys)
        states, acts = [s0, s1], [None, s1_act]
        run_blocks(r.ops, r.cell.blocks, states, acts)
        return torch.cat([r.reducers[s](states[s]) if s in r.reducers else states[s]
                          for s in r.cell.output_states()], 1)


class Supernet(nn.Module):
    """Every child of a NASNet space at once (see the module docstring); ``forward(x, genotype)``."""

    def __init__(self, space: NASNetSpace, N: int = 2, num_conv_filters: int = 8,
                 stem_multiplier: float = 3.0, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        if not isinstance(space, NASNetSpace):
            raise SpaceError(f"a supernet needs a NASNet space, got {type(space).__name__}")
        if space.num_inputs != 2:
            raise SpaceError(f"the supernet covers two-input cells (spaces A, C); this space has "
                             f"{space.num_inputs}-input cells (NASNet-B, variant B), which it does not "
                             "support")
        self.space = space
        self.sizes = dict(N=N, num_conv_filters=num_conv_filters, stem_multiplier=stem_multiplier,
                          num_classes=num_classes, in_chans=in_chans)
        cfg = get_config(ARCH)
        ctx = OpContext(norm=cfg.norm, bn_eps=cfg.bn_eps, bn_momentum=cfg.bn_momentum, pad_mode=cfg.pad_mode)
        plan = make_plan(space.decode([0] * len(space)), 3 * N, num_conv_filters, cfg.stem, stem_multiplier,
                         in_chans, cfg.skip_reduction_layer_input, 2.0, num_classes, cfg.image_size)
        self.names = [s.name for s in plan.cells]  # the child's cell names, in order
        self.conv0 = stem_conv(plan.stem, ctx)
        pieces = [{"stem": plan.stem.channels}]
        self.cells = nn.ModuleList()
        for spec in plan.cells:
            prev = pieces[-spec.prev_offset] if spec.prev_offset else None
            self.cells.append(SuperCell(space, spec, pieces[-1], prev, ctx))
            pieces.append(self.cells[-1].out_pieces)
        self.classifier = SlabWeight(pieces[-1], num_classes, conv=False)
        self.classifier_bias = nn.Parameter(torch.zeros(num_classes))
        for m in self.modules():  # the child's init (TF-slim: variance scaling, fan-out, per output row)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, SlabWeight):
                for p in m.slabs.values():
                    nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")
        self._last: tuple = (None, None)

    def genotype(self, genotype_or_decisions) -> Genotype:
        """A Genotype from itself or from the space's decisions."""
        if isinstance(genotype_or_decisions, Genotype):
            return genotype_or_decisions
        return self.space.decode(genotype_or_decisions)

    def route(self, genotype_or_decisions) -> list[Route]:
        """The path of a genotype: one Route per cell layer (the last one is cached)."""
        g = self.genotype(genotype_or_decisions)
        if self._last[0] == g:
            return self._last[1]
        outs: list[tuple[tuple[str, ...], int]] = [(("stem",), self.conv0.conv.out_channels)]
        routes = []
        for layer in self.cells:
            cell = g.reduce if layer.reduction else g.normal
            routes.append(layer.route(cell, outs[-1], outs[-layer.offset] if layer.offset else None))
            outs.append((routes[-1].out_keys, routes[-1].out_width))
        self._last = (g, routes)
        return routes

    def forward(self, x: torch.Tensor, genotype_or_decisions) -> torch.Tensor:
        """Logits of the one path the genotype (or decision list) selects."""
        routes = self.route(genotype_or_decisions)
        outs = [self.conv0(x)]
        for r in routes:
            outs.append(r.layer(r, outs[-1], outs[-r.layer.offset] if r.layer.offset else None))
        h = F.adaptive_avg_pool2d(F.relu(outs[-1]), 1).flatten(1)
        return F.linear(h, self.classifier.weight(routes[-1].out_keys), self.classifier_bias)


def path_modules(supernet: Supernet, genotype_or_decisions) -> list[nn.Module]:
    """Every module a path runs (stem, 1x1 convs, ops, norms, reductions): what BN recalibration resets."""
    out: list[nn.Module] = [supernet.conv0]
    for r in supernet.route(genotype_or_decisions):
        out.append(r.layer.conv_1x1)
        if r.layer.prev_mode == "reduce":
            out.append(r.layer.reduce_prev)
        elif r.prev_conv:
            out.append(r.layer.conv_prev_1x1)
        out += [m for triple in r.ops for m in triple if m is not None] + list(r.reducers.values())
    return out


def set_path_mode(supernet: Supernet, genotype_or_decisions, training: bool) -> None:
    """Train / eval mode for the path's modules (and the supernet's flag): ``supernet.train()`` visits
    all of its ~10^4 modules, which cost more than a small path's calibration."""
    supernet.training = training
    for m in path_modules(supernet, genotype_or_decisions):
        m.train(training)


def child_model(genotype: Genotype, sizes: dict) -> nn.Module:
    """The standalone child ``train_child`` builds for ``genotype`` at the supernet's ``sizes``."""
    return create_model(ARCH, genotype=genotype, num_cells=3 * sizes["N"],
                        num_conv_filters=sizes["num_conv_filters"], stem_multiplier=sizes["stem_multiplier"],
                        num_classes=sizes["num_classes"], in_chans=sizes["in_chans"], aux_head=False,
                        drop_path_keep_prob=1.0)


def extract_child(supernet: Supernet, genotype_or_decisions) -> nn.Module:
    """A standalone child of the genotype with the path's weights and BN statistics copied in."""
    g = supernet.genotype(genotype_or_decisions)
    child = child_model(g, supernet.sizes)
    sd = {f"conv0.{k}": v for k, v in supernet.conv0.state_dict().items()}

    def put(prefix: str, module: nn.Module) -> None:
        sd.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})

    for name, r in zip(supernet.names, supernet.route(g)):
        L = r.layer
        sd[f"{name}.conv_1x1.conv.weight"] = L.conv_1x1.conv.weight(r.cur_keys)
        put(f"{name}.conv_1x1.bn", L.conv_1x1.bn)
        if L.prev_mode == "reduce":
            sd[f"{name}.reduce_prev.path_1.weight"] = L.reduce_prev.path_1.weight(r.prev_keys)
            sd[f"{name}.reduce_prev.path_2.weight"] = L.reduce_prev.path_2.weight(r.prev_keys)
            put(f"{name}.reduce_prev.bn", L.reduce_prev.bn)
        elif r.prev_conv:
            sd[f"{name}.conv_prev_1x1.conv.weight"] = L.conv_prev_1x1.conv.weight(r.prev_keys)
            put(f"{name}.conv_prev_1x1.bn", L.conv_prev_1x1.bn)
        for b, (op_a, op_b, norm) in enumerate(r.ops):
            put(f"{name}.comb_iter_{b}_left", op_a)
            put(f"{name}.comb_iter_{b}_right", op_b)
            if norm is not None:
                put(f"{name}.comb_iter_{b}_norm", norm)
        for s, m in r.reducers.items():
            put(f"{name}.reduce_output_{s}", m)
    sd["last_linear.weight"] = supernet.classifier.weight(supernet.route(g)[-1].out_keys)
    sd["last_linear.bias"] = supernet.classifier_bias
    child.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return child.to(supernet.classifier_bias.device).train(supernet.training)
