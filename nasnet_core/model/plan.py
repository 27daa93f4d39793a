"""The network plan: stem, cells (with their stage, widths and strides) and head of a NASNet, as data.

``make_plan`` works the whole layout out once, without building a module (TF-slim
``nasnet.build_*``): ``NASNet`` builds its modules from it, ``feature_info`` reads it,
and nasnet_det takes its freezing stages and backbone/head split from it.

Stages: the stem cells (ImageNet stem only) are stage 0; normal cells fall in stages
1, 2 and 3; each reduction cell opens the stage after it (``reduction_cell_0`` is
stage 2, ``reduction_cell_1`` stage 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from .cell import cell_out_channels
from .genotype import Genotype

__all__ = ["CellSpec", "HeadSpec", "NetworkPlan", "STEMS", "StemSpec", "make_plan", "reduction_layers",
           "cell_layout", "stem_spec_for", "spatial_after"]

STEMS = ("imagenet", "cifar")
"""``imagenet``: VALID 3x3 stride-2 conv, then two stem cells (reduction cells at 1/4 and 1/2
of the filters). ``cifar``: SAME 3x3 stride-1 conv, no stem cells."""


def reduction_layers(num_cells: int, num_reductions: int = 2) -> list[int]:
    """Indices of the normal cells that a reduction cell precedes (TF ``calc_reduction_layers``)."""
    return [int(i / (num_reductions + 1) * num_cells) for i in range(1, num_reductions + 1)]


@dataclass(frozen=True)
class StemSpec:
    """The stem conv ``conv0``: kind (a ``STEMS`` name), widths and output stride."""

    kind: str
    in_channels: int
    channels: int
    stride: int
    module: str = "conv0"


@dataclass(frozen=True)
class CellSpec:
    """Where a cell sits: its name, kind, the output it reads as 'prev', width and stride,
    plus its stage and what it is built from."""

    name: str
    kind: str  # "stem", "normal" or "reduction"
    prev_offset: int | None  # prev = outputs[-prev_offset]; None -> no prev input
    out_channels: int
    stride: int
    drop_path_index: int  # position in ScheduledDropPath's layer ratio
    stage: int  # 0 stem cells, 1-3 network stages (a reduction cell opens the next stage)
    filters: int  # the cell's ``filters`` (width of each block output)
    in_channels: int  # width of the current input (outputs[-1])
    prev_channels: int  # width of the prev input (0 when there is none)
    prev_mode: str  # "none", "same" or "reduce" (prev at twice the resolution)

    @property
    def reduction(self) -> bool:
        """True for reduction and stem cells (built from the genotype's reduction cell)."""
        return self.kind != "normal"


@dataclass(frozen=True)
class HeadSpec:
    """Classifier input width and the auxiliary head's position and input map size."""

    in_channels: int
    num_classes: int
    aux_after: str  # the cell whose output feeds the auxiliary head
    aux_channels: int
    aux_map: int  # spatial size of that output for a square ``image_size`` input


@dataclass(frozen=True)
class NetworkPlan:
    """Stem, cells in execution order, and head of one NASNet."""

    stem: StemSpec
    cells: tuple[CellSpec, ...]
    head: HeadSpec

    def index(self, name: str) -> int:
        """Position of the cell called ``name``."""
        found = [i for i, s in enumerate(self.cells) if s.name == name]
        if not found:
            raise KeyError(f"no cell {name!r}; cells: {', '.join(s.name for s in self.cells)}")
        return found[0]

    def stage_start(self, stage: int) -> int:
        """Position of the first cell of ``stage`` (for stage 3: ``reduction_cell_1``)."""
        stages = [s.stage for s in self.cells]
        if stage not in stages:
            raise KeyError(f"no cell in stage {stage}; stages: {sorted(set(stages))}")
        return stages.index(stage)

    def last_per_stride(self, end: int | None = None) -> dict[int, int]:
        """Stride -> position of the last cell at that stride among ``cells[:end]``."""
        return {s.stride: i for i, s in enumerate(self.cells[:end])}

    def feature_info(self) -> list[dict]:
        """Named outputs: stem, stem cells, last cell of each stage (``stageK``), reduction cells."""
        st = self.stem
        info = [dict(name="stem", channels=st.channels, stride=st.stride, module=st.module)]
        for i, s in enumerate(self.cells):
            last = s.kind == "normal" and (i + 1 == len(self.cells) or self.cells[i + 1].stage != s.stage)
            if last or s.kind != "normal":
                info.append(dict(name=f"stage{s.stage}" if last else s.name, channels=s.out_channels,
                                 stride=s.stride, module=s.name))
        return info


def cell_layout(num_cells: int, num_conv_filters: int, stem: str, rate: float, skip: bool):
    """(name, kind, stage, prev_offset, filters) of every cell, in execution order."""
    if stem == "imagenet":
        scaling = 1.0 / rate ** 2
        for i in range(2):  # two stem cells: reduction cells at 1/4 and 1/2 filters
            yield f"cell_stem_{i}", "stem", 0, 2, int(num_conv_filters * scaling)
            scaling *= rate
    reductions = reduction_layers(num_cells)
    scaling, stage = 1.0, 1
    for i in range(num_cells):
        offset = 2
        if i in reductions:
            scaling *= rate
            stage += 1
            name = f"reduction_cell_{reductions.index(i)}"
            yield name, "reduction", stage, 2, int(num_conv_filters * scaling)
            # With skip_reduction_layer_input the first cell after a reduction reads the
            # reduction's own previous input (outputs[-3]) instead of the reduction's input.
            offset = 3 if skip else 2
        yield f"cell_{i}", "normal", stage, offset, int(num_conv_filters * scaling)


def stem_spec_for(stem: str, in_chans: int, num_conv_filters: int, stem_multiplier: float) -> StemSpec:
    """The stem conv of a ``stem`` kind (a ``STEMS`` name) at these widths."""
    if stem == "imagenet":
        return StemSpec(stem, in_chans, int(32 * stem_multiplier), 2)
    if stem == "cifar":
        return StemSpec(stem, in_chans, int(num_conv_filters * stem_multiplier), 1)
    raise ValueError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")


def spatial_after(image_size: int, stride: int, stem: StemSpec) -> int:
    """Feature-map size at ``stride`` for a square input, following the stem's conv."""
    size = (image_size - 3) // 2 + 1 if stem.kind == "imagenet" else image_size  # VALID 3x3 s2
    s = stem.stride
    while s < stride:
        size = -(-size // 2)  # SAME stride 2
        s *= 2
    return size


def make_plan(genotype: Genotype, num_cells: int = 18, num_conv_filters: int = 168,
              stem: str = "imagenet", stem_multiplier: float = 3.0, in_chans: int = 3,
              skip_reduction_layer_input: bool = True, filter_scaling_rate: float = 2.0,
              num_classes: int = 1000, image_size: int = 331) -> NetworkPlan:
    """The plan of a NASNet with these hyperparameters (the ``NASNet`` arguments of the same names)."""
    stem_spec = stem_spec_for(stem, in_chans, num_conv_filters, stem_multiplier)
    if num_cells < 3 or num_cells % 3:
        raise ValueError(f"num_cells must be a positive multiple of 3 (3 stages), got {num_cells}")
    outs = [(stem_spec.channels, stem_spec.stride)]  # (channels, stride) of every output so far
    cells = []
    for name, kind, stage, offset, filters in cell_layout(
            num_cells, num_conv_filters, stem, filter_scaling_rate, skip_reduction_layer_input):
        if filters < 2:
            raise ValueError(f"num_conv_filters={num_conv_filters} leaves {name} {filters} filter(s); "
                             "every cell needs at least 2 (ImageNet stem cells get 1/4 and 1/2)")
        c_cur, s_cur = outs[-1]
        if offset > len(outs):
            offset, prev_mode, c_prev = None, "none", 0
        else:
            c_prev, s_prev = outs[-offset]
            prev_mode = "reduce" if s_prev < s_cur else "same"
        reduction = kind != "normal"
        g = genotype.reduce if reduction else genotype.normal
        width = cell_out_channels(g, c_cur, c_prev, filters, reduction, prev_mode)
        stride = s_cur * (2 if reduction else 1)
        cells.append(CellSpec(name, kind, offset, width, stride, len(cells), stage, filters,
                              c_cur, c_prev, prev_mode))
        outs.append((width, stride))
    aux = next(s for s in cells if s.name == f"cell_{reduction_layers(num_cells)[1] - 1}")
    head = HeadSpec(cells[-1].out_channels, num_classes, aux.name, aux.out_channels,
                    spatial_after(image_size, aux.stride, stem_spec))
    return NetworkPlan(stem_spec, tuple(cells), head)
