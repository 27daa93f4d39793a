"""NASNet-B networks (paper appendix B, Fig. 8): cells with four inputs and four outputs.

Layers are numbered from the stem (layer 0) in execution order; the cell at layer L reads,
as its input k (k = 1..4), output k of layer L - k (the stem's single output stands in for
every output of layers before the first cell). Cell layout, widths and stages are those of
the NASNet-A network of the same N @ F (``plan.cell_layout``): 3 stages of N cells, each
later stage opened by a reduction cell that doubles ``filters`` and halves the resolution.

Across a reduction, an input can come from a layer one (or more) resolution levels up: each
halving is a ReLU -> factorized reduction (two offset 1x1 stride-2 paths, concatenated,
normalised; TF-slim's way of bringing the previous-previous input of NASNet-A to the new size),
because it keeps every pixel's information with a learned 1x1 mix, at the cost of one 1x1 conv,
and it is the operation NASNet-A already uses for the same job. An input at the cell's
resolution gets a ReLU -> 1x1 conv -> norm to ``filters`` channels, like NASNet-A's inputs.
The classifier reads the concatenation of the last cell's four outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cell import MultiInputCell
from .genotype import Genotype
from .network import AuxHead, stem_conv
from .ops import OpContext
from .plan import cell_layout, reduction_layers, spatial_after, stem_spec_for
from .recompute import checkpoint_cell, should_checkpoint

__all__ = ["NASNetB"]


class NASNetB(nn.Module):
    """A network of four-input cells; ``create_model`` builds it for any four-input genotype."""

    grad_checkpointing = False  # recompute each cell's activations in backward (set_grad_checkpointing)

    def __init__(self, genotype: Genotype, num_cells: int = 12, num_conv_filters: int = 24,
                 stem: str = "cifar", stem_multiplier: float = 3.0, num_classes: int = 10, in_chans: int = 3,
                 skip_reduction_layer_input: bool = False, filter_scaling_rate: float = 2.0,
                 aux_head: bool = False, image_size: int = 32, drop_path_keep_prob: float = 1.0,
                 total_training_steps: int = 250000, dropout: float = 0.0, ctx: OpContext | None = None):
        super().__init__()
        del skip_reduction_layer_input  # NASNet-A wiring option; B cells read the last four layers
        ctx = ctx or OpContext()
        n = genotype.normal.num_inputs
        if n == 2:
            raise ValueError("NASNetB needs four-input cells; build two-input genotypes with NASNet")
        if num_cells < 3 or num_cells % 3:
            raise ValueError(f"num_cells must be a positive multiple of 3 (3 stages), got {num_cells}")
        stem_spec = stem_spec_for(stem, in_chans, num_conv_filters, stem_multiplier)
        self.genotype, self.num_classes, self.image_size = genotype, num_classes, image_size
        self.drop_path_keep_prob, self.total_training_steps = drop_path_keep_prob, total_training_steps
        self.num_inputs = n
        self.conv0 = stem_conv(stem_spec, ctx)
        layers = [[(stem_spec.channels, stem_spec.stride)] * n]  # (channels, stride) of each output
        self.cell_names: list[str] = []
        for name, kind, _stage, _offset, filters in cell_layout(
                num_cells, num_conv_filters, stem, filter_scaling_rate, False):
            if filters < 2:
                raise ValueError(f"num_conv_filters={num_conv_filters} leaves {name} {filters} filter(s)")
            s_cur = layers[-1][0][1]
            inputs = [layers[max(len(layers) - k, 0)][k - 1] for k in range(1, n + 1)]
            reduction = kind != "normal"
            cell = MultiInputCell(genotype.reduce if reduction else genotype.normal,
                                  [(c, s_cur // s) for c, s in inputs], filters, reduction, ctx)
            self.add_module(name, cell)
            self.cell_names.append(name)
            layers.append([(c, s_cur * (2 if reduction else 1)) for c in cell.out_channels])
        self.num_features = sum(c for c, _ in layers[-1])
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.last_linear = nn.Linear(self.num_features, num_classes)
        self.aux_after = f"cell_{reduction_layers(num_cells)[1] - 1}"
        self.aux_head = None
        if aux_head:
            aux = layers[self.cell_names.index(self.aux_after) + 1]
            self.aux_head = AuxHead(sum(c for c, _ in aux), num_classes,
                                    spatial_after(image_size, aux[0][1], stem_spec), ctx)
        for m in self.modules():  # TF-slim init, as NASNet
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)
        self.set_training_step(0)

    def set_training_step(self, step: int) -> None:
        """Set the global step driving ScheduledDropPath (NASNet's schedule, cell by cell)."""
        self.training_step = step
        for name, keep in zip(self.cell_names, self.drop_path_keep_probs(step)):
            getattr(self, name).drop_path_keep = keep

    def drop_path_keep_probs(self, step: int | None = None) -> list[float]:
        """Keep probability of every cell at ``step`` (default: current), as ``NASNet``'s schedule."""
        step = self.training_step if step is None else step
        total, p = len(self.cell_names), self.drop_path_keep_prob
        ratio = min(1.0, step / self.total_training_steps) if self.total_training_steps else 1.0
        return [1.0 - ratio * (i + 1) / total * (1.0 - p) for i in range(total)]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per cell in training, as ``NASNet.set_grad_checkpointing``."""
        self.grad_checkpointing = bool(enable)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU -> global average pool -> dropout -> FC."""
        x = F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1)
        return self.last_linear(self.dropout(x))

    def forward(self, x: torch.Tensor):
        """Logits; ``(logits, aux_logits)`` in training mode when the aux head is on."""
        n = self.num_inputs
        layers = [[self.conv0(x)] * n]
        aux = None
        ckpt = should_checkpoint(self, self.grad_checkpointing)
        for name in self.cell_names:
            inputs = [layers[max(len(layers) - k, 0)][k - 1] for k in range(1, n + 1)]
            cell = getattr(self, name)
            if ckpt:  # checkpoint saves tensor arguments: pass the inputs one by one
                layers.append(checkpoint_cell(cell, *inputs, call=lambda *xs, c=cell: c(list(xs))))
            else:
                layers.append(cell(inputs))
            if name == self.aux_after:
                aux = layers[-1]
            del layers[:-n]  # only the last n layers are read again
        logits = self.forward_head(torch.cat(layers[-1], 1))
        if self.aux_head is not None and self.training:
            return logits, self.aux_head(torch.cat(aux, 1))
        return logits

