"""NASNet networks for CIFAR and ImageNet at any N @ F (TF-slim ``nasnet.build_*``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cell import Cell
from .genotype import Genotype
from .ops import OpContext, SameConv2d

__all__ = ["NASNet", "AuxHead", "reduction_layers", "CellSpec"]

STEMS = ("imagenet", "cifar")


def reduction_layers(num_cells: int, num_reductions: int = 2) -> list[int]:
    """Indices of the normal cells that a reduction cell precedes (TF ``calc_reduction_layers``)."""
    return [int(i / (num_reductions + 1) * num_cells) for i in range(1, num_reductions + 1)]


@dataclass(frozen=True)
class CellSpec:
    """Where a cell sits: its name, kind, the output it reads as 'prev', width and stride."""

    name: str
    kind: str  # "stem", "normal" or "reduction"
    prev_offset: int | None  # prev = outputs[-prev_offset]; None -> no prev input
    out_channels: int
    stride: int
    drop_path_index: int  # position in ScheduledDropPath's layer ratio


class AuxHead(nn.Module):
    """Auxiliary classifier (training only): ReLU -> avgpool 5/3 -> 1x1 128 -> BN -> ReLU ->
    conv 768 over the remaining map -> BN -> ReLU -> FC (TF-slim ``_build_aux_head``)."""

    def __init__(self, c_in: int, num_classes: int, spatial: int, ctx: OpContext):
        super().__init__()
        pooled = (spatial - 5) // 3 + 1
        if pooled < 1:
            raise ValueError(f"aux head needs a feature map of at least 5x5, got {spatial}x{spatial}; "
                             "use a larger image_size or aux_head=False")
        self.pooled = pooled
        self.proj = nn.Conv2d(c_in, 128, 1, bias=False)
        self.bn0 = ctx.norm_layer(128)
        self.conv = nn.Conv2d(128, 768, pooled, bias=False)
        self.bn1 = ctx.norm_layer(768)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aux logits from the cell output ``x``."""
        x = F.avg_pool2d(F.relu(x), 5, 3)
        if x.shape[-1] != self.pooled or x.shape[-2] != self.pooled:
            raise ValueError(f"aux head was built for a {self.pooled}x{self.pooled} map after pooling "
                             f"(from image_size) but got {tuple(x.shape[-2:])}; build the model with "
                             "the training image_size")
        x = F.relu(self.bn0(self.proj(x)))
        x = F.relu(self.bn1(self.conv(x)))
        return self.fc(torch.flatten(x, 1))


class NASNet(nn.Module):
    """A NASNet: stem, 3 stages of ``num_cells // 3`` normal cells split by 2 reduction cells,
    then ReLU -> global average pool -> dropout -> FC.

    ``forward`` returns logits; in training mode with an aux head it returns
    ``(logits, aux_logits)``. ``forward_features`` returns the named stage outputs
    listed in ``feature_info``.
    """

    def __init__(
        self,
        genotype: Genotype,
        num_cells: int = 18,
        num_conv_filters: int = 168,
        stem: str = "imagenet",
        stem_multiplier: float = 3.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        skip_reduction_layer_input: bool = True,
        filter_scaling_rate: float = 2.0,
        aux_head: bool = True,
        image_size: int = 331,
        drop_path_keep_prob: float = 1.0,
        total_training_steps: int = 250000,
        dropout: float = 0.0,
        ctx: OpContext | None = None,
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
        if num_cells < 3 or num_cells % 3:
            raise ValueError(f"num_cells must be a positive multiple of 3 (3 stages), got {num_cells}")
        ctx = ctx or OpContext()
        self.genotype = genotype
        self.num_cells = num_cells
        self.num_conv_filters = num_conv_filters
        self.stem_type = stem
        self.num_classes = num_classes
        self.image_size = image_size
        self.drop_path_keep_prob = drop_path_keep_prob
        self.total_training_steps = total_training_steps
        self.training_step = 0
        self.ctx = ctx

        specs: list[CellSpec] = []
        # (channels, stride) of every output so far; index -1 is the current input.
        outs: list[tuple[int, int]] = []

        def add_cell(name, kind, prev_offset, filters, reduction):
            if filters < 2:
                raise ValueError(f"num_conv_filters={num_conv_filters} leaves {name} {filters} filter(s); "
                                 "every cell needs at least 2 (ImageNet stem cells get 1/4 and 1/2)")
            c_cur, s_cur = outs[-1]
            if prev_offset is None or prev_offset > len(outs):
                prev_offset, prev_mode, c_prev = None, "none", 0
            else:
                c_prev, s_prev = outs[-prev_offset]
                prev_mode = "reduce" if s_prev < s_cur else "same"
            g = genotype.reduce if reduction else genotype.normal
            cell = Cell(g, c_cur, c_prev, filters, reduction, prev_mode, ctx)
            self.add_module(name, cell)
            stride = s_cur * (2 if reduction else 1)
            specs.append(CellSpec(name, kind, prev_offset, cell.out_channels, stride, len(specs)))
            outs.append((cell.out_channels, stride))

        if stem == "imagenet":
            c0 = int(32 * stem_multiplier)
            self.conv0 = nn.Sequential()
            self.conv0.add_module("conv", nn.Conv2d(in_chans, c0, 3, stride=2, bias=False))  # VALID
            self.conv0.add_module("bn", ctx.norm_layer(c0))
            outs.append((c0, 2))
            self.stem_channels = c0
            scaling = 1.0 / filter_scaling_rate ** 2
            for i in range(2):  # two stem cells: NASNet reduction cells at 1/4 and 1/2 filters
                add_cell(f"cell_stem_{i}", "stem", 2, int(num_conv_filters * scaling), True)
                scaling *= filter_scaling_rate
        else:
            c0 = int(num_conv_filters * stem_multiplier)
            self.conv0 = nn.Sequential()
            self.conv0.add_module("conv", SameConv2d(in_chans, c0, 3))
            self.conv0.add_module("bn", ctx.norm_layer(c0))
            outs.append((c0, 1))
            self.stem_channels = c0

        reductions = reduction_layers(num_cells)
        aux_index = reductions[1] - 1
        scaling = 1.0
        for i in range(num_cells):
            after_reduction = False
            if i in reductions:
                scaling *= filter_scaling_rate
                add_cell(f"reduction_cell_{reductions.index(i)}", "reduction", 2,
                         int(num_conv_filters * scaling), True)
                after_reduction = True
            # With skip_reduction_layer_input the first cell after a reduction reads the
            # reduction's own previous input (outputs[-3]) instead of the reduction's input.
            offset = 3 if (after_reduction and skip_reduction_layer_input) else 2
            add_cell(f"cell_{i}", "normal", offset, int(num_conv_filters * scaling), False)
            if i == aux_index:
                self.aux_after = f"cell_{i}"

        self.cell_specs: tuple[CellSpec, ...] = tuple(specs)
        self.num_features = specs[-1].out_channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.last_linear = nn.Linear(self.num_features, num_classes)

        aux_spec = next(s for s in specs if s.name == self.aux_after)
        self.aux_head = (AuxHead(aux_spec.out_channels, num_classes,
                                 _spatial_after(image_size, aux_spec.stride, stem), ctx)
                         if aux_head else None)

        self.feature_info = self._make_feature_info()
        self._init_weights()
        self.set_training_step(0)

    # ------------------------------------------------------------------ build
    def _make_feature_info(self):
        stem_stride = 2 if self.stem_type == "imagenet" else 1
        info = [dict(name="stem", channels=self.stem_channels, stride=stem_stride, module="conv0")]
        n = self.num_cells // 3
        last_normal = {f"cell_{n - 1}": "stage1", f"cell_{2 * n - 1}": "stage2",
                       f"cell_{3 * n - 1}": "stage3"}
        for s in self.cell_specs:
            if s.kind in ("stem", "reduction") or s.name in last_normal:
                info.append(dict(name=last_normal.get(s.name, s.name), channels=s.out_channels,
                                 stride=s.stride, module=s.name))
        return info

    def _init_weights(self):
        # TF-slim nasnet_arg_scope: variance scaling (factor 2, FAN_OUT) for convs and FC.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    # --------------------------------------------------------- drop path
    def set_training_step(self, step: int) -> None:
        """Set the global step that drives ScheduledDropPath's time ramp."""
        self.training_step = step
        for spec, p in zip(self.cell_specs, self.drop_path_keep_probs(step)):
            cell = getattr(self, spec.name, None)  # absent in a trimmed network (nasnet_det parts)
            if cell is not None:
                cell.drop_path_keep = p

    def drop_path_keep_probs(self, step: int | None = None) -> list[float]:
        """Keep probability of every cell (stem cells first) at ``step`` (default: current).

        keep_c = 1 - (c+1)/total * (1 - p);  keep = 1 - min(1, step/T) * (1 - keep_c),
        total = all cells including reductions and stem cells (TF-slim drop_connect v3).
        """
        step = self.training_step if step is None else step
        p = self.drop_path_keep_prob
        total = len(self.cell_specs)
        ratio = min(1.0, step / self.total_training_steps) if self.total_training_steps else 1.0
        out = []
        for spec in self.cell_specs:
            keep_c = 1.0 - (spec.drop_path_index + 1) / total * (1.0 - p)
            out.append(1.0 - ratio * (1.0 - keep_c))
        return out

    # ------------------------------------------------------------ forward
    def forward_cells(self, outputs: list[torch.Tensor], start: int = 0,
                      end: int | None = None, taps: dict | None = None) -> list[torch.Tensor]:
        """Run cells ``cell_specs[start:end]``, appending to ``outputs`` (the earlier outputs,
        newest last) and recording any tapped names in ``taps``; returns ``outputs``."""
        for spec in self.cell_specs[start:end]:
            prev = outputs[-spec.prev_offset] if spec.prev_offset else None
            outputs.append(getattr(self, spec.name)(outputs[-1], prev))
            if taps is not None and spec.name in taps:
                taps[spec.name] = outputs[-1]
        return outputs

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named outputs of ``feature_info`` (stem, stem cells, stage1, reductions, stage2, stage3)."""
        taps = {f["module"]: None for f in self.feature_info}
        x0 = self.conv0(x)
        self.forward_cells([x0], taps=taps)
        taps["conv0"] = x0
        return {f["name"]: taps[f["module"]] for f in self.feature_info}

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU -> global average pool -> dropout -> FC."""
        x = F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1)
        return self.last_linear(self.dropout(x))

    def forward(self, x: torch.Tensor):
        """Logits; ``(logits, aux_logits)`` in training mode when the aux head is on."""
        use_aux = self.aux_head is not None and self.training
        taps = {self.aux_after: None} if use_aux else None
        outputs = self.forward_cells([self.conv0(x)], taps=taps)
        logits = self.forward_head(outputs[-1])
        if use_aux:
            return logits, self.aux_head(taps[self.aux_after])
        return logits

    def cell_index(self, name: str) -> int:
        """Position of the cell called ``name`` in ``cell_specs``."""
        for i, s in enumerate(self.cell_specs):
            if s.name == name:
                return i
        raise KeyError(f"no cell {name!r}; cells: {', '.join(s.name for s in self.cell_specs)}")


def _spatial_after(image_size: int, stride: int, stem: str) -> int:
    """Feature-map size at ``stride`` for a square input, following the stem's VALID conv."""
    size = image_size
    if stem == "imagenet":
        size = (size - 3) // 2 + 1  # VALID 3x3 stride-2 conv0
        s = 2
    else:
        s = 1
    while s < stride:
        size = -(-size // 2)  # SAME stride 2
        s *= 2
    return size
