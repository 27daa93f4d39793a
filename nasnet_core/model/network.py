"""NASNet networks for CIFAR and ImageNet at any N @ F (TF-slim ``nasnet.build_*``)."""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .cell import Cell
from .genotype import Genotype
from .layers import SameConv2d, SamePool2d
from .ops import ConvNorm, FoldPair, OpContext
from .plan import CellSpec, NetworkPlan, StemSpec, make_plan, reduction_layers
from .recompute import checkpoint_cell, should_checkpoint

__all__ = ["NASNet", "AuxHead", "CellSpec", "NetworkPlan", "reduction_layers", "stem_conv"]


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

    def fold_pairs(self) -> tuple[FoldPair, ...]:
        """Each conv feeds its norm."""
        return (FoldPair(self.proj, "bn0"), FoldPair(self.conv, "bn1"))


class _LeafTracer(torch.fx.Tracer):
    """FX tracer that keeps the TF "SAME" layers (input-size dependent) as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        """SameConv2d / SamePool2d and torch's own layers are leaves."""
        return isinstance(m, (SameConv2d, SamePool2d)) or super().is_leaf_module(m, qualname)


class NASNet(nn.Module):
    """A NASNet: stem, 3 stages of ``num_cells // 3`` normal cells split by 2 reduction cells,
    then ReLU -> global average pool -> dropout -> FC.

    ``forward`` returns logits; in training mode with an aux head it returns
    ``(logits, aux_logits)``. ``forward_features`` returns the final feature map (timm's
    contract); ``forward_feature_maps`` the named stage outputs listed in ``feature_info``,
    ``forward_intermediates`` the same maps by position.
    """

    global_pool = "avg"  # '' after reset_classifier(0, ''): forward returns the final map
    final_act = True  # the ReLU closing forward_features; prune_intermediate_layers(prune_norm=True) drops it
    grad_checkpointing = False  # recompute each cell's activations in backward (set_grad_checkpointing)

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
        ctx = ctx or OpContext()
        plan = make_plan(genotype, num_cells, num_conv_filters, stem, stem_multiplier, in_chans,
                         skip_reduction_layer_input, filter_scaling_rate, num_classes, image_size)
        self.plan: NetworkPlan = plan
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
        self.cell_specs: tuple[CellSpec, ...] = plan.cells
        self.stem_channels = plan.stem.channels
        self.num_features = plan.head.in_channels
        self.aux_after = plan.head.aux_after

        self.conv0 = stem_conv(plan.stem, ctx)
        for spec in plan.cells:
            g = genotype.reduce if spec.reduction else genotype.normal
            self.add_module(spec.name, Cell(g, spec.in_channels, spec.prev_channels, spec.filters,
                                            spec.reduction, spec.prev_mode, ctx))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.last_linear = nn.Linear(self.num_features, num_classes)
        head = plan.head
        self.aux_head = AuxHead(head.aux_channels, num_classes, head.aux_map, ctx) if aux_head else None

        self.feature_info = with_timm_keys(plan.feature_info())
        self._init_weights()
        self.set_training_step(0)

    # ------------------------------------------------------------------ build
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

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per cell in training (timm's API): each cell keeps only its inputs
        and recomputes its activations in backward; same drop masks, BN statistics updated once."""
        self.grad_checkpointing = bool(enable)

    # ------------------------------------------------------------ forward
    def forward_cells(self, outputs: list[torch.Tensor], start: int = 0,
                      end: int | None = None, taps: dict | None = None) -> list[torch.Tensor]:
        """Run cells ``cell_specs[start:end]``, appending to ``outputs`` (the earlier outputs,
        newest last) and recording any tapped names in ``taps``; returns ``outputs``."""
        ckpt = should_checkpoint(self, self.grad_checkpointing)
        for spec in self.cell_specs[start:end]:
            prev = outputs[-spec.prev_offset] if spec.prev_offset else None
            cell = getattr(self, spec.name)
            outputs.append(checkpoint_cell(cell, outputs[-1], prev) if ckpt else cell(outputs[-1], prev))
            if taps is not None and spec.name in taps:
                taps[spec.name] = outputs[-1]
        return outputs

    def forward_feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named outputs of ``feature_info`` (stem, stem cells, stage1, reductions, stage2, stage3)."""
        taps = {f["module"]: None for f in self.feature_info}
        x0 = self.conv0(x)
        self.forward_cells([x0], taps=taps)
        taps["conv0"] = x0
        return {f["name"]: taps[f["module"]] for f in self.feature_info}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map, ReLU applied (``num_features`` channels, stride 32 on ImageNet)."""
        x = self.forward_cells([self.conv0(x)])[-1]
        return F.relu(x) if self.final_act else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool -> dropout -> FC on ``forward_features``' output; ``pre_logits``
        stops before the FC. With ``global_pool == ''`` (``reset_classifier(0, '')``) the map stays
        unpooled."""
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.dropout(x)
        return x if pre_logits else self.last_linear(x)

    def forward(self, x: torch.Tensor):
        """Logits; ``(logits, aux_logits)`` in training mode when the aux head is on."""
        use_aux = self.aux_head is not None and self.training
        taps = {self.aux_after: None} if use_aux else None
        outputs = self.forward_cells([self.conv0(x)], taps=taps)
        logits = self.forward_head(F.relu(outputs[-1]))
        if use_aux:
            return logits, self.aux_head(taps[self.aux_after])
        return logits

    # --------------------------------------------------- classifier (timm API)
    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.last_linear

    @property
    def head_hidden_size(self) -> int:
        """Width of the pre-logits vector (timm's name; NASNet has no hidden head layer)."""
        return self.num_features

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: identity), on the
        model's device and dtype; ``global_pool``: None keeps it, 'avg' or '' (no pooling)."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool {global_pool!r} is not supported; known: 'avg', ''")
            self.global_pool = global_pool
        self.num_classes = num_classes
        if num_classes > 0:
            ref = next(self.parameters())
            self.last_linear = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
        else:
            self.last_linear = nn.Identity()
        self.last_linear.train(self.training)

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script(model)`` compiles: an FX trace of the model in its current mode
        (the cells' Python control flow resolved; SAME padding layers stay whole and size-generic)."""
        graph = _LeafTracer().trace(self)
        for node in graph.nodes:
            node.type = None  # string annotations (postponed evaluation) do not compile
        return torch.fx.GraphModule(self, graph, type(self).__name__)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's intermediate-feature API: the ``feature_info`` maps picked by ``indices`` (None:
        all, int n: the last n, or a list of positions), and the final ``forward_features`` map
        unless ``intermediates_only``. ``stop_early`` stops after the last requested map."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r} is not supported; only 'NCHW'")
        take = take_indices(len(self.feature_info), indices)
        modules = [self.feature_info[i]["module"] for i in take]
        taps = dict.fromkeys(modules)
        x0 = self.conv0(x)
        taps["conv0"] = x0
        end = None
        if stop_early or intermediates_only:
            wanted = [self.plan.index(m) for m in modules if m != "conv0"]
            end = max(wanted) + 1 if wanted else 0
        outputs = self.forward_cells([x0], 0, end, taps=taps)
        intermediates = [taps[m] for m in modules]
        if intermediates_only:
            return intermediates
        return (F.relu(outputs[-1]) if self.final_act else outputs[-1]), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the cells after the last requested ``feature_info`` map (and the head if
        ``prune_head``; with ``prune_norm`` also the final ReLU, so ``forward_features`` ends at
        that map); returns the kept positions."""
        take = take_indices(len(self.feature_info), indices)
        last = max(take)
        module = self.feature_info[last]["module"]
        end = 0 if module == "conv0" else self.plan.index(module) + 1
        for spec in self.cell_specs[end:]:
            setattr(self, spec.name, nn.Identity())
        self.cell_specs = self.cell_specs[:end]
        if prune_head:
            self.reset_classifier(0)
        if prune_norm:
            self.final_act = False
        return take

    def cell_index(self, name: str) -> int:
        """Position of the cell called ``name`` in ``cell_specs``."""
        return self.plan.index(name)


def with_timm_keys(info: list[dict]) -> list[dict]:
    """``feature_info`` entries with timm's keys added: ``num_chs`` (= channels) and
    ``reduction`` (= stride); ``module`` is already the producing module's name."""
    return [{**f, "num_chs": f["channels"], "reduction": f["stride"]} for f in info]


def take_indices(count: int, indices) -> list[int]:
    """Positions among ``count`` features: None -> all, int n -> the last n, else a list
    (negative positions count from the end)."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"asked for the last {indices} of {count} features")
        return list(range(count - indices, count))
    out = [i + count if i < 0 else i for i in indices]
    bad = [i for i in indices if not -count <= i < count]
    if bad:
        raise ValueError(f"feature indices {bad} out of range for {count} features")
    return out


# FX (torchvision/timm feature extractors) copies forward's annotation into generated code that
# TorchScript compiles; the postponed (string) annotation would not resolve there.
NASNet.forward.__annotations__["x"] = torch.Tensor


def stem_conv(stem: StemSpec, ctx: OpContext) -> ConvNorm:
    """``conv0``: VALID 3x3 stride-2 conv (ImageNet) or SAME 3x3 conv (CIFAR), then norm."""
    if stem.kind == "imagenet":
        conv = nn.Conv2d(stem.in_channels, stem.channels, 3, stride=2, bias=False)  # VALID
    else:
        conv = SameConv2d(stem.in_channels, stem.channels, 3)
    return ConvNorm(conv, ctx.norm_layer(stem.channels))
