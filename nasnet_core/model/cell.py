"""A NASNet cell built from a CellGenotype (normal or reduction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .genotype import CellGenotype
from .layers import drop_path
from .ops import OPS, FactorizedReduction, Identity, OpContext, ReLUConvBN, make_combine_norm

__all__ = ["Cell", "MultiInputCell", "InputAdapter", "PREV_MODES", "cell_out_channels", "output_reductions",
           "state_channels", "run_blocks"]

PREV_MODES = ("none", "same", "reduce")
"""How the previous-previous input relates to the current one: absent (the cell
reuses its raw current input, as TF-slim does for the first cell), same spatial
size, or twice the spatial size (factorized reduction)."""


def state_channels(genotype: CellGenotype, c_cur: int, c_prev: int, filters: int,
                   prev_mode: str) -> list[int]:
    """Width of every hidden state of a cell: 0, 1, then one per block."""
    if prev_mode not in PREV_MODES:
        raise ValueError(f"unknown prev_mode {prev_mode!r}; known: {', '.join(PREV_MODES)}")
    if prev_mode == "none":
        c1 = c_cur  # the raw current input
    elif prev_mode == "reduce" or c_prev != filters:
        c1 = filters  # factorized reduction or 1x1 conv
    else:
        c1 = c_prev
    return [filters, c1] + [2 * filters if b.combine == "concat" else filters for b in genotype.blocks]


def output_reductions(genotype: CellGenotype, channels: list[int], filters: int, reduction: bool,
                      prev_mode: str) -> dict[int, int]:
    """Output state -> stride of the factorized reduction it gets (TF-slim): states 0/1 of a
    reduction cell are at twice the cell's resolution (stride 2); a raw state 1 of another
    width is brought to ``filters`` (stride 1)."""
    out = {}
    for s in genotype.output_states():
        if s < 2 and reduction:
            out[s] = 2
        elif s == 1 and channels[1] != filters and prev_mode == "none":
            out[s] = 1
    return out


def cell_out_channels(genotype: CellGenotype, c_cur: int, c_prev: int, filters: int,
                      reduction: bool, prev_mode: str) -> int:
    """Width of a cell's output (the concatenation of its output states), without building it."""
    channels = state_channels(genotype, c_cur, c_prev, filters, prev_mode)
    reduced = output_reductions(genotype, channels, filters, reduction, prev_mode)
    return sum(filters if s in reduced else channels[s] for s in genotype.output_states())


class _Blocks(nn.Module):
    """The B blocks of a cell (``comb_iter_{b}_left/right/norm``) and their forward pass."""

    num_inputs = 2
    genotype: CellGenotype
    reduction: bool
    filters: int
    drop_path_keep: float

    def _build_blocks(self, channels: list[int], ctx: OpContext) -> list:
        """Add ``comb_iter_{b}_left/right`` (and ``_norm``) for every block; returns the triples."""
        ops = []
        for b, block in enumerate(self.genotype.blocks):
            pair = []
            for side, idx, op_name in (("left", block.input_a, block.op_a),
                                       ("right", block.input_b, block.op_b)):
                stride = 2 if (self.reduction and idx < self.num_inputs) else 1
                op = OPS[op_name](channels[idx], self.filters, stride, ctx)
                self.add_module(f"comb_iter_{b}_{side}", op)
                pair.append(op)
            norm = make_combine_norm(block.combine, self.filters)
            if norm is not None:
                self.add_module(f"comb_iter_{b}_norm", norm)
            ops.append((pair[0], pair[1], norm))
        return ops

    def _run_blocks(self, states: list[torch.Tensor], acts: list) -> None:
        """Append every block's output to ``states`` (``acts``: their ReLUs, shared by readers)."""
        keep = self.drop_path_keep if self.training else 1.0
        run_blocks(self._ops, self.genotype.blocks, states, acts, keep)


def run_blocks(ops: list, blocks, states: list[torch.Tensor], acts: list, keep: float = 1.0) -> None:
    """A cell's block computation: for each (op_a, op_b, norm) triple and its block, apply the ops to
    the states they read (ReLU computed once per state, kept in ``acts``), drop path at ``keep`` < 1,
    combine, normalise, and append the result to ``states``. Shared by cells and supernet paths."""
    inplace = not torch.is_grad_enabled()
    for (op_a, op_b, norm), block in zip(ops, blocks):
        outs = []
        for op, idx in ((op_a, block.input_a), (op_b, block.input_b)):
            x = states[idx]
            if op.pre_act:
                if acts[idx] is None:
                    acts[idx] = F.relu(x)
                x = acts[idx]
            h = op.forward_act(x)
            plain = isinstance(op, Identity) and op.is_plain
            if keep < 1.0 and not isinstance(op, Identity):
                h = drop_path(h, keep)  # TF-slim: every op but 'none' (identity)
            outs.append((h, plain))
        (ha, plain_a), (hb, _) = outs
        if block.combine == "concat":
            h = torch.cat([ha, hb], 1)
        elif inplace and not plain_a:
            h = ha.add_(hb)
        else:
            h = ha + hb
        if norm is not None:
            h = norm(h)
        states.append(h)
        acts.append(None)


class Cell(_Blocks):
    """One cell: two inputs -> B blocks -> concatenation of the output states.

    Module names follow the public ports (``conv_1x1``, ``conv_prev_1x1``,
    ``comb_iter_{b}_left/right``) so converting their weights is a short rename table.
    """

    def __init__(self, genotype: CellGenotype, c_cur: int, c_prev: int, filters: int,
                 reduction: bool, prev_mode: str, ctx: OpContext):
        super().__init__()
        if genotype.num_inputs != 2:
            raise ValueError(f"Cell takes two inputs; a {genotype.num_inputs}-input cell is a MultiInputCell")
        channels = state_channels(genotype, c_cur, c_prev, filters, prev_mode)
        self.genotype = genotype
        self.reduction = reduction
        self.prev_mode = prev_mode
        self.filters = filters
        self.drop_path_keep = 1.0  # current keep probability; the network schedules it

        self.conv_1x1 = ReLUConvBN(c_cur, filters, 1, 1, ctx)
        self.conv_prev_1x1 = self.reduce_prev = None
        if prev_mode == "reduce":
            self.reduce_prev = FactorizedReduction(c_prev, filters, ctx, stride=2)
        elif prev_mode == "same" and c_prev != filters:
            self.conv_prev_1x1 = ReLUConvBN(c_prev, filters, 1, 1, ctx)
        self._ops = self._build_blocks(channels, ctx)

        # Output states that are not at the cell's resolution/width get TF-slim's
        # factorized reduction (stride 2 for states 0/1 of a reduction cell, else 1x1).
        self.output_states = genotype.output_states()
        reduced = output_reductions(genotype, channels, filters, reduction, prev_mode)
        for s, stride in reduced.items():
            self.add_module(f"reduce_output_{s}", FactorizedReduction(channels[s], filters, ctx, stride))
        self.out_channels = sum(filters if s in reduced else channels[s] for s in self.output_states)

    def forward(self, cur: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """Run the cell on the current input and the previous-previous input."""
        cur_act = F.relu(cur)
        s0 = self.conv_1x1.forward_act(cur_act)
        if self.prev_mode == "none":
            s1, s1_act = cur, cur_act
        elif self.reduce_prev is not None:
            s1, s1_act = self.reduce_prev(F.relu(prev)), None
        elif self.conv_prev_1x1 is not None:
            s1, s1_act = self.conv_prev_1x1.forward_act(F.relu(prev)), None
        else:
            s1, s1_act = prev, None
        states = [s0, s1]
        acts = [None, s1_act]  # ReLU of each state, computed once and shared by its readers

        self._run_blocks(states, acts)

        outputs = []
        for s in self.output_states:
            reducer = getattr(self, f"reduce_output_{s}", None)
            outputs.append(states[s] if reducer is None else reducer(states[s]))
        return torch.cat(outputs, 1)


class InputAdapter(nn.Module):
    """Brings an earlier layer's output to a cell's input resolution and ``filters`` channels:
    ReLU -> factorized reduction (stride 2) once per halving, or ReLU -> 1x1 conv -> norm when
    it is already at that resolution."""

    def __init__(self, c_in: int, filters: int, factor: int, ctx: OpContext):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"input resolution factor must be a power of 2, got {factor}")
        self.factor = factor
        if factor == 1:
            self.conv = ReLUConvBN(c_in, filters, 1, 1, ctx)
        else:
            steps = factor.bit_length() - 1
            self.reduce = nn.ModuleList(FactorizedReduction(c_in if i == 0 else filters, filters, ctx, 2)
                                        for i in range(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapted input."""
        if self.factor == 1:
            return self.conv(x)
        for r in self.reduce:
            x = r(F.relu(x))
        return x


class MultiInputCell(_Blocks):
    """A NASNet-B cell (paper appendix B): ``num_inputs`` earlier outputs in (input k from the
    k-th previous layer), B blocks, and as many separate outputs (the output states, in order;
    output k goes to the k-th next layer)."""

    def __init__(self, genotype: CellGenotype, inputs: list[tuple[int, int]], filters: int,
                 reduction: bool, ctx: OpContext):
        super().__init__()
        n = genotype.num_inputs
        self.num_inputs, self.genotype, self.reduction, self.filters = n, genotype, reduction, filters
        self.drop_path_keep = 1.0
        if len(inputs) != n:
            raise ValueError(f"a {n}-input cell got {len(inputs)} inputs")
        self.output_states = genotype.output_states()
        if len(self.output_states) != n or min(self.output_states) < n:
            raise ValueError(f"a {n}-input cell needs {n} block outputs as outputs (one per later layer), "
                             f"got states {list(self.output_states)}")
        used = genotype.used_states()  # an input no block reads gets no adapter (and is not computed)
        self.inputs = nn.ModuleList(InputAdapter(c, filters, f, ctx) if k in used else nn.Identity()
                                    for k, (c, f) in enumerate(inputs))
        self.unread = [k for k in range(n) if k not in used]
        channels = [filters] * n + [2 * filters if b.combine == "concat" else filters
                                    for b in genotype.blocks]
        self._ops = self._build_blocks(channels, ctx)
        self.out_channels = [channels[s] for s in self.output_states]

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The cell's outputs (a list) from its inputs (input k = output k of the k-th previous layer)."""
        states = [None if k in self.unread else adapt(x)
                  for k, (adapt, x) in enumerate(zip(self.inputs, inputs))]
        self._run_blocks(states, [None] * len(states))
        return [states[s] for s in self.output_states]
