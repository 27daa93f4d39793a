"""A NASNet cell built from a CellGenotype (normal or reduction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .genotype import CellGenotype
from .ops import OPS, FactorizedReduction, Identity, OpContext, ReLUConvBN, drop_path, make_combine_norm

__all__ = ["Cell", "PREV_MODES"]

PREV_MODES = ("none", "same", "reduce")
"""How the previous-previous input relates to the current one: absent (the cell
reuses its raw current input, as TF-slim does for the first cell), same spatial
size, or twice the spatial size (factorized reduction)."""


class Cell(nn.Module):
    """One cell: two inputs -> B blocks -> concatenation of the output states.

    Module names follow the public ports (``conv_1x1``, ``conv_prev_1x1``,
    ``comb_iter_{b}_left/right``) so converting their weights is a short rename table.
    """

    def __init__(self, genotype: CellGenotype, c_cur: int, c_prev: int, filters: int,
                 reduction: bool, prev_mode: str, ctx: OpContext):
        super().__init__()
        if prev_mode not in PREV_MODES:
            raise ValueError(f"unknown prev_mode {prev_mode!r}; known: {', '.join(PREV_MODES)}")
        self.genotype = genotype
        self.reduction = reduction
        self.prev_mode = prev_mode
        self.filters = filters
        self.drop_path_keep = 1.0  # current keep probability; the network schedules it

        self.conv_1x1 = ReLUConvBN(c_cur, filters, 1, 1, ctx)
        self.conv_prev_1x1 = self.reduce_prev = None
        if prev_mode == "none":
            c1 = c_cur
        elif prev_mode == "reduce":
            self.reduce_prev = FactorizedReduction(c_prev, filters, ctx, stride=2)
            c1 = filters
        elif c_prev != filters:
            self.conv_prev_1x1 = ReLUConvBN(c_prev, filters, 1, 1, ctx)
            c1 = filters
        else:
            c1 = c_prev
        channels = [filters, c1]

        self._ops: list[tuple[nn.Module, nn.Module, nn.Module | None]] = []
        for b, block in enumerate(genotype.blocks):
            pair = []
            for side, idx, op_name in (("left", block.input_a, block.op_a),
                                       ("right", block.input_b, block.op_b)):
                stride = 2 if (reduction and idx < 2) else 1
                op = OPS[op_name](channels[idx], filters, stride, ctx)
                self.add_module(f"comb_iter_{b}_{side}", op)
                pair.append(op)
            norm = make_combine_norm(block.combine, filters)
            if norm is not None:
                self.add_module(f"comb_iter_{b}_norm", norm)
            self._ops.append((pair[0], pair[1], norm))
            channels.append(2 * filters if block.combine == "concat" else filters)

        # Output states that are not at the cell's resolution/width get TF-slim's
        # factorized reduction (stride 2 for states 0/1 of a reduction cell, else 1x1).
        self.output_states = genotype.output_states()
        self.out_channels = 0
        for s in self.output_states:
            if s < 2 and reduction:
                self.add_module(f"reduce_output_{s}", FactorizedReduction(channels[s], filters, ctx, 2))
                self.out_channels += filters
            elif s == 1 and channels[1] != filters and prev_mode == "none":
                self.add_module(f"reduce_output_{s}", FactorizedReduction(channels[s], filters, ctx, 1))
                self.out_channels += filters
            else:
                self.out_channels += channels[s]

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

        keep = self.drop_path_keep if self.training else 1.0
        inplace = not torch.is_grad_enabled()
        for (op_a, op_b, norm), block in zip(self._ops, self.genotype.blocks):
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

        outputs = []
        for s in self.output_states:
            reducer = getattr(self, f"reduce_output_{s}", None)
            outputs.append(states[s] if reducer is None else reducer(states[s]))
        return torch.cat(outputs, 1)
